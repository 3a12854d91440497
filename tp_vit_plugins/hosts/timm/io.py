"""Saving and rebuilding pruned timm ViTs: the timm host's side of :func:`tp_vit_plugins.save_pruned` / ``load_pruned``.

:func:`save_spec` describes a model by its allow-listed timm class, the structural constructor
kwargs and every pruned dimension; :func:`rebuild` builds that skeleton (never unpickling
anything), resizes every tensor and module attribute to the saved shapes, restores each
attention's ``num_heads`` / ``head_dim`` / ``scale`` and loads the weights strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import LayerScale, SwiGLU
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..base import restore_shapes
from .families import convert_attention
from .structure import attention_modules
from .support import ATTENTION_TYPES, attention_pool
from .sync import _sync_model_dims

__all__ = ["save_spec", "rebuild", "CLASSES"]

#: The timm classes a spec may name.
CLASSES: dict[str, type[nn.Module]] = {
    "VisionTransformer": VisionTransformer,
    "VisionTransformerDistilled": VisionTransformerDistilled,
    "Beit": Beit,
    "Eva": Eva,
    "Cait": Cait,
    "SwinTransformer": SwinTransformer,
}
_CLASSES = CLASSES
#: Key prefix of saved non-persistent buffers (EVA's rotary embedding tables, which depend on
#: constructor options the model does not keep, e.g. ``ref_feat_shape``).
_BUFFER_PREFIX = "__buffer__."


def _is_on(m: Any) -> bool:
    return isinstance(m, nn.Module) and not isinstance(m, nn.Identity)


def _check_norm(norm: nn.Module, expected_eps: float = 1e-6) -> None:
    eps = getattr(norm, "eps", expected_eps)
    if not isinstance(norm, nn.LayerNorm) or abs(eps - expected_eps) > 1e-12:
        raise NotImplementedError(
            f"save_pruned supports the family's default LayerNorm(eps={expected_eps}) norms, got {type(norm).__name__}(eps={eps})"
        )


def _stem_kwargs(model: nn.Module) -> dict[str, Any]:
    """Constructor kwargs every family shares: image and patch size, channels, classes, pooling, embedding width."""
    pe = model.patch_embed
    return {
        "img_size": list(pe.img_size) if pe.img_size is not None else None,
        "patch_size": list(pe.patch_size),
        "in_chans": int(pe.proj.in_channels),
        "num_classes": int(model.num_classes),
        "global_pool": model.global_pool,
        "embed_dim": int(pe.proj.out_channels),
    }


def _common_kwargs(model: nn.Module) -> dict[str, Any]:
    norm = model.norm if _is_on(model.norm) else model.fc_norm
    _check_norm(norm)
    if getattr(model, "attn_pool", None) is not None:
        raise NotImplementedError(f"save_pruned does not support {type(model).__name__} with an attention-pool head")
    return {
        **_stem_kwargs(model),
        "depth": len(model.blocks),
        "mlp_ratio": 1.0,
        "use_fc_norm": _is_on(model.fc_norm),
    }


def _mlp_kwargs(blk: nn.Module) -> dict[str, Any]:
    if isinstance(blk.mlp, SwiGLU):
        return {"swiglu_mlp": True, "scale_mlp": _is_on(blk.mlp.norm)}
    if type(blk.mlp).__name__ != "Mlp" or not isinstance(getattr(blk.mlp, "act", None), nn.GELU):
        raise NotImplementedError(f"save_pruned supports Mlp with GELU or SwiGLU, got {type(blk.mlp).__name__}")
    return {"swiglu_mlp": False, "scale_mlp": _is_on(getattr(blk.mlp, "norm", None))}


def _beit_kwargs(model: nn.Module) -> dict[str, Any]:
    blk = model.blocks[0]
    return {
        **_common_kwargs(model),
        **_mlp_kwargs(blk),
        "num_heads": 1,  # per-block layouts come from the spec
        "qkv_bias": blk.attn.qkv.bias is not None,
        "init_values": 1.0 if blk.gamma_1 is not None else None,
        "use_abs_pos_emb": model.pos_embed is not None,
        "use_rel_pos_bias": blk.attn.relative_position_bias_table is not None,
    }


def _eva_kwargs(model: nn.Module) -> dict[str, Any]:
    blk = model.blocks[0]
    if type(blk).__name__ != "EvaBlock":
        raise NotImplementedError(f"save_pruned supports EVA with EvaBlock blocks, got {type(blk).__name__}")
    rope = getattr(model, "rope", None)
    if rope is not None and type(rope).__name__ != "RotaryEmbeddingCat":
        raise NotImplementedError(f"save_pruned supports EVA's 'cat' rotary embedding, got {type(rope).__name__}")
    if not isinstance(model.norm, nn.Identity) and _is_on(model.fc_norm):
        raise NotImplementedError("save_pruned does not support EVA with both a final norm and an fc_norm")
    common = _common_kwargs(model)
    if rope is not None:  # the rotary embedding is built for embed_dim // num_heads; shapes are resized after
        common["embed_dim"] = int(getattr(rope, "dim", blk.attn.head_dim))  # the unpruned head width
    return {
        **common,
        **_mlp_kwargs(blk),
        "num_heads": 1,
        "qkv_bias": blk.attn.qkv.bias is not None,
        "qk_norm": _is_on(blk.attn.q_norm),
        "scale_attn_inner": _is_on(blk.attn.norm),
        "init_values": 1.0 if blk.gamma_1 is not None else None,
        "class_token": model.cls_token is not None,
        "num_reg_tokens": int(getattr(model, "num_reg_tokens", 0) or 0),
        "no_embed_class": bool(model.no_embed_class),
        "use_abs_pos_emb": model.pos_embed is not None,
        "use_rot_pos_emb": rope is not None,
        "dynamic_img_size": bool(model.dynamic_img_size),
    }


def _cait_kwargs(model: nn.Module) -> dict[str, Any]:
    blk = model.blocks[0]
    _check_norm(model.norm)
    _mlp_kwargs(blk)  # refuses MLP variants
    return {
        **_stem_kwargs(model),
        "depth": len(model.blocks),
        "num_heads": 1,  # per-block layouts (and the class attention's heads) come from the spec
        "mlp_ratio": 1.0,
        "qkv_bias": blk.attn.qkv.bias is not None,
        "depth_token_only": len(model.blocks_token_only),
        "mlp_ratio_token_only": 1.0,
    }


def _swin_kwargs(model: nn.Module) -> dict[str, Any]:
    _check_norm(model.norm, 1e-5)  # Swin's default nn.LayerNorm
    blocks = [b for stage in model.layers for b in stage.blocks]
    _mlp_kwargs(blocks[0])
    return {
        **_stem_kwargs(model),
        "depths": [len(stage.blocks) for stage in model.layers],
        "num_heads": [1] * len(model.layers),  # per-block layouts come from the spec
        "window_size": list(model._ref_window_sizes),
        "always_partition": bool(getattr(blocks[0], "always_partition", False)),
        "strict_img_size": not model.dynamic_img_size,
        "mlp_ratio": 1.0,
        "qkv_bias": blocks[0].attn.qkv.bias is not None,
    }


def _extra_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Non-persistent buffers whose values the constructor options alone do not fix (EVA's rope tables)."""
    rope = getattr(model, "rope", None)
    if not isinstance(rope, nn.Module):
        return {}
    return {f"rope.{n}": b for n, b in rope.named_buffers() if n in rope._non_persistent_buffers_set}


def _structural_kwargs(model: nn.Module) -> dict[str, Any]:
    """Constructor kwargs that reproduce ``model``'s module tree (dims are resized later)."""
    if isinstance(model, Beit):
        return _beit_kwargs(model)
    if isinstance(model, Eva):
        return _eva_kwargs(model)
    if isinstance(model, Cait):
        return _cait_kwargs(model)
    if isinstance(model, SwinTransformer):
        return _swin_kwargs(model)
    blk = model.blocks[0]
    _check_norm(model.norm if _is_on(model.norm) else model.fc_norm)
    act = getattr(blk.mlp, "act", None)
    if not isinstance(act, nn.GELU) or type(blk.mlp).__name__ != "Mlp":
        raise NotImplementedError("save_pruned supports the default Mlp with GELU")
    return {
        **_stem_kwargs(model),
        "depth": len(model.blocks),
        "num_heads": 1,  # any divisor works: per-block layouts come from the spec
        "mlp_ratio": 1.0,
        "qkv_bias": blk.attn.qkv.bias is not None,
        "proj_bias": blk.attn.proj.bias is not None,
        "qk_norm": _is_on(blk.attn.q_norm),
        "init_values": 1.0 if isinstance(blk.ls1, LayerScale) else None,
        "class_token": model.cls_token is not None,
        "reg_tokens": int(getattr(model, "num_reg_tokens", 0)),
        "no_embed_class": bool(model.no_embed_class),
        "pos_embed": "learn" if model.pos_embed is not None else "none",
        "pre_norm": _is_on(model.norm_pre),
        "final_norm": _is_on(model.norm) or _is_on(model.fc_norm),
        "fc_norm": _is_on(model.fc_norm),
        "dynamic_img_size": bool(model.dynamic_img_size),
    }


def save_spec(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(spec, tensors)`` of a (pruned) timm ViT (EVA / BEiT / CaiT / Swin in the converted layout).

    Raises:
        TypeError: ``model`` is not one of :data:`CLASSES` (exactly).
        ValueError: An attention module is out of sync with its weights.
        NotImplementedError: A layer variant the spec cannot describe (custom norm/MLP).
    """
    cls_name = type(model).__name__
    if _CLASSES.get(cls_name) is not type(model):
        raise TypeError(f"save_pruned supports {sorted(_CLASSES)} from timm, got {type(model).__qualname__}")
    attns = {}
    convert_attention(model)  # EVA / BEiT: the saved layout is the converted one (exact)
    for name, a in attention_modules(model):
        if a.num_heads * a.head_dim != a.attn_dim or a.attn_dim != a.qkv.out_features // 3:
            raise ValueError(f"{name} is out of sync with its qkv weights; call tpv.sync_attention(model) first")
        attns[name] = {"num_heads": int(a.num_heads), "head_dim": int(a.head_dim), "scale": float(a.scale)}
        if getattr(a, "rope_dims", None) is not None:  # EVA: the rotary dims a head-dim-pruned attention kept
            attns[name]["rope_dims"] = [int(j) for j in a.rope_dims]
    pool = attention_pool(model)
    pool_layout = None
    if pool is not None:
        pool_layout = {"num_heads": int(pool.num_heads), "head_dim": int(pool.head_dim), "scale": float(pool.scale),
                       "latent_len": int(pool.latent_len), "latent_dim": int(pool.latent_dim)}  # fmt: skip
    norms = {
        n: list(m.normalized_shape) for n, m in model.named_modules() if isinstance(getattr(m, "normalized_shape", None), tuple)
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    extra = {_BUFFER_PREFIX + k: v.detach().cpu().contiguous() for k, v in _extra_buffers(model).items()}
    spec = {
        "class": cls_name,
        "architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
        "kwargs": _structural_kwargs(model),
        "attention": attns,
        "attn_pool": pool_layout,
        "whole_attention": {n: int(m.num_heads) for n, m in model.named_modules() if type(m).__name__ == "ClassAttn"},
        "norms": norms,
        "shapes": {k: list(v.shape) for k, v in state.items()},
    }
    return spec, {**state, **extra}


def rebuild(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The model of ``spec`` with ``state`` loaded strictly, in eval mode.

    Raises:
        ValueError: Unknown class, a damaged spec, or tensors that do not match it.
    """
    cls = _CLASSES.get(spec.get("class"))
    if cls is None:
        raise ValueError(f"class {spec.get('class')!r} is not one of {sorted(_CLASSES)}")
    missing = [k for k in ("kwargs", "shapes", "attention", "norms") if k not in spec]
    if missing:
        raise ValueError(f"the spec lacks {', '.join(missing)}; re-save the model with tpv.save_pruned")
    state = dict(state)
    extra = {k[len(_BUFFER_PREFIX) :]: state.pop(k) for k in [k for k in state if k.startswith(_BUFFER_PREFIX)]}
    if {k: list(v.shape) for k, v in state.items()} != spec["shapes"]:
        raise ValueError("the weights file does not match the shapes recorded in the spec")
    kwargs = dict(spec["kwargs"])
    for key in ("img_size", "patch_size", "window_size", "depths", "num_heads"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    model = convert_attention(cls(**kwargs))
    restore_shapes(model, state, spec["norms"], spec["attention"], ATTENTION_TYPES)
    for name, layout in spec["attention"].items():
        if "rope_dims" in layout:  # EVA: the rotary dims a head-dim-pruned attention kept
            model.get_submodule(name).rope_dims = [int(j) for j in layout["rope_dims"]]
    layout = spec.get("attn_pool")
    if layout is not None:
        pool = attention_pool(model)
        if pool is None:
            raise ValueError("the spec describes an attention pool but the rebuilt model has none")
        for key in ("num_heads", "head_dim", "latent_len", "latent_dim"):
            setattr(pool, key, int(layout[key]))
        pool.scale = float(layout["scale"])
    for name, heads in (spec.get("whole_attention") or {}).items():
        model.get_submodule(name).num_heads = int(heads)
    for key, tensor in extra.items():
        mod_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(mod_name)
        if attr not in owner._buffers:
            raise ValueError(f"saved buffer {key!r} has no counterpart in the rebuilt model")
        owner._buffers[attr] = tensor
    _sync_model_dims(model)
    model.load_state_dict(state, strict=True)
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, architecture=spec.get("architecture"))
    return model.eval()
