"""What Torch-Pruning needs to prune a timm ViT: :func:`vit_pruning_kwargs` and two tp layer pruners.

:class:`HeadNormPruner` prunes per-head ``q_norm`` / ``k_norm`` layers (tp would index them with
attention-wide channel indices); :class:`HeadMixerPruner` prunes CaiT's talking-heads mixers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch_pruning as tp
from timm.layers import Attention, LayerScale
from torch import nn

from .families import (
    HeadMixer,
    head_mixers,
    head_tables,
)
from .structure import PREFIX_TOKEN_ATTRS, attention_modules, classifier_heads
from .support import attention_pool, whole_layers

#: Per-block residual-stream scales that are plain parameters (BEiT / EVA blocks).
_BLOCK_SCALES = ("gamma_1", "gamma_2")


def head_norm_dims(idxs: Sequence[int], num_heads: int, head_dim: int) -> list[int]:
    """Translate attention-wide channel indices into the in-head dims a shared head norm loses.

    tp hands ``q_norm`` / ``k_norm`` (normalised over ``head_dim``, shared by all heads) the
    indices it removes from the attention output, i.e. in ``[0, num_heads * head_dim)``.
    Heads whose every channel is removed disappear and leave the norm alone; every surviving
    head must lose the same in-head dims, which the norm then loses too.

    Args:
        idxs: Removed channel indices in ``[0, num_heads * head_dim)``.
        num_heads: Heads before this pruning step.
        head_dim: Head width before this pruning step.

    Returns:
        Sorted in-head dims to remove from the norm (empty for pure head removal).

    Raises:
        ValueError: Indices out of range, or surviving heads would lose different dims.
    """
    per_head: list[set[int]] = [set() for _ in range(num_heads)]
    for i in idxs:
        i = int(i)
        if not 0 <= i < num_heads * head_dim:
            raise ValueError(f"channel index {i} outside [0, {num_heads * head_dim})")
        per_head[i // head_dim].add(i % head_dim)
    surviving = [s for s in per_head if len(s) < head_dim]
    if not surviving:
        raise ValueError("every head of the attention module would be removed")
    if any(s != surviving[0] for s in surviving):
        raise ValueError(
            "surviving heads would lose different in-head dims, which a shared q_norm/k_norm "
            "cannot represent; prune head dims with a channel grouping of num_heads"
        )
    return sorted(surviving[0])


class HeadNormPruner(tp.pruner.function.LayernormPruner):
    """tp layer pruner for the per-head ``q_norm`` / ``k_norm`` of timm ``Attention``.

    tp couples these norms (normalised over ``head_dim``, shared by all heads) with the
    attention channels and indexes them with attention-wide indices, which fails — tp's own
    magnitude importances crash on ``qk_norm`` ViTs. tp 1.6.1 keys customized pruners by
    class, so this pruner is registered for the norms' class and dispatches per instance:

    * a known head norm gets the indices translated by :func:`head_norm_dims`, and reports
      no channel count (whole-head removal is not mistaken for emptying the norm);
    * any other norm of that class (``norm1``, ``norm2``, ...) is pruned exactly as tp's
      ``LayernormPruner`` would.

    tp's importances do not score layers handled by a customized pruner, so in ``qk_norm``
    models the LayerNorm affine weights do not enter magnitude scores (Linear weights do).

    Args:
        head_norms: ``{norm_module: owning Attention}``. Each attention's ``num_heads`` must
            describe the layout *before* the pruning step (true whenever
            :func:`sync_attention` ran after the previous step).
    """

    def __init__(self, head_norms: Mapping[nn.Module, Attention]) -> None:
        super().__init__()
        self.head_norms = dict(head_norms)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        attn = self.head_norms.get(layer)
        if attn is None:
            return super().prune_out_channels(layer, idxs)
        head_dim = int(layer.normalized_shape[-1])
        dims = head_norm_dims(idxs, int(attn.num_heads), head_dim)
        return super().prune_out_channels(layer, dims) if dims else layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return None if layer in self.head_norms else super().get_out_channels(layer)

    get_in_channels = get_out_channels


class HeadMixerPruner(tp.pruner.function.BasePruningFunc):
    """tp layer pruner for CaiT's talking-heads mixers (:class:`~.families.HeadMixer`): tp leaves them alone.

    tp's tracing pairs the mixers' head axis with attention channels (it cannot tell the
    head axis of ``[B, H, N, N]`` from a channel axis), so every call here is a no-op and no
    channel count is reported (tp then neither roots a group at a mixer nor scores it);
    :class:`~tp_vit_plugins.ViTPruner` removes the rows and columns of removed heads itself.
    """

    TARGET_MODULES = HeadMixer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    get_in_channels = get_out_channels


def vit_pruning_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that let any ``tp.pruner.BasePruner`` prune a timm ViT correctly.

    Returns a fresh dict on each call (tp mutates ``num_heads`` in place):

    * ``num_heads`` — ``{attn.qkv: H}`` for every block;
    * ``ignored_layers`` — the classifier heads (``head``, ``head_dist``), so classes stay;
      the layers of :func:`whole_parts` (an attention-pool head, CaiT's class attention)
      and then the patch embedding, so they stay whole and the residual stream keeps its
      width; BEiT's relative position tables (tp cannot see their head axis:
      :class:`~tp_vit_plugins.ViTPruner` prunes them with the heads, and CaiT's
      talking-heads mixers likewise, see ``customized_pruners``);
    * ``unwrapped_parameters`` — ``cls_token`` / ``dist_token`` / ``reg_token`` /
      ``pos_embed`` (embedding dim = last axis), LayerScale ``gamma`` and BEiT / EVA block
      ``gamma_1`` / ``gamma_2`` (axis 0), so embedding-dim pruning keeps prefix tokens and
      position embeddings consistent; BEiT's relative position tables are declared too
      (with a stock tp pruner, head removal in BEiT or CaiT is refused by
      :func:`sync_attention`, since the tables and mixers still have every head);
    * ``customized_pruners`` — a :class:`HeadNormPruner` for the class of the ``q_norm`` /
      ``k_norm`` layers (only in ``qk_norm`` models), a :class:`HeadMixerPruner` for CaiT's
      talking-heads mixers.

    After ``pruner.step()`` call ``sync_attention(model, pruner.num_heads)``. EVA / BEiT
    attention is converted in place first (exact; see :func:`attention_modules`).

    Args:
        model: A timm ViT-family model.

    Returns:
        The kwargs dict.

    Raises:
        TypeError: ``model`` has no timm ``Attention``.
    """
    attns = attention_modules(model)
    unwrapped: list[tuple[nn.Parameter, int]] = []
    for attr in (*PREFIX_TOKEN_ATTRS, "pos_embed"):
        p = getattr(model, attr, None)
        if isinstance(p, nn.Parameter):
            unwrapped.append((p, p.dim() - 1))
    for m in model.modules():
        if isinstance(m, LayerScale):
            unwrapped.append((m.gamma, 0))
        for attr in _BLOCK_SCALES:
            p = m._parameters.get(attr)
            if isinstance(p, nn.Parameter):
                unwrapped.append((p, 0))
    tables = [t for _, a in attns for t in head_tables(a)]  # per-head columns: ViTPruner prunes them with heads
    mixers = [m for _, a in attns for m in head_mixers(a)]  # [H, H] talking-heads mixers: likewise
    unwrapped.extend((t, t.dim() - 1) for t in tables)
    pool = attention_pool(model)
    if pool is not None:  # the latent query feeds only the (ignored) pool q: never pruned, declared for tp
        unwrapped.append((pool.latent, pool.latent.dim() - 1))
    head_norms = {norm: a for _, a in attns for norm in (a.q_norm, a.k_norm) if not isinstance(norm, nn.Identity)}
    # tp 1.6.1 keys customized pruners by class; one dispatching pruner per norm class
    pruner = HeadNormPruner(head_norms) if head_norms else None
    customized = {cls: pruner for cls in {type(n) for n in head_norms}}
    if mixers:
        customized[HeadMixer] = HeadMixerPruner()
    return {
        "num_heads": {a.qkv: int(a.num_heads) for _, a in attns},
        "ignored_layers": [*classifier_heads(model), *whole_layers(model), *tables],
        "unwrapped_parameters": unwrapped,
        "customized_pruners": customized,
    }
