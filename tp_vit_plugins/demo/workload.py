"""What a prune, bench or example runs on: the embedded default or a timm model + ImageFolder.

One loader for the CLI and the example scripts, so "embedded MNIST ViT by default, real
ImageNet with ``--model NAME --pretrained --data-path ROOT``" behaves the same everywhere.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, replace

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import image_folder_loaders, make_loaders
from .embedded import EmbeddedRecipe, embedded_model

__all__ = ["Workload", "load_workload", "add_workload_arguments", "workload_from_args"]


@dataclass
class Workload:
    """A model with its data.

    Attributes:
        model: The dense model (eval mode).
        train_set: Training dataset (``None`` without data).
        train_loader: Shuffled, seeded training loader (also the calibration source).
        test_loader: Evaluation loader (``None`` without data).
        example: One input ``[1, C, H, W]``.
        name: Human-readable description.
    """

    model: nn.Module
    train_set: Dataset | None
    train_loader: DataLoader | None
    test_loader: object | None
    example: torch.Tensor
    name: str


def load_workload(
    model_name: str | None = None,
    pretrained: bool = False,
    data_path: str | None = None,
    batch_size: int = 64,
    eval_batches: int | None = None,
    embedded_epochs: int | None = None,
    retrain: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Workload:
    """Load the embedded MNIST ViT (default) or ``timm.create_model(model_name)`` with data.

    Args:
        model_name: timm model name; ``None`` = the embedded MNIST ViT and its split.
        pretrained: Load timm pretrained weights.
        data_path: ImageFolder root with ``train/`` and ``val/`` (for ``model_name``); without
            it the workload has no data (MACs / latency only).
        batch_size: Training batch size.
        eval_batches: Evaluate on at most this many test batches (real data).
        embedded_epochs: Override the embedded recipe's training epochs.
        retrain: Ignore the embedded model cache.
        seed: Seed of the training loader's shuffling.
        progress: Progress bars while the embedded model trains.

    Returns:
        The :class:`Workload`.

    Raises:
        ValueError: ``pretrained`` / ``data_path`` given without ``model_name``.
    """
    if model_name is None:
        if pretrained or data_path:
            raise ValueError("pretrained weights and --data-path need a timm model name")
        recipe = EmbeddedRecipe()
        if embedded_epochs is not None:
            recipe = replace(recipe, epochs=embedded_epochs)
        model, split, _ = embedded_model(recipe, retrain=retrain, progress=progress)
        train_loader, test_loader = make_loaders(split, batch_size=batch_size, seed=seed)
        return Workload(model.eval(), train_loader.dataset, train_loader, test_loader, split.x_test[:1], "embedded MNIST ViT")
    model = timm.create_model(model_name, pretrained=pretrained).eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    example = torch.randn(1, *cfg.get("input_size", (3, 224, 224)))
    if not data_path:
        return Workload(model, None, None, None, example, model_name)
    train_loader, val_loader = image_folder_loaders(data_path, model, batch_size=batch_size)
    test = list(itertools.islice(val_loader, eval_batches)) if eval_batches else val_loader
    return Workload(model, train_loader.dataset, train_loader, test, example, model_name)


def add_workload_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the example scripts' ``--model``, ``--pretrained``, ``--data-path`` and ``--eval-batches``."""
    parser.add_argument("--model", default=None, help="timm model name (default: the embedded MNIST ViT)")
    parser.add_argument("--pretrained", action="store_true", help="load timm pretrained weights")
    parser.add_argument("--data-path", default=None, help="ImageFolder root with train/ and val/ (needed with --model)")
    parser.add_argument("--eval-batches", type=int, default=None, help="limit evaluation batches (real data)")
    return parser


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload an example script asked for; exits with one line when it has no data.

    Raises:
        SystemExit: ``--model`` without ``--data-path``, or ``--data-path`` without ``--model``.
    """
    try:
        w = load_workload(args.model, args.pretrained, args.data_path, eval_batches=args.eval_batches)
    except ValueError as e:
        raise SystemExit(f"{e} (add --model)") from e
    if w.train_loader is None:
        raise SystemExit("--model needs --data-path (an ImageFolder root with train/ and val/)")
    return w
