"""Minimal, reproducible training and evaluation loops (AdamW + cosine, tqdm progress).

Used to train the embedded benchmark model and for short fine-tunes after pruning. The
loops accept loaders that yield ``(images, labels)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import random_shift  # re-exported

__all__ = ["train", "evaluate", "random_shift"]


def train(
    model: nn.Module,
    loader: Iterable,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    max_shift: int = 0,
    label_smoothing: float = 0.0,
    seed: int = 0,
    step_hook: Callable[[nn.Module, torch.Tensor], None] | None = None,
    epoch_hook: Callable[[int], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Train ``model`` with AdamW, linear warm-up and a cosine schedule.

    A thin wrapper of :func:`tp_vit_plugins.finetune.finetune` (no teacher, no checkpoint).

    Args:
        model: Model to train in place.
        loader: Yields ``(images [B, C, H, W], labels [B])``.
        epochs: Number of epochs; 0 returns at once.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: Length of the linear warm-up.
        max_shift: Random-translation augmentation in pixels (0 disables it).
        label_smoothing: Label smoothing of the cross-entropy loss.
        seed: Seed for the augmentation generator.
        step_hook: Called as ``step_hook(model, loss)`` after ``loss.backward()`` and before
            the optimizer step — the place for a pruner's ``regularize``.
        epoch_hook: Called as ``epoch_hook(epoch)`` after every epoch — e.g. a pruner's
            ``update_regularizer`` for ADMM rounds.
        desc: Progress-bar label.
        progress: Show a tqdm bar.

    Returns:
        Mean training loss of each epoch.

    Raises:
        ValueError: ``epochs`` is negative or the loader is empty.
    """
    from .finetune import finetune

    history = finetune(
        model,
        loader,
        None,
        epochs,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        max_shift=max_shift,
        seed=seed,
        step_hook=step_hook,
        epoch_hook=epoch_hook,
        desc=desc,
        progress=progress,
    )
    return history["loss"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, desc: str = "eval", progress: bool = True) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, restored afterwards).

    Args:
        model: Classifier returning logits ``[B, num_classes]``.
        loader: Yields ``(images, labels)``.
        desc: Progress-bar label.
        progress: Show a tqdm bar.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: The loader yielded no samples.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            pred = model(x.to(device)).argmax(-1)
            correct += int((pred.cpu() == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return correct / total
