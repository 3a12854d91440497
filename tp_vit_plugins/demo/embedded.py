"""The embedded benchmark: a small timm ViT trained on the offline MNIST-5000 subset.

The default recipe's trained weights ship inside the package (``assets/embedded-mnist-vit``:
safetensors + spec + ``meta.json`` with the recipe key and the measured test accuracy), made
by ``python -m tp_vit_plugins.demo.embedded --ship``. Any other recipe trains on first use
(tqdm bar; the default takes about 10 minutes on 2 CPU cores) and is cached with
:func:`~tp_vit_plugins.save_pruned` under a key that covers the architecture, the training
recipe and the seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer

from ..core.io import load_pruned, save_pruned
from ..core.training import evaluate, finetune, random_shift
from .data import DatasetSplit, load_split, make_loaders

__all__ = ["TrainRecipe", "EmbeddedRecipe", "cache_dir", "create_embedded_model", "embedded_model"]

_ARCH = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=6, mlp_ratio=4.0)


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """How a demo model is trained (AdamW + warm-up + cosine; every field enters the cache key)."""

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

    def as_dict(self) -> dict:
        """The recipe as JSON-ready data (written into ``meta.json``)."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class EmbeddedRecipe(TrainRecipe):
    """Architecture and training recipe of the embedded model (all of it enters the cache key)."""

    arch: dict = field(default_factory=lambda: dict(_ARCH))
    dataset: str = "mnist"


def cache_dir() -> str:
    """Cache root: ``$TPV_CACHE_DIR``, else ``$XDG_CACHE_HOME/tp_vit_plugins``, else ``~/.cache/tp_vit_plugins``."""
    root = os.environ.get("TPV_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tp_vit_plugins")
    return root


def create_embedded_model(recipe: TrainRecipe | None = None, arch: dict | None = None) -> VisionTransformer:
    """The untrained ViT of ``recipe`` (seeded init); ``arch`` overrides ``recipe.arch``.

    The default is the embedded model: 28×28 input, patch 4, dim 96, 6 blocks × 6 heads.
    """
    recipe = recipe or EmbeddedRecipe()
    torch.manual_seed(recipe.seed)
    return VisionTransformer(**(arch if arch is not None else recipe.arch))


def shipped_dir() -> str:
    """Where the package ships the default model: ``assets/embedded-mnist-vit`` next to this module."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "embedded-mnist-vit")


def shipped_meta() -> dict | None:
    """The shipped model's ``meta.json`` (recipe, key, test accuracy), or ``None`` when absent."""
    path = os.path.join(shipped_dir(), "meta.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def cache_path(recipe: EmbeddedRecipe) -> str:
    """The cache entry of ``recipe``: its key is in the name, so no recipe overwrites another's."""
    return os.path.join(cache_dir(), f"embedded-{recipe.dataset}-vit-{recipe.key()}")


def train_embedded(
    recipe: TrainRecipe,
    split: DatasetSplit,
    out_dir: str,
    progress: bool = True,
    arch: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[VisionTransformer, dict]:
    """Train ``recipe`` from scratch and save model + ``meta.json`` to ``out_dir`` (atomically).

    ``arch`` (``VisionTransformer`` kwargs) overrides ``recipe.arch``; the zoo passes its
    members' full architecture (image size, channels, classes) this way. ``log`` receives a
    line after every epoch with the time the rest will take at the pace so far.

    Returns:
        ``(model in eval mode, meta)``; ``meta`` holds the recipe, its key and the test accuracy.
    """
    model = create_embedded_model(recipe, arch)
    train_loader, test_loader = make_loaders(split, batch_size=recipe.batch_size, seed=recipe.seed)
    finetune(
        model,
        train_loader,
        epochs=recipe.epochs,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_epochs=recipe.warmup_epochs,
        label_smoothing=recipe.label_smoothing,
        augment=partial(random_shift, max_shift=recipe.max_shift) if recipe.max_shift else None,
        seed=recipe.seed,
        desc="train embedded ViT",
        progress=progress,
        epoch_hook=_EpochLog(recipe.epochs, log) if log is not None else None,
    )
    model.eval()
    meta = {"recipe": recipe.as_dict(), "key": recipe.key(), "test_accuracy": evaluate(model, test_loader, progress=progress)}
    tmp = out_dir.rstrip(os.sep) + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    save_pruned(model, tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return model, meta


class _EpochLog:
    """``epoch_hook`` writing "epoch k of E, about m min left" (measured pace) to a log function."""

    def __init__(self, epochs: int, log: Callable[[str], None]) -> None:
        self.epochs, self.log, self.start = epochs, log, time.perf_counter()

    def __call__(self, epoch: int) -> None:
        done = epoch + 1
        left = (time.perf_counter() - self.start) / done * (self.epochs - done)
        self.log(f"  epoch {done} of {self.epochs}, about {left / 60:.1f} min left")


def embedded_model(
    recipe: EmbeddedRecipe | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[VisionTransformer, DatasetSplit, dict]:
    """Return the trained embedded model, its data split and its metadata.

    The default recipe's weights ship with the package (:func:`shipped_dir`), so the first
    ``tp-vit prune`` trains nothing. Another recipe (or ``retrain=True``) trains once and is
    cached under its own key (:func:`cache_path`); the shipped weights are never overwritten.

    Args:
        recipe: Training recipe (default :class:`EmbeddedRecipe`).
        retrain: Train again, ignoring shipped and cached weights (the result goes to the cache).
        progress: Show tqdm bars while training.

    Returns:
        ``(model in eval mode, split, meta)``; ``meta`` holds the recipe, its key, the test
        accuracy measured right after training and ``source``: ``"shipped"``, ``"cache"`` or
        ``"trained"``.
    """
    recipe = recipe or EmbeddedRecipe()
    split = load_split(recipe.dataset)
    path = cache_path(recipe)
    if not retrain:
        shipped = shipped_meta()
        if shipped is not None and shipped.get("key") == recipe.key():
            return load_pruned(shipped_dir()), split, {**shipped, "source": "shipped", "path": shipped_dir()}
        if os.path.isfile(os.path.join(path, "meta.json")):
            with open(os.path.join(path, "meta.json")) as f:
                return load_pruned(path), split, {**json.load(f), "source": "cache", "path": path}
    model, meta = train_embedded(recipe, split, path, progress)
    return model, split, {**meta, "source": "trained", "path": path}


def main(argv: list[str] | None = None) -> int:
    """``python -m tp_vit_plugins.demo.embedded --ship``: train the default recipe into the package assets."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--ship", action="store_true", help="write the trained default model to shipped_dir()")
    args = parser.parse_args(argv)
    if not args.ship:
        parser.error("pass --ship to (re)train the default embedded model into the package assets")
    recipe = EmbeddedRecipe()
    _, meta = train_embedded(recipe, load_split(recipe.dataset), shipped_dir())
    print(f"wrote {shipped_dir()}: key {meta['key']}, test accuracy {100 * meta['test_accuracy']:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
