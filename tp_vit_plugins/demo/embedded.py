"""The embedded benchmark: a small timm ViT trained on the offline MNIST-5000 subset.

The first call trains it (tqdm bar, a few minutes on 2 CPU cores) and caches the checkpoint
with :func:`~tp_vit_plugins.save_pruned` in the user cache directory; later calls load it
at once. The cache key covers the architecture, the training recipe and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field

import torch
from timm.models.vision_transformer import VisionTransformer

from ..core.io import load_pruned, save_pruned
from ..core.training import evaluate, finetune
from .data import DatasetSplit, load_split, make_loaders

__all__ = ["EmbeddedRecipe", "cache_dir", "create_embedded_model", "embedded_model"]

_ARCH = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=6, mlp_ratio=4.0)


@dataclass(frozen=True)
class EmbeddedRecipe:
    """Architecture and training recipe of the embedded model (all of it enters the cache key)."""

    arch: dict = field(default_factory=lambda: dict(_ARCH))
    dataset: str = "mnist"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    max_shift: int = 2
    seed: int = 0

    def key(self) -> str:
        """Short stable hash of the recipe."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def cache_dir() -> str:
    """Cache root: ``$TPV_CACHE_DIR``, else ``$XDG_CACHE_HOME/tp_vit_plugins``, else ``~/.cache/tp_vit_plugins``."""
    root = os.environ.get("TPV_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tp_vit_plugins")
    return root


def create_embedded_model(recipe: EmbeddedRecipe | None = None) -> VisionTransformer:
    """The untrained embedded ViT (seeded init): 28×28 input, patch 4, dim 96, 6 blocks × 6 heads."""
    recipe = recipe or EmbeddedRecipe()
    torch.manual_seed(recipe.seed)
    return VisionTransformer(**recipe.arch)


def embedded_model(
    recipe: EmbeddedRecipe | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[VisionTransformer, DatasetSplit, dict]:
    """Return the trained embedded model, its data split and its cached metadata.

    Args:
        recipe: Training recipe (default :class:`EmbeddedRecipe`).
        retrain: Ignore the cache and train again.
        progress: Show tqdm bars while training.

    Returns:
        ``(model in eval mode, split, meta)`` where ``meta`` holds the recipe, its key, the
        cache path and the test accuracy measured right after training.
    """
    recipe = recipe or EmbeddedRecipe()
    split = load_split(recipe.dataset)
    path = os.path.join(cache_dir(), f"embedded-{recipe.dataset}-vit-{recipe.key()}")
    meta_path = os.path.join(path, "meta.json")
    if not retrain and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        return load_pruned(path), split, meta
    model = create_embedded_model(recipe)
    train_loader, test_loader = make_loaders(split, batch_size=recipe.batch_size, seed=recipe.seed)
    finetune(
        model,
        train_loader,
        epochs=recipe.epochs,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_epochs=recipe.warmup_epochs,
        label_smoothing=recipe.label_smoothing,
        max_shift=recipe.max_shift,
        seed=recipe.seed,
        desc="train embedded ViT",
        progress=progress,
    )
    model.eval()
    acc = evaluate(model, test_loader, progress=progress)
    tmp = path + ".tmp"
    save_pruned(model, tmp)
    meta = {"recipe": asdict(recipe), "key": recipe.key(), "test_accuracy": acc, "path": path}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return model, split, meta
