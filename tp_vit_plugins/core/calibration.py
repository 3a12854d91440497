"""The one calibration path shared by every data-driven criterion.

Loaders may yield image tensors ``[B, C, H, W]`` or ``(images, target, ...)`` tuples. Every
helper validates the loader, shows a tqdm bar, runs at most ``max_batches`` batches, and
restores the model's train/eval mode on exit (exceptions included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..hosts import host_for
from .metrics import as_logits, model_device

__all__ = ["iter_batches", "collect_attention", "accumulate_gradients"]


def _check_max_batches(max_batches: int | None) -> None:
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")


def iter_batches(
    loader: Iterable,
    max_batches: int | None = None,
    desc: str = "calibrate",
    progress: bool = True,
    with_targets: bool = False,
    allow_empty: bool = False,
) -> Iterator:
    """Yield the image tensors (or ``(images, targets)``) of a calibration loader.

    Args:
        loader: Iterable of tensors or of tuples/lists whose first item is the image tensor.
        max_batches: Stop after this many batches (``None``: the whole loader).
        desc: Progress-bar label.
        progress: Show a tqdm bar.
        with_targets: Yield ``(images, targets)``; the loader must then provide targets.
        allow_empty: Yield nothing instead of raising for an empty loader (a process of a
            distributed run whose statistics are summed over processes, where only an empty total
            is an error: the caller checks it after the reduction, so no process skips a collective).

    Yields:
        ``images`` ``[B, C, H, W]``, or ``(images, targets)``.

    Raises:
        ValueError: ``max_batches`` is invalid or the loader yields no batch.
        TypeError: A batch is not a tensor / tuple starting with a tensor, or targets are
            requested but missing.
    """
    _check_max_batches(max_batches)
    total = max_batches
    if total is None:
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
    count = 0
    for batch in tqdm(loader, desc=desc, total=total, disable=not progress, leave=False):
        if max_batches is not None and count >= max_batches:
            break
        if isinstance(batch, torch.Tensor):
            images, targets = batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            images, targets = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise TypeError(f"calibration batches must be tensors or (tensor, target) tuples, got {type(batch).__name__}")
        if with_targets and targets is None:
            raise TypeError("this criterion needs labels: the loader must yield (images, targets)")
        count += 1
        yield (images, targets) if with_targets else images
    if count == 0 and not allow_empty:
        raise ValueError("the calibration loader yielded no batches; pass a non-empty loader")


@torch.no_grad()
def collect_attention(
    model: nn.Module,
    loader: Iterable,
    callback: Callable[[int, torch.Tensor], None],
    max_batches: int | None = None,
    desc: str = "attention",
    progress: bool = True,
    allow_empty: bool = False,
) -> int:
    """Run calibration batches through ``model`` and hand each block's attention to ``callback``.

    The model runs in eval mode with eager attention; hooks and ``fused_attn`` flags are
    restored afterwards (see :func:`~tp_vit_plugins.attention_maps`).

    Args:
        model: A timm ViT-family model.
        loader: Calibration loader (tensors or ``(images, target)`` tuples).
        callback: ``callback(block_index, probs)`` with ``probs`` ``[B, H, N, N]``.
        max_batches: Batch limit.
        desc: Progress-bar label.
        progress: Show a tqdm bar.
        allow_empty: Return 0 for an empty loader instead of raising (see :func:`iter_batches`).

    Returns:
        Number of images processed.

    Raises:
        ValueError: Empty loader or invalid ``max_batches``.
        TypeError: No timm attention in ``model``, malformed batches, or a windowed-attention
            model (Swin: :class:`~tp_vit_plugins.UnsupportedModelError`).
    """
    _check_max_batches(max_batches)
    host = host_for(model)
    host.check_global_sequence(model, f"attention calibration ({desc})")
    was_training = model.training
    device = model_device(model)
    seen = 0
    model.eval()
    try:
        with host.attention_maps(model, store=False, callback=callback):
            for images in iter_batches(loader, max_batches, desc, progress, allow_empty=allow_empty):
                model(images.to(device))
                seen += int(images.shape[0])
    finally:
        model.train(was_training)
    return seen


def accumulate_gradients(
    model: nn.Module,
    loader: Iterable,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    desc: str = "gradients",
    progress: bool = True,
    after_backward: Callable[[], None] | None = None,
    allow_empty: bool = False,
) -> int:
    """Zero the gradients, then accumulate ``loss_fn`` gradients over calibration batches.

    This is the gradient pass tp's ``GroupTaylorImportance`` (and Hessian criteria) need
    before ``pruner.step()``. The model runs in eval mode (no dropout), restored afterwards.
    ``after_backward`` runs after every batch's backward (e.g. to read, then clear, per-batch
    gradients, as GOHSP's Fisher calibration does). ``allow_empty``: return 0 for an empty
    loader instead of raising (see :func:`iter_batches`).

    Returns:
        Number of images processed.

    Raises:
        ValueError: Empty loader or invalid ``max_batches``.
        TypeError: The loader yields no targets.
    """
    _check_max_batches(max_batches)
    host_for(model).check_global_sequence(model, f"attention calibration ({desc})")
    was_training = model.training
    device = model_device(model)
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    try:
        for images, targets in iter_batches(loader, max_batches, desc, progress, with_targets=True, allow_empty=allow_empty):
            loss_fn(as_logits(model(images.to(device))), targets.to(device)).backward()
            if after_backward is not None:
                after_backward()
            seen += int(images.shape[0])
    finally:
        model.train(was_training)
    return seen
