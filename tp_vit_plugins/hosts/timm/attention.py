"""Eager attention and attention-probability capture (hooks only inside context managers)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from timm.layers import Attention
from torch import nn

from ..base import AttentionMaps, fused_attn_off
from .structure import attention_modules


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[list[tuple[str, Attention]]]:
    """Force the eager (non-SDPA) attention path inside the block; restore ``fused_attn`` after.

    Yields:
        The model's ``[(name, Attention)]`` list.
    """
    attns = attention_modules(model)
    with fused_attn_off(a for _, a in attns):
        yield attns


@contextlib.contextmanager
def attention_maps(
    model: nn.Module,
    store: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> Iterator[AttentionMaps]:
    """Capture per-block attention probabilities ``[B, H, N, N]``.

    Inside the block every attention runs its eager path (the fused path never materialises
    probabilities); on exit — also when the body raises — hooks are removed and each
    module's ``fused_attn`` flag is restored.

    Example::

        with tpv.utils.attention_maps(model) as maps:
            model(images)
        first_block = maps[0]            # [B, H, N, N], rows sum to 1

    Args:
        model: A timm ViT-family model.
        store: Keep the latest map of each block in ``maps`` (disable for long calibration
            runs that only use ``callback``).
        callback: Called as ``callback(block_index, probs)`` for every captured map.

    Yields:
        An :class:`AttentionMaps`.

    Raises:
        TypeError: No timm ``Attention`` in ``model``.
    """
    with capture_attention(attention_modules(model), store, callback) as recorder:
        yield recorder


@contextlib.contextmanager
def capture_attention(
    attns: list[tuple[str, nn.Module]], store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None
) -> Iterator[AttentionMaps]:
    """:func:`attention_maps` over given timm-style attention modules (eager path, hooks on ``attn_drop``)."""
    handles = []
    with fused_attn_off(a for _, a in attns):
        recorder = AttentionMaps([n for n, _ in attns], store, callback)
        try:
            for i, (_, a) in enumerate(attns):
                handles.append(a.attn_drop.register_forward_hook(_BoundHook(recorder, i)))
            yield recorder
        finally:
            for h in handles:
                h.remove()


class _BoundHook:
    """A picklable forward hook bound to one block index."""

    def __init__(self, recorder: AttentionMaps, index: int) -> None:
        self.recorder, self.index = recorder, index

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.recorder._hook(self.index, module, args, output)
