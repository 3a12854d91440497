"""The public tp glue and support checks, for any registered host (:func:`~tp_vit_plugins.hosts.host_for`).

Each function asks the host that claims the model; none reads a host's internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..hosts import AttentionMaps, UnsupportedModelError, host_for

__all__ = [
    "MERGED_KWARGS",
    "vit_pruning_kwargs",
    "sync_attention",
    "attention_maps",
    "eager_attention",
    "check_supported",
    "is_supported",
]


#: Arguments of a tp pruner that :func:`vit_pruning_kwargs` merges with a script's own.
MERGED_KWARGS = ("ignored_layers", "num_heads", "unwrapped_parameters", "customized_pruners", "output_transform")


def vit_pruning_kwargs(model: nn.Module, **theirs: Any) -> dict[str, Any]:
    """Keyword arguments that let any ``tp.pruner.BasePruner`` prune a supported ViT correctly.

    Returns a fresh dict on each call (tp mutates ``num_heads`` in place):

    * ``num_heads`` — ``{attn.qkv: H}`` for every block;
    * ``ignored_layers`` — the classifier heads (``head``, ``head_dist``; transformers'
      classifiers), the parts left whole (an attention-pool head, CaiT's class attention) and
      then the patch embedding where the residual stream must keep its width, and per-head
      tables tp cannot see (:class:`~tp_vit_plugins.ViTPruner` prunes them with the heads);
    * ``unwrapped_parameters`` — prefix tokens and position embeddings (embedding dim = last
      axis), LayerScale scales (axis 0), so embedding-dim pruning keeps them consistent;
    * ``customized_pruners`` — layer pruners for per-head ``q_norm`` / ``k_norm`` and CaiT's
      talking-heads mixers, where the model has them;
    * ``output_transform`` — for transformers models, the tensor tp traces (``logits``).

    **Additive.** A script's own arguments go in as keywords and come out merged, so an existing
    tp call keeps every argument it had and gains the ViT's in one changed line::

        pruner = tp.pruner.MetaPruner(model, example_inputs, **tpv.vit_pruning_kwargs(model,
            importance=imp, pruning_ratio=0.5, ignored_layers=[model.head, *bottlenecks],
            num_heads=num_heads, round_to=2))

    ``ignored_layers`` are joined (theirs first, no duplicates); ``num_heads``,
    ``customized_pruners`` and ``unwrapped_parameters`` (a list of ``(param, dim)`` or a dict)
    are joined with theirs winning on the same key; their ``output_transform`` replaces the
    host's. Every other keyword passes through unchanged.

    After ``pruner.step()`` call ``sync_attention(model, pruner.num_heads)``. Attention that a
    host prunes in a converted form (EVA / BEiT / CaiT / Swin, transformers) is converted in
    place first (exact; outputs unchanged).

    Raises:
        UnsupportedModelError: (a ``TypeError``) the model is not supported; nothing changed.
        TypeError: A merged argument of the wrong type (e.g. ``num_heads`` that is not a dict).
    """
    ours = host_for(model).pruning_kwargs(model)
    out = dict(theirs)
    if "ignored_layers" in theirs:
        layers = theirs["ignored_layers"]
        if isinstance(layers, nn.Module) or not isinstance(layers, (list, tuple, set)):
            raise TypeError(f"ignored_layers must be a list of modules, got {type(layers).__name__}")
        seen: set[int] = set()
        out["ignored_layers"] = [m for m in (*layers, *ours["ignored_layers"]) if not (id(m) in seen or seen.add(id(m)))]
    else:
        out["ignored_layers"] = ours["ignored_layers"]
    for key in ("num_heads", "customized_pruners"):
        mine = theirs.get(key) or {}
        if not isinstance(mine, Mapping):
            raise TypeError(f"{key} must be a dict, got {type(mine).__name__}")
        out[key] = {**ours.get(key, {}), **mine}
    mine_params = theirs.get("unwrapped_parameters") or []
    pairs = list(mine_params.items()) if isinstance(mine_params, Mapping) else list(mine_params)
    if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise TypeError("unwrapped_parameters must be a list of (parameter, dim) pairs or a {parameter: dim} dict")
    taken = {id(p) for p, _ in pairs}
    out["unwrapped_parameters"] = [*pairs, *(pd for pd in ours["unwrapped_parameters"] if id(pd[0]) not in taken)]
    if theirs.get("output_transform") is None and "output_transform" in ours:
        out["output_transform"] = ours["output_transform"]
    return out


def sync_attention(model: nn.Module, num_heads: Mapping[Any, int] | None = None) -> nn.Module:
    """After any tp step, make every attention module consistent with its (possibly pruned) projections.

    Sets head count, head width, attention width and the logit scale so that fused (SDPA) and
    eager attention compute exactly what the unpruned model computed with the same dims zeroed.
    Idempotent.

    Args:
        model: A supported ViT, pruned by tp or not.
        num_heads: Head counts after pruning, keyed by ``attn.qkv``, the attention module or its
            qualified name — e.g. ``pruner.num_heads``. Without it the count is inferred where
            unambiguous (pure head removal or pure head-dim removal).

    Returns:
        ``model`` (modified in place).

    Raises:
        UnsupportedModelError: The model is not supported.
        ValueError: Inconsistent shapes or an ambiguous layout; nothing is changed then.
    """
    return host_for(model).sync(model, num_heads)


@contextlib.contextmanager
def attention_maps(
    model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None
) -> Iterator[AttentionMaps]:
    """Capture per-block attention probabilities ``[B, H, N, N]``.

    Inside the block every attention runs its eager path (the fused path never materialises
    probabilities); on exit — also when the body raises — hooks are removed and each module's
    attention path is restored.

    Example::

        with tpv.utils.attention_maps(model) as maps:
            model(images)
        first_block = maps[0]            # [B, H, N, N], rows sum to 1

    Args:
        model: A supported ViT.
        store: Keep the latest map of each block in ``maps`` (disable for long calibration
            runs that only use ``callback``).
        callback: Called as ``callback(block_index, probs)`` for every captured map.

    Yields:
        An :class:`~tp_vit_plugins.hosts.AttentionMaps`.

    Raises:
        UnsupportedModelError: The model is not supported.
    """
    with host_for(model).attention_maps(model, store, callback) as maps:
        yield maps


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Force the eager (non-SDPA) attention path inside the block; restore it after.

    Yields:
        The model's ``[(name, attention)]`` list.
    """
    with host_for(model).eager_attention(model) as attns:
        yield attns


def check_supported(model: nn.Module) -> None:
    """Refuse, before anything changes, a model this library cannot prune correctly.

    The host that claims the model decides (the support matrix in the README).

    Raises:
        UnsupportedModelError: (a ``TypeError``) naming the family or module and what is missing.
    """
    host_for(model).check(model)


def is_supported(model: nn.Module) -> bool:
    """:func:`check_supported` as a bool: ``True`` when it passes and the model has attention blocks (nothing changes)."""
    try:
        return host_for(model).is_supported(model)
    except UnsupportedModelError:
        return False
