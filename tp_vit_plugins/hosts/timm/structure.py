"""The structure of a timm ViT the methods read: attention modules, block layers, head layouts.

:func:`attention_modules` (converting EVA / BEiT / CaiT attention in place first, see
:mod:`.families`), :func:`block_layers` (qkv / proj / fc1 / fc2 per block), :func:`readout`
(what the classifier reads), :func:`head_layout`, :func:`prefix_tokens`.
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from torch import nn

from ..base import BlockLayers, Readout, split_qkv, unit_param_costs  # noqa: F401 (re-exported: their old place)
from .families import (
    convert_attention,
)
from .support import ATTENTION_TYPES, attention_pool, check_supported

PREFIX_TOKEN_ATTRS = ("cls_token", "dist_token", "reg_token")


_CLASSIFIER_ATTRS = ("head", "head_dist")


def attention_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    """All timm ``Attention`` modules of ``model`` in forward (registration) order.

    EVA / EVA02 and BEiT attention modules are first converted in place to this library's
    subclasses (:func:`~tp_vit_plugins.hosts.timm.families.convert_attention`: exact, idempotent;
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


def block_layers(model: nn.Module) -> list[BlockLayers]:
    """Every block's attention and MLP layers, in forward order.

    Raises:
        TypeError: No timm ``Attention`` in ``model``.
    """
    attns = attention_modules(model)
    owners = {}
    for m in model.modules():
        for child in m.children():  # block.attn
            if isinstance(child, ATTENTION_TYPES):
                owners[child] = m
    out = []
    for name, attn in attns:
        block = owners.get(attn)
        mlp = getattr(block, "mlp", None)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        fc2 = fc2 if isinstance(fc2, nn.Linear) else None
        fc1 = fc1 if isinstance(fc1, nn.Linear) and fc2 is not None else None
        norm1, norm2 = (m if isinstance(m := getattr(block, n, None), nn.Module) else None for n in ("norm1", "norm2"))
        out.append(BlockLayers(name, attn, attn.qkv, attn.proj, fc1, fc2, norm1, norm2, block))
    return out


def residual_scales(block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(attention branch scale, MLP branch scale)`` of a block (LayerScale ``gamma``, ``gamma_1``, ``lambda1``; or ``None``)."""
    out = []
    for ls, raw, hf_ls in (("ls1", "gamma_1", "layer_scale1"), ("ls2", "gamma_2", "layer_scale2")):
        g = getattr(getattr(block, ls, None), "gamma", None)
        g = g if isinstance(g, torch.Tensor) else getattr(block, raw, None)
        g = g if isinstance(g, torch.Tensor) else getattr(getattr(block, hf_ls, None), "lambda1", None)  # DINOv2
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


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """Layers that exist only on the residual stream: the patch projection and the final norms (with weights)."""
    mods = []
    patch = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(patch, nn.Module):
        mods.append(patch)
    for attr in ("norm", "fc_norm"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module) and any(True for _ in m.parameters()):
            mods.append(m)
    return mods
