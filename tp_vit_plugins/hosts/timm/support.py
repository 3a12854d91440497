"""Which timm models this library prunes, and the parts that must stay whole.

The support policy: :func:`check_supported` refuses, before anything changes, a model the
pruners cannot keep consistent (the support matrix in the README); :func:`attention_pool`,
:func:`whole_parts` and :func:`fixed_residual` name the modules left whole.
"""

from __future__ import annotations

from timm.layers import Attention
from torch import nn

from ..base import UnsupportedModelError
from .families import (
    FAMILY_ATTENTIONS,
    PrunableBeitAttention,
    PrunableEvaAttention,
    PrunableTalkingHeadAttn,
    PrunableWindowAttention,
)

#: Attention classes the pruners keep consistent (after :func:`~.families.convert_attention`).
ATTENTION_TYPES = (
    Attention, PrunableEvaAttention, PrunableBeitAttention, PrunableTalkingHeadAttn, PrunableWindowAttention,
)  # fmt: skip


#: timm model classes besides ``VisionTransformer`` whose attention is converted and pruned.
_CONVERTED_FAMILIES = ("Eva", "Beit", "Cait", "SwinTransformer")


#: Modules left whole (never pruned), which need the residual stream at its full width:
#: CaiT's class attention, Swin's patch merging (2 x 2 neighbours concatenated).
_WHOLE_ATTENTIONS = ("ClassAttn", "PatchMerging")


#: Why a timm family is refused, by model class name (the support matrix in the README).
_UNSUPPORTED_FAMILIES = {
    "SwinTransformerV2": "Swin V2 (window attention, per-stage heads)",
    "VisionTransformerRelPos": "vit_relpos (relative position attention)",
    "PoolingVisionTransformer": "PiT (token pooling between stages)",
}


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


def whole_layers(model: nn.Module) -> list[nn.Module]:
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


def is_supported(model: nn.Module) -> bool:
    """:func:`check_supported` as a bool: ``True`` when it passes and ``model`` has attention blocks (nothing changes)."""
    try:
        check_supported(model)
    except TypeError:
        return False
    return any(isinstance(m, (*ATTENTION_TYPES, *FAMILY_ATTENTIONS)) for m in model.modules())


def plain_vit_difference(model: nn.Module) -> str | None:
    """Why ``model`` is not a plain, unpruned timm ViT another library's ViT can mirror (``None``: it is one).

    Plain: timm's own ``VisionTransformer`` class with one class token read by a linear head, the
    class token inside the position embedding, fixed image size, pre-norm ``Block`` / ``Mlp`` with
    exact GELU, no LayerScale, q/k norm, MLP norm, pre-blocks norm, fc_norm or attention pool,
    LayerNorm everywhere with one eps, and every block of the same widths with
    ``num_heads * head_dim`` equal to the residual width. The answer completes "this one ...".
    """
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block, VisionTransformer

    if type(model) is not VisionTransformer:
        return f"is a {type(model).__name__}"
    blocks = list(model.blocks)
    if getattr(model, "cls_token", None) is None or getattr(model, "num_prefix_tokens", 1) != 1:
        return "has no class token, or extra prefix tokens (registers, distillation)"
    if getattr(model, "global_pool", None) != "token" or not isinstance(model.head, nn.Linear):
        return "does not classify the class token with a linear head"
    if getattr(model, "no_embed_class", False) or getattr(model, "dynamic_img_size", False):
        return "keeps the class token out of the position embedding or has dynamic image sizes"
    plain = (nn.Identity,)
    if not isinstance(model.fc_norm, plain) or not isinstance(model.norm_pre, plain) or not isinstance(model.norm, nn.LayerNorm):
        return "has a norm before the blocks or after pooling, or no final LayerNorm"
    if getattr(model, "attn_pool", None) is not None:
        return "pools with attention"
    if any(type(blk) is not Block or type(blk.mlp) is not Mlp for blk in blocks):
        return "has another block or MLP type than timm's Block and Mlp (e.g. SwiGLU)"
    width, heads, hidden = model.embed_dim, blocks[0].attn.num_heads, blocks[0].mlp.fc1.out_features
    for blk in blocks:
        attn, mlp = blk.attn, blk.mlp
        if not all(isinstance(m, plain) for m in (blk.ls1, blk.ls2, attn.q_norm, attn.k_norm, attn.norm)):
            return "has LayerScale or q/k norm"
        if type(mlp.act) is not nn.GELU or mlp.act.approximate != "none" or not isinstance(mlp.norm, plain):
            return "uses another MLP activation than exact GELU, or an MLP norm"
        if attn.num_heads != heads or attn.qkv.out_features != 3 * width or mlp.fc1.out_features != hidden:
            return ("has blocks of different widths or fewer attention channels than the residual width (a pruned "
                    "model a config cannot describe): convert the dense model, then prune")  # fmt: skip
        if any(not isinstance(n, nn.LayerNorm) or n.eps != model.norm.eps for n in (blk.norm1, blk.norm2)):
            return "has block norms other than LayerNorm with the final norm's eps"
    return None
