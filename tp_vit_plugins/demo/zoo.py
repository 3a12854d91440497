"""The model zoo: small timm ViTs that differ where pruning criteria differ, trained here.

A default is chosen on the zoo mean, never on one model (see ``tp-vit bench --zoo``). The
members span depth 4–12, width 64–192, 3–12 heads of 8–32 dims, 16–196 patch tokens, with
and without LayerScale, register tokens and a class token, on the two offline datasets
(MNIST-5000 and sklearn digits) at native and upsampled resolution. Every member is trained
once by its :class:`ZooModel` recipe (AdamW + cosine, :func:`~tp_vit_plugins.finetune`) and
cached under the recipe's key, like the embedded model; held-out splits are 40 % of each
dataset (2,000 MNIST / 719 digits test images).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from tqdm.auto import tqdm

from ..core.io import load_pruned
from ..core.training import evaluate
from .data import DatasetSplit, load_split
from .embedded import TrainRecipe, cache_dir, train_embedded

__all__ = ["ZooModel", "ZOO", "QUICK_ZOO", "zoo_split", "load_zoo_model", "load_zoo"]

#: Held-out share of each dataset for the zoo (bigger than the embedded model's 20 %).
TEST_FRACTION = 0.4


@dataclass(frozen=True)
class ZooModel(TrainRecipe):
    """One zoo member: data, architecture and training recipe (all of it enters the cache key).

    Attributes:
        name: Short name used in tables.
        dataset: ``"mnist"`` or ``"digits"``.
        image_size: Side length the images are resized to (bilinear upsampling).
        arch: ``timm.models.vision_transformer.VisionTransformer`` keyword arguments.
        epochs, batch_size, lr, ...: The :class:`~tp_vit_plugins.demo.embedded.TrainRecipe` fields.
    """

    name: str
    dataset: str
    image_size: int
    arch: dict = field(default_factory=dict)

    def full_arch(self, num_classes: int = 10) -> dict:
        return {"img_size": self.image_size, "in_chans": 1, "num_classes": num_classes, **self.arch}

    @property
    def tokens(self) -> int:
        """Patch tokens per image."""
        return (self.image_size // self.arch["patch_size"]) ** 2


def _vit(patch: int, dim: int, depth: int, heads: int, **kw) -> dict:
    return dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, **kw)


#: The zoo. Head dims: 16, 32, 8, 32, 16, 16; tokens: 16, 49, 49, 64, 196, 64.
ZOO: tuple[ZooModel, ...] = (
    ZooModel("mnist-p7-d4", "mnist", 28, _vit(7, 64, 4, 4), epochs=30, max_shift=1),
    ZooModel("mnist-ls-d6", "mnist", 28, _vit(4, 96, 6, 3, init_values=0.1), epochs=20, max_shift=1),
    ZooModel("mnist-reg-d12", "mnist", 28, _vit(4, 64, 12, 8, reg_tokens=4), epochs=30, lr=1e-3, warmup_epochs=2.0, max_shift=1),
    ZooModel(
        "digits16-gap-d6",
        "digits",
        16,
        _vit(2, 128, 6, 4, class_token=False, global_pool="avg"),
        epochs=60,
        lr=1e-3,
        warmup_epochs=3.0,
        max_shift=1,
    ),
    ZooModel("mnist56-p4-d4", "mnist", 56, _vit(4, 64, 4, 4), epochs=24, lr=1.5e-3, warmup_epochs=2.0, max_shift=1),
    ZooModel("digits32-wide-d4", "digits", 32, _vit(4, 192, 4, 12, mlp_ratio=2.0), epochs=30, max_shift=1),
)
#: Two small members for smoke runs (``--quick``).
QUICK_ZOO: tuple[ZooModel, ...] = (ZOO[0], ZOO[3])


def zoo_split(member: ZooModel) -> DatasetSplit:
    """The member's deterministic split (40 % held out), resized to its ``image_size``."""
    split = load_split(member.dataset, test_fraction=TEST_FRACTION)
    if split.x_train.shape[-1] == member.image_size:
        return split

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(member.image_size,) * 2, mode="bilinear", align_corners=False)

    return DatasetSplit(resize(split.x_train), split.y_train, resize(split.x_test), split.y_test, split.num_classes)


def load_zoo_model(
    member: ZooModel, retrain: bool = False, progress: bool = True, log: Callable[[str], None] | None = None
) -> tuple[VisionTransformer, DatasetSplit, dict]:
    """The trained member (trained and cached on first use, reporting to ``log``), its split and its metadata."""
    split = zoo_split(member)
    path = os.path.join(cache_dir(), f"zoo-{member.name}-{member.key()}")
    if not retrain and os.path.isfile(os.path.join(path, "meta.json")):
        with open(os.path.join(path, "meta.json")) as f:
            return load_pruned(path), split, json.load(f)
    if log is not None:
        log(f"training zoo model {member.name} ({member.epochs} epochs; first use only, then cached in {path})")
    model, meta = train_embedded(member, split, path, progress=progress, arch=member.full_arch(split.num_classes), log=log)
    return model, split, meta


def load_zoo(
    members: tuple[ZooModel, ...] = ZOO, progress: bool = True, log: Callable[[str], None] | None = None
) -> list[tuple[ZooModel, VisionTransformer, DatasetSplit, dict]]:
    """Every member, trained on first use (reported to ``log``); ``meta["test_accuracy"]`` is re-measured on load."""
    out = []
    for member in tqdm(members, desc="zoo", disable=not progress):
        model, split, meta = load_zoo_model(member, progress=progress, log=log)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.x_test, split.y_test), batch_size=256)
        meta = {**meta, "test_accuracy": evaluate(model, loader, progress=False)}
        out.append((member, model.eval(), split, meta))
    return out
