"""The timm adapter: where the library reads timm's internals.

Only this module and :mod:`.families` (with :mod:`.io`, which rebuilds timm skeletons, and the CP-ViT token patch
:mod:`tp_vit_plugins.cpvit.patch`, which replaces ``Attention.forward``) knows timm's
attribute names; every method asks it for blocks, layers and head layouts. It supplies
what Torch-Pruning needs to prune a timm ``VisionTransformer`` (and its relatives: DeiT,
distilled DeiT, register tokens, LayerScale, ``qk_norm``, average pooling):

* :func:`vit_pruning_kwargs` — keyword arguments for any ``tp.pruner.BasePruner``;
* :func:`sync_attention` — makes every attention module consistent with its pruned
  ``qkv`` / ``proj`` (``num_heads``, ``head_dim``, ``attn_dim``, ``scale``);
* :func:`attention_maps` — captures attention probabilities ``[B, H, N, N]`` per block;
* :func:`block_layers`, :func:`head_layout`, :func:`prefix_tokens`, :func:`heads_per_block`
  — the structure the methods need (qkv / proj / fc1 / fc2 per block, heads x head dim);
* :class:`HeadNormPruner` — a tp layer pruner for per-head ``q_norm`` / ``k_norm`` layers,
  which tp would otherwise index with attention-wide channel indices.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from timm.layers import Attention, LayerScale
from torch import nn

from .families import (
    FAMILY_ATTENTIONS,
    HeadMixer,
    PrunableBeitAttention,
    PrunableEvaAttention,
    PrunableTalkingHeadAttn,
    PrunableWindowAttention,
    convert_attention,
    has_rope,
    head_mixers,
    head_tables,
)
from .metrics import fused_attn_off

__all__ = [
    "HeadNormPruner",
    "HeadMixerPruner",
    "AttentionMaps",
    "BlockLayers",
    "block_layers",
    "Readout",
    "readout",
    "residual_scales",
    "head_layout",
    "unit_param_costs",
    "split_qkv",
    "heads_per_block",
    "prefix_tokens",
    "is_timm_vit",
    "check_supported",
    "UnsupportedModelError",
    "attention_modules",
    "attention_pool",
    "check_global_sequence",
    "whole_parts",
    "fixed_residual",
    "attention_maps",
    "eager_attention",
    "vit_pruning_kwargs",
    "sync_attention",
    "ATTENTION_TYPES",
    "classifier_heads",
    "head_norm_dims",
]

_PREFIX_TOKEN_ATTRS = ("cls_token", "dist_token", "reg_token")
#: Attention classes the pruners keep consistent (after :func:`~.families.convert_attention`).
ATTENTION_TYPES = (
    Attention, PrunableEvaAttention, PrunableBeitAttention, PrunableTalkingHeadAttn, PrunableWindowAttention,
)  # fmt: skip
#: timm model classes besides ``VisionTransformer`` whose attention is converted and pruned.
_CONVERTED_FAMILIES = ("Eva", "Beit", "Cait", "SwinTransformer")
#: Modules left whole (never pruned), which need the residual stream at its full width:
#: CaiT's class attention, Swin's patch merging (2 x 2 neighbours concatenated).
_WHOLE_ATTENTIONS = ("ClassAttn", "PatchMerging")
#: Per-block residual-stream scales that are plain parameters (BEiT / EVA blocks).
_BLOCK_SCALES = ("gamma_1", "gamma_2")
_CLASSIFIER_ATTRS = ("head", "head_dist")


#: Why a timm family is refused, by model class name (the support matrix in the README).
_UNSUPPORTED_FAMILIES = {
    "SwinTransformerV2": "Swin V2 (window attention, per-stage heads)",
    "VisionTransformerRelPos": "vit_relpos (relative position attention)",
    "PoolingVisionTransformer": "PiT (token pooling between stages)",
}


class UnsupportedModelError(TypeError):
    """The model is not a timm ViT this library can prune (raised before anything changes)."""


def check_supported(model: nn.Module) -> None:
    """Refuse, before anything changes, a model this library cannot prune correctly.

    Supported: timm ``VisionTransformer`` and its subclasses (ViT, DeiT, distilled DeiT,
    DeiT3, FlexiViT, register tokens, LayerScale, ``qk_norm``, average pooling, the
    attention-pool head of SigLIP-style models, which is left whole: :func:`attention_pool`)
    whose blocks use timm's own ``Attention``; and ``Eva`` (EVA02), ``Beit``, ``Cait`` and
    ``SwinTransformer``, whose attention is converted exactly into this library's subclasses
    (:mod:`.families`). Refused: other families (vit_relpos, PiT, torchvision's ViT, ...),
    BEiT with a shared relative position bias, EVA with mixed rope, attention subclasses or
    other attention modules inside a ViT (their forward is not the one the pruners keep
    consistent), and other pool heads (``global_pool="prr"``).

    Raises:
        UnsupportedModelError: (a ``TypeError``) naming the family or module and what is missing.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    from timm.models.vision_transformer import VisionTransformer

    name = type(model).__name__
    if name in _CONVERTED_FAMILIES:
        _check_converted_family(model)
    elif not isinstance(model, VisionTransformer):
        family = _UNSUPPORTED_FAMILIES.get(name)
        what = f"{family} is not supported yet" if family else f"{name} is not a timm VisionTransformer"
        raise UnsupportedModelError(
            f"{what}; tp_vit_plugins prunes timm VisionTransformer-family models (vit_*, deit_*, deit3_*, "
            "flexivit_*, with register tokens / LayerScale / qk_norm / avg pooling). Nothing was changed."
        )
    stem = type(getattr(model, "patch_embed", None)).__name__
    if stem != "PatchEmbed":
        raise UnsupportedModelError(
            f"{name} embeds patches with {stem}, not timm's PatchEmbed (e.g. a hybrid CNN stem); "
            "not supported yet. Nothing was changed."
        )
    pool = attention_pool(model)
    pool_modules = set(pool.modules()) if pool is not None else set()
    for mod_name, m in model.named_modules():
        kind = type(m).__name__
        if m in pool_modules:
            continue
        if kind in ("AttentionPoolLatent", "AttentionPoolPrr"):
            raise UnsupportedModelError(
                f"{name}.{mod_name} is an attention pool ({kind}) that is not the model's attn_pool head with a "
                "latent query; pruning it is not supported. Nothing was changed."
            )
        is_block = isinstance(getattr(m, "attn", None), nn.Module)  # e.g. CaiT's LayerScaleBlockClassAttn
        attention_like = (hasattr(m, "num_heads") or "Attention" in kind or "Attn" in kind) and not is_block
        if kind in _WHOLE_ATTENTIONS and name in _CONVERTED_FAMILIES:
            continue
        if attention_like and type(m) not in (*ATTENTION_TYPES, *FAMILY_ATTENTIONS):
            raise UnsupportedModelError(
                f"{name}.{mod_name} is a {kind}, not timm.layers.Attention; tp_vit_plugins keeps only timm's own "
                "Attention consistent after pruning. Nothing was changed."
            )


def _check_converted_family(model: nn.Module) -> None:
    """EVA / BEiT options the conversion does not cover are refused (nothing changed)."""
    name = type(model).__name__
    if name == "Beit" and getattr(model, "rel_pos_bias", None) is not None:
        raise UnsupportedModelError(
            "BEiT with a shared relative position bias (use_shared_rel_pos_bias=True: one table for every block) is "
            "not supported; per-block tables (use_rel_pos_bias=True) are. Nothing was changed."
        )
    if name == "Eva" and getattr(model, "rope_mixed", False):
        raise UnsupportedModelError(
            "EVA with mixed (learned per-head) rotary embeddings is not supported; EVA02's 'cat' rope is. Nothing was changed."
        )


#: Families whose attention does not run over one global token sequence, and why.
_WINDOWED = {"SwinTransformer": "Swin attends within windows of a 2-D grid, not over one global token sequence"}


def check_global_sequence(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (a statistic over one global token sequence) on windowed-attention models.

    Raises:
        UnsupportedModelError: ``model`` is a Swin-style model.
    """
    reason = _WINDOWED.get(type(model).__name__)
    if reason is not None:
        raise UnsupportedModelError(
            f"{what} is not supported for {type(model).__name__}: {reason}. Prune its heads and widths with "
            "ViTPruner (any tp importance) or VTP. Nothing was changed."
        )


def attention_pool(model: nn.Module) -> nn.Module | None:
    """The model's attention-pool head (``global_pool="map"``, SigLIP-style ``attn_pool``), or ``None``.

    The pool reads the residual stream through its ``kv`` projection and pools it with a
    learned latent query. The pruners leave the pool whole (its ``q`` / ``kv`` / ``proj`` /
    MLP are ignored layers); the blocks' heads, head dims and MLPs prune as in any ViT.
    Embedding (residual-stream) dims are not pruned in such models: timm's pool reshapes its
    attention output to the width of its input, so a narrower residual stream would break
    it (``ViTPruner(prune_embed_dim=True)`` refuses; a stock tp pruner given
    :func:`vit_pruning_kwargs` leaves the residual group alone).

    Raises:
        UnsupportedModelError: ``attn_pool`` is another kind of pool (e.g. ``"prr"``).
    """
    pool = getattr(model, "attn_pool", None)
    if pool is None:
        return None
    kind = type(pool).__name__
    if kind != "AttentionPoolLatent" or not isinstance(getattr(pool, "kv", None), nn.Linear):
        raise UnsupportedModelError(
            f"{type(model).__name__}.attn_pool is a {kind}; only timm's AttentionPoolLatent (global_pool='map', "
            "SigLIP-style) is supported. Nothing was changed."
        )
    return pool


def whole_parts(model: nn.Module) -> list[nn.Module]:
    """Modules the pruners leave whole: an attention-pool head, CaiT's class-attention modules."""
    parts = [m for m in model.modules() if type(m).__name__ in _WHOLE_ATTENTIONS]
    pool = attention_pool(model)
    return [*([pool] if pool is not None else []), *parts]


def fixed_residual(model: nn.Module) -> str | None:
    """Why the residual stream of ``model`` must keep its width (``None`` if it may be pruned).

    timm's attention pool and CaiT's class attention reshape their attention output to the
    width of their *input*, while their own projections stay whole; Swin's patch merging
    concatenates 2 x 2 neighbouring tokens, a channel layout tp cannot follow.
    """
    parts = whole_parts(model)
    if not parts:
        return None
    kinds = sorted({type(m).__name__ for m in parts})
    return (
        f"{type(model).__name__} has modules that stay whole ({', '.join(kinds)}) and read the residual stream at its full width"
    )


def _whole_layers(model: nn.Module) -> list[nn.Module]:
    """Layers tp must not prune: those of :func:`whole_parts`, and then the patch embedding.

    Ignoring the patch embedding makes tp treat the residual-stream group as unprunable (tp
    skips every group that would remove output channels of an ignored layer), so the whole
    parts keep the input width they reshape to.
    """
    parts = whole_parts(model)
    if not parts:
        return []
    layers = [
        m for part in parts for m in part.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]
    stem = getattr(getattr(model, "patch_embed", None), "proj", None)
    return [*layers, *([stem] if isinstance(stem, nn.Module) else [])]


def attention_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    """All timm ``Attention`` modules of ``model`` in forward (registration) order.

    EVA / EVA02 and BEiT attention modules are first converted in place to this library's
    subclasses (:func:`~tp_vit_plugins.core.families.convert_attention`: exact, idempotent;
    their q / v biases move into ``qkv.bias``).

    Args:
        model: A timm ViT-family model.

    Returns:
        ``[(qualified_name, attention_module), ...]``, one entry per transformer block.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, contains no ``timm.layers.Attention``,
            or is refused by :func:`check_supported` (:class:`UnsupportedModelError`).
    """
    check_supported(model)
    convert_attention(model)  # EVA / BEiT: exact, idempotent (see .families)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, ATTENTION_TYPES)]
    if not found:
        raise TypeError(
            f"{type(model).__name__} contains no timm.layers.Attention module; tp_vit_plugins "
            "expects a timm VisionTransformer-family model (vit_*, deit_*, ...)."
        )
    return found


def is_timm_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ViT this library prunes (:func:`check_supported` passes, with attention)."""
    try:
        check_supported(model)
    except TypeError:
        return False
    return any(isinstance(m, (*ATTENTION_TYPES, *FAMILY_ATTENTIONS)) for m in model.modules())


@dataclass(frozen=True)
class BlockLayers:
    """The prunable layers of one transformer block.

    Attributes:
        name: Qualified name of the block's attention module.
        attn: The timm ``Attention``.
        qkv: Fused query/key/value projection, ``out_features = 3 * num_heads * head_dim``.
        proj: Attention output projection, ``in_features = num_heads * head_dim``.
        fc1: MLP input projection (``None`` when the block has no plain two-layer MLP, e.g.
            EVA02's SwiGLU with ``fc1_g`` / ``fc1_x``).
        fc2: MLP output projection (``None`` when the block has no such layer).
        norm1: The norm the attention reads the residual stream through (``None`` if none).
        norm2: The norm the MLP reads it through (``None`` if none).
        block: The transformer block holding both.
    """

    name: str
    attn: Attention
    qkv: nn.Linear
    proj: nn.Linear
    fc1: nn.Linear | None
    fc2: nn.Linear | None
    norm1: nn.Module | None = None
    norm2: nn.Module | None = None
    block: nn.Module | None = None


def block_layers(model: nn.Module) -> list[BlockLayers]:
    """Every block's attention and MLP layers, in forward order.

    Raises:
        TypeError: No timm ``Attention`` in ``model``.
    """
    attns = attention_modules(model)
    owners = {}
    for m in model.modules():
        attn = getattr(m, "attn", None)
        if isinstance(attn, ATTENTION_TYPES):
            owners[attn] = m
    out = []
    for name, attn in attns:
        block = owners.get(attn)
        mlp = getattr(block, "mlp", None)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        fc2 = fc2 if isinstance(fc2, nn.Linear) else None
        fc1 = fc1 if isinstance(fc1, nn.Linear) and fc2 is not None else None
        norms = [getattr(block, n, None) for n in ("norm1", "norm2")]
        norm1, norm2 = (m if isinstance(m, nn.Module) else None for m in norms)
        out.append(BlockLayers(name, attn, attn.qkv, attn.proj, fc1, fc2, norm1, norm2, block))
    return out


@dataclass(frozen=True)
class Readout:
    """One way the classifier reads the residual stream: ``weights @ pool(norm(x))`` (then ``fc_norm``).

    Attributes:
        norm: The norm applied per token before pooling, or ``None``.
        pool: ``"token"`` (the token at ``index``), ``"avg"`` (mean over the patch tokens,
            then ``fc_norm``) or ``"all"`` (every token is read: an attention pool's keys and
            values, CaiT's class attention).
        fc_norm: A norm after pooling (``"avg"``), or ``None``.
        layers: The linear layers reading the pooled vector (the classifier, or the pool's
            / class attention's key and value projections).
        index: The token ``"token"`` pooling reads (0: class token, 1: distillation token).
        num_prefix: Prefix tokens (left out of average pooling).
    """

    norm: nn.Module | None
    pool: str
    fc_norm: nn.Module | None
    layers: tuple[nn.Linear, ...]
    index: int = 0
    num_prefix: int = 0


def residual_scales(block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(attention branch scale, MLP branch scale)`` of a block (LayerScale ``gamma`` / ``gamma_1``, ``gamma_2``)."""
    out = []
    for ls, raw in (("ls1", "gamma_1"), ("ls2", "gamma_2")):
        g = getattr(getattr(block, ls, None), "gamma", None)
        g = g if isinstance(g, torch.Tensor) else getattr(block, raw, None)
        out.append(g.detach() if isinstance(g, torch.Tensor) else None)
    return out[0], out[1]


def readout(model: nn.Module) -> list[Readout]:
    """How the classifier side reads the residual stream (empty: unknown readout).

    ViT / DeiT / DeiT3 / BEiT / EVA: the linear head on the class token or on the average of
    the patch tokens (two readouts for distilled DeiT: class and distillation tokens). SigLIP-
    style attention pool: its key / value projection over every token. CaiT: the first
    class-attention block's key / value projections over every token. Swin: none (windows).
    """

    def on(m: nn.Module | None) -> nn.Module | None:
        return m if isinstance(m, nn.Module) and not isinstance(m, nn.Identity) else None

    name = type(model).__name__
    if name == "SwinTransformer":
        return []
    norm = on(getattr(model, "norm", None))
    pool = attention_pool(model)
    if pool is not None:
        return [Readout(norm, "all", None, (pool.kv,))]
    if name == "Cait":
        first = model.blocks_token_only[0]
        return [Readout(on(first.norm1), "all", None, (first.attn.k, first.attn.v))]
    head, gp = getattr(model, "head", None), getattr(model, "global_pool", None)
    if not isinstance(head, nn.Linear) or gp not in ("token", "avg"):
        return []
    if gp == "avg":
        return [Readout(norm, "avg", on(getattr(model, "fc_norm", None)), (head,), num_prefix=prefix_tokens(model))]
    out = [Readout(norm, "token", None, (head,), index=0)]
    dist = getattr(model, "head_dist", None)
    if isinstance(dist, nn.Linear):
        out.append(Readout(norm, "token", None, (dist,), index=1))
    return out


def head_layout(attn: nn.Module) -> tuple[int, int]:
    """``(num_heads, head_dim)`` of a (synced) timm ``Attention``."""
    return int(attn.num_heads), int(attn.head_dim)


def unit_param_costs(b: BlockLayers) -> tuple[int, int]:
    """Parameters removed with one (head, head dim) cell and with one MLP hidden dim of block ``b``.

    A cell is one q, k and v row of ``qkv`` (with their biases) and one ``proj`` column; a hidden
    dim is one ``fc1`` row (with its bias) and one ``fc2`` column (0 when the block has no
    two-layer MLP).
    """
    embed = b.qkv.in_features
    cell = 4 * embed + (3 if b.qkv.bias is not None else 0)
    if b.fc1 is None or b.fc2 is None:
        return cell, 0
    neuron = b.fc1.in_features + b.fc2.out_features + (1 if b.fc1.bias is not None else 0)
    return cell, neuron


def split_qkv(t: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """View a timm ``qkv`` weight ``[3 * H * d, C]`` (or bias ``[3 * H * d]``) as ``[3, H, d, ...]``.

    timm's fused projection stacks the q, k and v rows, each grouped head by head.
    """
    return t.view(3, num_heads, head_dim, *t.shape[1:])


def heads_per_block(model: nn.Module) -> list[int]:
    """Head count of every attention block, in order."""
    return [int(a.num_heads) for _, a in attention_modules(model)]


def prefix_tokens(model: nn.Module) -> int:
    """Leading tokens that are not patches (class, distillation, register tokens) in the pruned blocks.

    CaiT's patch blocks see patches only (its class token joins in the class-attention
    blocks); Swin has no prefix token.
    """
    if type(model).__name__ in ("Cait", "SwinTransformer"):
        return 0
    return int(getattr(model, "num_prefix_tokens", 1))


def classifier_heads(model: nn.Module) -> list[nn.Module]:
    """Classifier layers whose outputs (classes) must never be pruned (``head``, ``head_dist``)."""
    heads = []
    for attr in _CLASSIFIER_ATTRS:
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module) and any(True for _ in m.parameters()):
            heads.append(m)
    return heads


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
    for attr in (*_PREFIX_TOKEN_ATTRS, "pos_embed"):
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
        "ignored_layers": [*classifier_heads(model), *_whole_layers(model), *tables],
        "unwrapped_parameters": unwrapped,
        "customized_pruners": customized,
    }


def _lookup_heads(num_heads: Mapping[Any, int] | None, name: str, attn: Attention) -> int | None:
    if not num_heads:
        return None
    for key in (attn.qkv, attn, name):
        try:
            if key in num_heads:
                return int(num_heads[key])
        except TypeError:  # unhashable key types in exotic mappings
            continue
    return None


def _head_norm_size(norm: nn.Module) -> int | None:
    if isinstance(norm, nn.Identity):
        return None
    w = getattr(norm, "weight", None)
    if w is not None:
        return int(w.shape[-1])
    shape = getattr(norm, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def _infer_num_heads(name: str, attn: Attention, attn_dim: int) -> int:
    """Head count after tp pruning when the caller gave none; refuses to guess."""
    if attn_dim == attn.attn_dim:
        return int(attn.num_heads)
    norm_dim = _head_norm_size(attn.q_norm)
    candidates = set()
    if norm_dim and attn_dim % norm_dim == 0:
        candidates.add(attn_dim // norm_dim)
    else:
        if attn_dim % attn.head_dim == 0:  # whole heads removed
            candidates.add(attn_dim // attn.head_dim)
        if attn_dim % attn.num_heads == 0:  # head dims removed
            candidates.add(int(attn.num_heads))
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell how {name!r} was pruned (attn_dim {attn.attn_dim} -> {attn_dim}, "
            f"{attn.num_heads} heads x {attn.head_dim}); pass the head counts, e.g. "
            "sync_attention(model, pruner.num_heads)"
        )
    return candidates.pop()


def _scaled(p: nn.Parameter, factor: torch.Tensor | float) -> nn.Parameter:
    """A new parameter ``p * factor`` (never in place, so snapshots of the old tensor stay valid)."""
    return nn.Parameter(p.detach() * factor, requires_grad=p.requires_grad)


def _fold_logit_scale(attn: Attention, factor: float) -> None:
    """Multiply the attention logits by ``factor`` through the query path."""
    norm = attn.q_norm
    if isinstance(norm, nn.Identity):
        d = attn.qkv.out_features // 3
        rows = torch.ones(attn.qkv.out_features, dtype=attn.qkv.weight.dtype, device=attn.qkv.weight.device)
        rows[:d] = factor
        attn.qkv.weight = _scaled(attn.qkv.weight, rows[:, None])
        if attn.qkv.bias is not None:
            attn.qkv.bias = _scaled(attn.qkv.bias, rows)
    else:
        norm.weight = _scaled(norm.weight, factor)
        if getattr(norm, "bias", None) is not None:
            norm.bias = _scaled(norm.bias, factor)


def _check_one(name: str, attn: Attention, heads: int | None) -> int:
    """Validate one attention module's pruned layout; return its head count."""
    qkv_out, proj_in = attn.qkv.out_features, attn.proj.in_features
    if qkv_out % 3 or qkv_out // 3 != proj_in:
        raise ValueError(
            f"{name}: qkv.out_features={qkv_out} and proj.in_features={proj_in} disagree; "
            "the qkv and proj of one attention must be pruned together (use tp with "
            "vit_pruning_kwargs(model))"
        )
    attn_dim = qkv_out // 3
    if heads is None:
        heads = _infer_num_heads(name, attn, attn_dim)
    if heads < 1 or attn_dim % heads:
        raise ValueError(f"{name}: attn_dim {attn_dim} is not divisible by num_heads={heads}")
    head_dim = attn_dim // heads
    for norm_name in ("q_norm", "k_norm"):
        size = _head_norm_size(getattr(attn, norm_name))
        if size is not None and size != head_dim:
            raise ValueError(
                f"{name}.{norm_name} normalises {size} dims but heads now have {head_dim}; "
                "prune with tpv.ViTPruner or with tp + vit_pruning_kwargs(model)"
            )
    gate = getattr(attn, "gate", None)
    if isinstance(gate, nn.Linear) and gate.out_features != attn_dim:
        raise ValueError(f"{name}.gate has {gate.out_features} outputs, expected {attn_dim}")
    size = _head_norm_size(getattr(attn, "norm", nn.Identity()))  # EVA's scale_norm over the heads' output
    if size is not None and size != attn_dim:
        raise ValueError(f"{name}.norm normalises {size} dims, expected {attn_dim}; prune with tpv.ViTPruner")
    for mixer in head_mixers(attn):
        if mixer.in_features != heads or mixer.out_features != heads:
            raise ValueError(
                f"{name}: a talking-heads mixer is [{mixer.out_features}, {mixer.in_features}] but the module now has "
                f"{heads} heads; remove heads of CaiT with tpv.ViTPruner, which prunes the mixers too"
            )
    for table in head_tables(attn):
        if table.shape[-1] != heads:
            raise ValueError(
                f"{name}.relative_position_bias_table has {table.shape[-1]} head columns but the module now has "
                f"{heads} heads; remove heads of BEiT-style models with tpv.ViTPruner, which prunes the table too"
            )
    if head_dim != attn.head_dim and not isinstance(attn.q_norm, nn.Identity):
        if getattr(attn.q_norm, "weight", None) is None:
            raise ValueError(
                f"{name}.q_norm has no affine weight, so the logit scale cannot be preserved "
                "after head-dim pruning; prune whole heads only"
            )
    return heads


def _apply_one(attn: Attention, heads: int) -> None:
    attn_dim = attn.qkv.out_features // 3
    head_dim = attn_dim // heads
    new_scale = head_dim**-0.5
    # Fused SDPA always uses 1/sqrt(head_dim); keep the logits the model was trained with
    # by folding old_scale/new_scale into the query path, then use the SDPA scale everywhere.
    factor = float(attn.scale) / new_scale
    if not math.isclose(factor, 1.0, rel_tol=1e-7):
        _fold_logit_scale(attn, factor)
    attn.num_heads = heads
    attn.head_dim = head_dim
    attn.attn_dim = attn_dim
    attn.scale = new_scale


def sync_attention(model: nn.Module, num_heads: Mapping[Any, int] | None = None) -> nn.Module:
    """Make every timm ``Attention`` consistent with its (possibly pruned) ``qkv`` / ``proj``.

    Sets ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale`` so that
    ``num_heads * head_dim == attn_dim == qkv.out_features // 3``. Fused (SDPA) attention
    always scales logits by ``1/sqrt(head_dim)`` of the *current* head width; when head dims
    were pruned the original scale is folded into the query projection (or the affine
    ``q_norm``) so that both paths compute exactly what the unpruned model computed with the
    same dims zeroed. Also refreshes ``model.embed_dim`` / ``num_features`` after
    embedding-dim pruning. Idempotent.

    Args:
        model: A timm ViT-family model, pruned by tp or not.
        num_heads: Head counts after pruning, keyed by ``attn.qkv``, the ``Attention`` module
            or its qualified name — e.g. ``pruner.num_heads``. Without it the count is
            inferred where unambiguous (pure head removal or pure head-dim removal).

    Returns:
        ``model`` (modified in place).

    Raises:
        TypeError: No timm ``Attention`` in ``model``.
        ValueError: Inconsistent shapes or an ambiguous layout; nothing is changed then.
    """
    attns = attention_modules(model)
    # validate every module before touching any, so a bad layout changes nothing
    plan = [(attn, _check_one(name, attn, _lookup_heads(num_heads, name, attn))) for name, attn in attns]
    if has_rope(model):
        for (name, attn), (_, heads) in zip(attns, plan):
            dims = getattr(attn, "rope_dims", None)
            expected = len(dims) if dims is not None else attn.head_dim
            if (attn.qkv.out_features // 3) // heads != expected:
                raise ValueError(
                    f"{name}: head dims were pruned without recording which rotary dims are left (the model's "
                    "rotary embedding rotates dims in pairs); prune head dims of rotary models with tpv.ViTPruner"
                )
    for attn, heads in plan:
        _apply_one(attn, heads)
    _sync_model_dims(model)
    return model


def _sync_model_dims(model: nn.Module) -> None:
    if fixed_residual(model) is not None:  # the residual stream kept its width (and Swin's widths vary by stage)
        return
    norm = getattr(model, "norm", None)
    dim = _head_norm_size(norm) if isinstance(norm, nn.Module) else None
    if dim is None:
        patch = getattr(getattr(model, "patch_embed", None), "proj", None)
        dim = getattr(patch, "out_channels", None)
    if dim is None:
        return
    for attr in ("embed_dim", "num_features", "head_hidden_size"):
        if isinstance(getattr(model, attr, None), int):
            setattr(model, attr, int(dim))


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[list[tuple[str, Attention]]]:
    """Force the eager (non-SDPA) attention path inside the block; restore ``fused_attn`` after.

    Yields:
        The model's ``[(name, Attention)]`` list.
    """
    attns = attention_modules(model)
    with fused_attn_off(a for _, a in attns):
        yield attns


class AttentionMaps:
    """Attention probabilities captured by :func:`attention_maps`.

    ``maps[i]`` is block ``i``'s ``[B, H, N, N]`` probability tensor from the latest forward
    (``None`` until that block ran). ``names[i]`` is the block's attention module name.
    """

    def __init__(self, names: list[str], store: bool, callback: Callable[[int, torch.Tensor], None] | None):
        self.names = names
        self.maps: list[torch.Tensor | None] = [None] * len(names)
        self._store = store
        self._callback = callback

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        return self.maps[i]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter(self.maps)

    def _hook(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        probs = args[0].detach()  # attn_drop's input: softmax probabilities, before dropout
        if self._store:
            self.maps[index] = probs
        if self._callback is not None:
            self._callback(index, probs)


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

        with tpv.attention_maps(model) as maps:
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
    handles = []
    with eager_attention(model) as attns:
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
