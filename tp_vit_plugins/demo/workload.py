"""What a prune, bench or example runs on: the embedded default, or a timm model / transformers directory + ImageFolder.

One loader for the CLI and the example scripts, so "embedded MNIST ViT by default, real
ImageNet with ``--model NAME --pretrained --data-path ROOT``" behaves the same everywhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from dataclasses import dataclass, field, replace

import safetensors.torch
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.extras import install_hint
from ..core.io import load_pruned
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
        notes: Lines worth reporting (where the weights came from, their accuracy).
    """

    model: nn.Module
    train_set: Dataset | None
    train_loader: DataLoader | None
    test_loader: object | None
    example: torch.Tensor
    name: str
    notes: list[str] = field(default_factory=list)


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
    checkpoint: str | None = None,
) -> Workload:
    """Load the embedded MNIST ViT (default) or ``timm.create_model(model_name)`` with data.

    Args:
        model_name: timm model name or transformers directory; ``None`` = the embedded MNIST ViT and its split.
        pretrained: Load timm pretrained weights.
        data_path: ImageFolder root with ``train/`` and ``val/`` (for ``model_name``); without
            it the workload has no data (MACs / latency only).
        batch_size: Training batch size.
        eval_batches: Evaluate on at most this many test batches (real data).
        embedded_epochs: Override the embedded recipe's training epochs.
        retrain: Ignore the embedded model cache.
        seed: Seed of the training loader's shuffling.
        progress: Progress bars while the embedded model trains.
        checkpoint: Local weights for ``model_name``: a ``.safetensors`` or ``torch.save``d state
            dict (optionally under a ``"model"`` / ``"state_dict"`` key), or a
            :func:`~tp_vit_plugins.save_pruned` directory (its architecture replaces ``model_name``'s).

    Returns:
        The :class:`Workload`.

    Raises:
        ValueError: ``pretrained`` / ``data_path`` / ``checkpoint`` given without ``model_name``, or
            a checkpoint that does not fit the model (the message names the file).
    """
    if model_name is None:
        if pretrained or data_path or checkpoint:
            raise ValueError("pretrained weights, --checkpoint and --data-path need --model (timm name or transformers dir)")
        return _embedded_workload(embedded_epochs, retrain, batch_size, seed, progress)
    if is_transformers_dir(model_name):
        return _transformers_workload(model_name, data_path, batch_size, eval_batches)
    model = timm.create_model(model_name, pretrained=pretrained).eval()
    if checkpoint:
        model = load_checkpoint(model, checkpoint)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    example = torch.randn(1, *cfg.get("input_size", (3, 224, 224)))
    notes = [f"weights from --checkpoint {checkpoint}"] if checkpoint else []
    if not data_path:
        return Workload(model, None, None, None, example, model_name, notes)
    train_loader, val_loader = image_folder_loaders(data_path, model, batch_size=batch_size)
    test = list(itertools.islice(val_loader, eval_batches)) if eval_batches else val_loader
    return Workload(model, train_loader.dataset, train_loader, test, example, model_name, notes)


def is_transformers_dir(path: str) -> bool:
    """A local directory written by transformers' ``save_pretrained`` (``config.json`` + weights)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _transformers_workload(path: str, data_path: str | None, batch_size: int, eval_batches: int | None) -> Workload:
    """A transformers image classifier from a local ``save_pretrained`` directory (nothing downloaded)."""
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as e:
        raise ValueError(f"--model {path!r} is a transformers model directory: {install_hint('hf')}") from e
    model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True).eval()
    cfg = model.config
    size, chans = int(cfg.image_size), int(getattr(cfg, "num_channels", 3))
    example = torch.randn(1, chans, size, size)
    name = f"{type(model).__name__} from {path}"
    if not data_path:
        return Workload(model, None, None, None, example, name, [])
    data_config = {"input_size": (chans, size, size), "interpolation": "bicubic", "crop_pct": 0.875}
    proc = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(proc):  # the model's own normalisation
        with open(proc) as f:
            pre = json.load(f)
        data_config.update(
            mean=tuple(pre.get("image_mean", (0.485, 0.456, 0.406))), std=tuple(pre.get("image_std", (0.229, 0.224, 0.225)))
        )
    train_loader, val_loader = image_folder_loaders(data_path, model, batch_size=batch_size, data_config=data_config)
    test = list(itertools.islice(val_loader, eval_batches)) if eval_batches else val_loader
    return Workload(model, train_loader.dataset, train_loader, test, example, name, [])


def _embedded_workload(epochs: int | None, retrain: bool, batch_size: int, seed: int, progress: bool) -> Workload:
    recipe = EmbeddedRecipe() if epochs is None else replace(EmbeddedRecipe(), epochs=epochs)
    model, split, meta = embedded_model(recipe, retrain=retrain, progress=progress)
    train_loader, test_loader = make_loaders(split, batch_size=batch_size, seed=seed)
    acc = 100 * meta["test_accuracy"]
    where = {
        "shipped": "shipped weights",
        "cache": f"cached at {meta['path']}",
        "trained": f"trained now, cached at {meta['path']}",
    }
    notes = [f"embedded MNIST ViT: {where[meta['source']]} (recipe {meta['key']}, {acc:.2f}% test accuracy after training)"]
    if recipe != EmbeddedRecipe():
        notes.append(f"note: non-default embedded recipe (epochs={recipe.epochs}); the default reaches higher accuracy")
    return Workload(model.eval(), train_loader.dataset, train_loader, test_loader, split.x_test[:1], "embedded MNIST ViT", notes)


def read_checkpoint(path: str) -> dict[str, torch.Tensor] | None:
    """The state dict at ``path`` (``None`` for a ``save_pruned`` directory); never unpickles code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is neither safetensors nor a torch file of tensors, said in words.
    """
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            raise ValueError(f"checkpoint {path!r} is a directory without model.safetensors (not a save_pruned directory)")
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    with open(path, "rb") as f:
        head = f.read(8)
    torch_file = head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"  # torch.save's zip, or its legacy pickle
    try:
        if path.endswith(".safetensors") or not torch_file:
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error is a bad file for the user
        kind = "a safetensors file" if path.endswith(".safetensors") else "a torch.save file or a safetensors file"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path!r} is not {kind} of weights ({reason})") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path!r} holds no state dict of tensors")
    return state


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """``model`` with the weights at ``path`` (see :func:`load_workload`); never unpickles code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unreadable file or weights that do not fit ``model`` (the message names the file).
    """
    state = read_checkpoint(path)
    if state is None:
        return load_pruned(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"checkpoint {path!r} does not fit {type(model).__name__}: {first}") from e
    return model.eval()


def add_workload_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the example scripts' ``--model``, ``--pretrained``, ``--data-path`` and ``--eval-batches``."""
    parser.add_argument(
        "--model", default=None, help="timm model name or transformers directory (default: the embedded MNIST ViT)"
    )
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
