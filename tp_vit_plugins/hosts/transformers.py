"""The transformers adapter: Hugging Face ViT, DeiT and DINOv2 image models in a form the pruners keep consistent.

transformers 5.x computes self-attention with separate ``q_proj`` / ``k_proj`` / ``v_proj`` and an
``o_proj``, reshaping by ``head_dim``. :func:`convert` replaces, in place and exactly, every such
attention module by :class:`PrunableHFAttention` — a ``timm.layers.Attention`` subclass with one
fused ``qkv`` (``[q; k; v]`` rows) and ``proj = o_proj``, called like the transformers module (it
returns ``(output, None)``) — so the library's tp glue, head counts, attention capture and
logit-scale bookkeeping apply unchanged. The rest of the model (embeddings, LayerScale, norms,
classifiers) stays the transformers model's own.

Only this module reads transformers' internals; ``import tp_vit_plugins`` never imports
transformers (a model is recognised by its class's module).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from timm.layers import Attention
from torch import nn

__all__ = [
    "SUPPORTED",
    "PrunableHFAttention",
    "is_transformers_model",
    "check_transformers",
    "convert",
    "backbone",
    "encoder_layers",
    "prefix_tokens",
    "classifier_heads",
    "unwrapped_parameters",
    "fixed_residual",
    "output_logits",
    "save_spec",
    "rebuild",
    "apply_layouts",
]

#: Supported transformers classes (model classes, by name).
SUPPORTED = (
    "ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher", "Dinov2Model", "Dinov2ForImageClassification",
    "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification",
)  # fmt: skip
_ATTENTIONS = ("ViTAttention", "DeiTAttention", "Dinov2Attention", "Dinov2WithRegistersAttention")
_BACKBONES = ("vit", "deit", "dinov2", "dinov2_with_registers")
_CLASSIFIERS = ("classifier", "cls_classifier", "distillation_classifier")


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` comes from the ``transformers`` package (without importing it)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def check_transformers(model: nn.Module) -> None:
    """Refuse a transformers model this adapter does not cover (before anything changes).

    Raises:
        TypeError: (``UnsupportedModelError``) the class is not in :data:`SUPPORTED`.
    """
    from .timm.support import UnsupportedModelError

    name = type(model).__name__
    if name not in SUPPORTED:
        raise UnsupportedModelError(
            f"transformers' {name} is not supported; supported: {', '.join(SUPPORTED)}. Nothing was changed."
        )
    for m in model.modules():
        kind = type(m).__name__
        if kind.endswith("Attention") and kind not in (*_ATTENTIONS, "PrunableHFAttention") and "Self" not in kind:
            raise UnsupportedModelError(f"{name} contains a {kind}, which this adapter does not convert. Nothing was changed.")


class PrunableHFAttention(Attention):
    """A transformers ViT / DeiT / DINOv2 self-attention as timm's ``Attention`` (fused ``qkv``), called like the original.

    ``forward(hidden_states [B, N, C], attention_mask=None, **kwargs) -> (out [B, N, C], None)``.
    The attention path is fused (SDPA) unless the model was set to ``attn_implementation="eager"``
    when converted; ``fused_attn`` switches it afterwards (the library's attention capture does).
    """

    def __init__(self, hf: nn.Module) -> None:
        nn.Module.__init__(self)
        heads = int(getattr(hf, "num_attention_heads", None) or hf.config.num_attention_heads)
        head_dim = int(hf.head_dim)
        q, k, v = hf.q_proj, hf.k_proj, hf.v_proj
        self.num_heads, self.head_dim, self.attn_dim = heads, head_dim, heads * head_dim
        self.scale = float(hf.scaling)
        impl = getattr(getattr(hf, "config", None), "_attn_implementation", None)
        self.fused_attn = impl != "eager"
        self.qkv = nn.Linear(
            q.in_features, 3 * self.attn_dim, bias=q.bias is not None, device=q.weight.device, dtype=q.weight.dtype
        )
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            if q.bias is not None:
                self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.q_norm, self.k_norm, self.norm = nn.Identity(), nn.Identity(), nn.Identity()
        self.gate = None
        self.attn_drop = nn.Dropout(float(getattr(hf, "attention_dropout", 0.0)))
        self.proj = hf.o_proj
        self.proj_drop = nn.Dropout(0.0)

    def forward(  # type: ignore[override]
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object
    ) -> tuple[torch.Tensor, None]:
        return Attention.forward(self, hidden_states, attn_mask=attention_mask), None


def backbone(model: nn.Module) -> nn.Module:
    """The ``*Model`` inside a ``*ForImageClassification`` (or the model itself)."""
    for attr in _BACKBONES:
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return inner
    return model


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers in forward order (``layers`` or ``encoder.layer``)."""
    b = backbone(model)
    layers = getattr(b, "layers", None)
    if layers is None:
        layers = getattr(getattr(b, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: no transformer layers found (layers / encoder.layer)")
    return list(layers)


def convert(model: nn.Module) -> nn.Module:
    """Replace every supported attention module by :class:`PrunableHFAttention`, in place (exact, idempotent)."""
    for layer in encoder_layers(model):
        att = getattr(layer, "attention", None)
        if type(att).__name__ in _ATTENTIONS:
            layer.attention = PrunableHFAttention(att)
    return model


def prefix_tokens(model: nn.Module) -> int:
    """Class, distillation and register tokens in front of the patch tokens."""
    emb = backbone(model).embeddings
    n = 1 + int(isinstance(getattr(emb, "distillation_token", None), nn.Parameter))
    reg = getattr(emb, "register_tokens", None)
    return n + (int(reg.shape[1]) if isinstance(reg, nn.Parameter) else 0)


def classifier_heads(model: nn.Module) -> list[nn.Module]:
    """Classifier layers whose outputs (classes) are never pruned."""
    return [m for a in _CLASSIFIERS if isinstance(m := getattr(model, a, None), nn.Linear)]


def unwrapped_parameters(model: nn.Module) -> Iterator[tuple[nn.Parameter, int]]:
    """Parameters tp cannot trace, with their embedding axis: tokens, position embeddings, LayerScale ``lambda1``."""
    emb = backbone(model).embeddings
    for attr in ("cls_token", "distillation_token", "register_tokens", "mask_token", "position_embeddings"):
        p = getattr(emb, attr, None)
        if isinstance(p, nn.Parameter):
            yield p, p.dim() - 1
    for layer in encoder_layers(model):
        for attr in ("layer_scale1", "layer_scale2"):
            p = getattr(getattr(layer, attr, None), "lambda1", None)
            if isinstance(p, nn.Parameter):
                yield p, 0


def fixed_residual(model: nn.Module) -> str | None:
    """Why the residual stream keeps its width: the embedding width is not pruned on transformers models yet."""
    return (
        f"{type(model).__name__} is a transformers model: its embedding width is kept (its config, position "
        "embeddings and DINOv2's [cls, mean] classifier read the full width)"
    )


def output_logits(output: object) -> torch.Tensor:
    """The tensor tp traces: ``logits`` of a ``ModelOutput``, else its ``last_hidden_state``."""
    for attr in ("logits", "last_hidden_state"):
        t = getattr(output, attr, None)
        if isinstance(t, torch.Tensor):
            return t
    return output  # type: ignore[return-value]


def save_spec(model: nn.Module) -> dict:
    """What rebuilds a (pruned) transformers model: its class, its own config, every attention's layout."""
    from .timm.structure import attention_modules

    attns = {}
    for name, a in attention_modules(model):
        if a.num_heads * a.head_dim != a.attn_dim or a.attn_dim != a.qkv.out_features // 3:
            raise ValueError(f"{name} is out of sync with its qkv weights; call tpv.sync_attention(model) first")
        attns[name] = {"num_heads": int(a.num_heads), "head_dim": int(a.head_dim), "scale": float(a.scale),
                       "fused_attn": bool(a.fused_attn)}  # fmt: skip
    return {"host": "transformers", "class": type(model).__name__, "config": model.config.to_dict(), "attention": attns}


def rebuild(spec: dict) -> nn.Module:
    """An unpruned model of ``spec``'s class and config, its attention converted (weights not loaded).

    Raises:
        ValueError: The class is not a supported transformers class.
    """
    import transformers

    name = spec.get("class")
    if name not in SUPPORTED:
        raise ValueError(f"class {name!r} is not one of the supported transformers classes {SUPPORTED}")
    cls = getattr(transformers, name)
    config = cls.config_class.from_dict(spec["config"])
    return convert(cls(config))


def apply_layouts(model: nn.Module, layouts: dict[str, dict]) -> None:
    """Set every converted attention's head count, head width, scale and path from a saved spec."""
    for name, layout in layouts.items():
        attn = model.get_submodule(name)
        if not isinstance(attn, PrunableHFAttention):
            raise ValueError(f"{name} is not a converted transformers attention in the rebuilt model")
        attn.num_heads, attn.head_dim = int(layout["num_heads"]), int(layout["head_dim"])
        attn.attn_dim, attn.scale = attn.num_heads * attn.head_dim, float(layout["scale"])
        attn.fused_attn = bool(layout.get("fused_attn", True))
