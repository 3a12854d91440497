"""After any tp step: :func:`sync_attention` makes every attention consistent with its pruned layers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import Attention
from torch import nn

from .families import (
    has_rope,
    head_mixers,
    head_tables,
)
from .structure import attention_modules
from .support import fixed_residual


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
    plan = check_layouts(attns, num_heads)  # every module validated before any is touched
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


def check_layouts(attns: list[tuple[str, Attention]], num_heads: Mapping[Any, int] | None) -> list[tuple[Attention, int]]:
    """``[(attention, head count)]`` after validating every module's pruned layout (nothing changed).

    Raises:
        ValueError: Inconsistent shapes or an ambiguous layout.
    """
    return [(attn, _check_one(name, attn, _lookup_heads(num_heads, name, attn))) for name, attn in attns]


def apply_layouts(plan: list[tuple[Attention, int]]) -> None:
    """Set head count, head width, attention width and logit scale of each validated attention (see :func:`sync_attention`)."""
    for attn, heads in plan:
        _apply_one(attn, heads)


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
