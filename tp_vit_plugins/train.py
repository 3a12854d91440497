"""Minimal, reproducible training and evaluation loops (AdamW + cosine, tqdm progress).

Used to train the embedded benchmark model and for short fine-tunes after pruning. The
loops accept loaders that yield ``(images, labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train", "evaluate", "random_shift"]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding), a cheap augmentation.

    Args:
        x: Images ``[B, C, H, W]``.
        max_shift: Largest shift in pixels along each axis; 0 returns ``x`` unchanged.
        generator: Optional random generator for reproducibility.

    Returns:
        Shifted images ``[B, C, H, W]``.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * max_shift)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return torch.gather(out, 3, cols)


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
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return []
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    total, warm = epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    history = []
    was_training = model.training
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        for _ in range(epochs):
            running, count = 0.0, 0
            for x, y in loader:
                x = random_shift(x, max_shift, gen).to(device)
                y = y.to(device)
                loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if step_hook is not None:
                    step_hook(model, loss)
                opt.step()
                sched.step()
                running += float(loss.detach()) * len(y)
                count += len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{running / count:.3f}")
            history.append(running / count)
            if epoch_hook is not None:
                epoch_hook(len(history) - 1)
    finally:
        bar.close()
        model.train(was_training)
    return history


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
