"""Per-block input dimensions: remove the residual-stream dims one block's attention or MLP reads, for that block only.

A block reads the residual stream through a norm (``norm1`` before the attention's input
projections, ``norm2`` before the MLP's ``fc1``). Removing input dimension ``j`` of those
projections in one block leaves the stream's width alone: the norm still normalises every
dimension and then passes on only the kept ones (:func:`select_outputs`), and the projections
lose the matching weight columns. The result equals the unpruned block with those columns zeroed.

The norm keeps its class's forward and gains a ``kept_outputs`` buffer (it becomes a subclass of
its own class, so saved state dicts and exported graphs carry the selection); everything else
stays the host's own module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..hosts import BlockLayers

__all__ = ["select_outputs", "selected_outputs", "prune_block_inputs", "KEPT_BUFFER"]

#: The buffer holding the output dims a norm passes on.
KEPT_BUFFER = "kept_outputs"
_CLASSES: dict[type, type] = {}


class _SelectsOutputs:
    """Mixin: the norm's own forward, then only the output dims in ``kept_outputs`` (``[..., C] -> [..., k]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x).index_select(-1, getattr(self, KEPT_BUFFER))


def _selecting(cls: type) -> type:
    if issubclass(cls, _SelectsOutputs):
        return cls
    if cls not in _CLASSES:
        name = f"Selected{cls.__name__}"
        new = type(name, (_SelectsOutputs, cls), {"__module__": __name__, "__qualname__": name})
        _CLASSES[cls] = new
        globals()[name] = new  # importable by name (pickling, repr)
    return _CLASSES[cls]


def selected_outputs(norm: nn.Module) -> torch.Tensor | None:
    """The output dims ``norm`` passes on (``None``: all of them)."""
    return getattr(norm, KEPT_BUFFER, None) if isinstance(norm, _SelectsOutputs) else None


def select_outputs(norm: nn.Module, keep: Sequence[int] | torch.Tensor) -> None:
    """Make ``norm`` pass on only its output dims ``keep`` (ascending; indices into what it passes on now).

    Args:
        norm: A module whose forward maps ``[..., C]`` to ``[..., C]`` (LayerNorm, RMSNorm, ...).
        keep: Dims to keep, a non-empty ascending subset of the current outputs.

    Raises:
        ValueError: ``keep`` is empty, not ascending or out of range.
    """
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    current = selected_outputs(norm)
    ref = next((t for t in (*norm.parameters(), *norm.buffers())), None)
    width = len(current) if current is not None else _width(norm)
    if keep.numel() == 0 or bool((keep[1:] <= keep[:-1]).any()) or int(keep.min()) < 0 or int(keep.max()) >= width:
        raise ValueError(f"keep must be a non-empty ascending subset of the {width} outputs, got {keep.tolist()[:8]}...")
    full = keep if current is None else current.cpu()[keep]
    norm.__class__ = _selecting(type(norm))
    norm.register_buffer(KEPT_BUFFER, full.to(ref.device if ref is not None else "cpu"))


def _width(norm: nn.Module) -> int:
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    w = getattr(norm, "weight", None)
    if isinstance(w, torch.Tensor):
        return int(w.shape[-1])
    raise TypeError(f"{type(norm).__name__} has no normalized_shape or weight: its width is unknown")


def prune_block_inputs(b: BlockLayers, attn_gone: Sequence[int] = (), mlp_gone: Sequence[int] = ()) -> None:
    """Remove input dims of one block: ``attn_gone`` from its attention's input projections, ``mlp_gone`` from ``fc1``.

    Args:
        b: The block (its ``in_projs``, ``fc1``, ``norm1``, ``norm2``).
        attn_gone: Dims of the attention's input (indices into its current input) to remove.
        mlp_gone: Dims of the MLP's input to remove.

    Raises:
        ValueError: A norm is missing, or every dim would go.
        TypeError: ``mlp_gone`` on a block without a two-layer MLP.
    """
    for gone, norm, layers in ((attn_gone, b.norm1, b.in_projs), (mlp_gone, b.norm2, (b.fc1,))):
        gone = sorted({int(i) for i in gone})
        if not gone:
            continue
        if norm is None or any(lin is None for lin in layers):
            raise TypeError(f"{b.name}: input dims need a norm before the layers and a two-layer MLP")
        width = int(layers[0].in_features)
        keep = [i for i in range(width) if i not in set(gone)]
        if not keep:
            raise ValueError(f"{b.name}: every input dim would be removed")
        for lin in layers:
            tp.prune_linear_in_channels(lin, gone)
        select_outputs(norm, keep)
