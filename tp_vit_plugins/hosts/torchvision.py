"""The torchvision host: ``torchvision.models.VisionTransformer`` (``vit_b_16`` & co.).

torchvision computes self-attention with ``nn.MultiheadAttention``, whose inner width is tied to
the residual width (``embed_dim``) and whose heads all share it: it cannot hold fewer heads or
narrower heads than the model's width allows. So this host **converts** every encoder layer's
``self_attention`` exactly into :class:`PrunableMHAttention` — timm's ``Attention`` with a
``qkv`` Linear (``in_proj_weight`` rows) and ``proj = out_proj``, called like the original
(``(x, x, x, need_weights=False) -> (out, None)``) — on first structural use (the conversion is
the one change a read-only call makes here, and it changes no output). Everything else stays
torchvision's: the ``conv_proj`` patch embedding, ``class_token``, ``encoder.pos_embedding``,
``EncoderBlock`` norms and ``MLPBlock``, the ``heads``.

Recognised by the class's module; ``import tp_vit_plugins`` never imports torchvision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from timm.layers import Attention
from torch import nn

from .base import BlockHalves, BlockLayers, Host, Readout, UnsupportedModelError, fused_attn_off, restore_shapes
from .timm import attention as timm_attention
from .timm import blocks as timm_blocks
from .timm import sync as timm_sync

__all__ = ["TorchvisionHost", "PrunableMHAttention", "MHACall", "convert", "from_timm"]

_MODEL = "VisionTransformer"
_BLOCK = "EncoderBlock"


class PrunableMHAttention(Attention):
    """A torchvision ``nn.MultiheadAttention`` (self-attention, batch first) as timm's ``Attention``, called like the original.

    ``forward(query [B, N, C], key, value, need_weights=False, ...) -> (out [B, N, C], None)``;
    ``key`` and ``value`` must be ``query`` (self-attention, as torchvision's encoder calls it).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        nn.Module.__init__(self)
        heads, width = int(mha.num_heads), int(mha.embed_dim)
        self.num_heads, self.head_dim, self.attn_dim = heads, width // heads, width
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        w = mha.in_proj_weight
        self.qkv = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(w)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
        self.q_norm, self.k_norm, self.norm = nn.Identity(), nn.Identity(), nn.Identity()
        self.gate = None
        self.attn_drop = nn.Dropout(float(mha.dropout))
        proj = nn.Linear(width, width, bias=mha.out_proj.bias is not None, device=w.device, dtype=w.dtype)
        proj.load_state_dict(mha.out_proj.state_dict())
        self.proj = proj
        self.proj_drop = nn.Dropout(0.0)

    def forward(  # type: ignore[override]
        self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        _check_self_attention(query, key, value, kwargs)
        return Attention.forward(self, query), None


def _check_self_attention(query: torch.Tensor, key: object, value: object, kwargs: dict) -> None:
    if (key is not None and key is not query) or (value is not None and value is not query):
        raise ValueError("PrunableMHAttention computes self-attention: call it with (x, x, x)")
    if kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") is not None:
        raise ValueError("PrunableMHAttention takes no attention or padding mask (torchvision's ViT passes none)")


class MHACall:
    """A replacement attention ``forward`` called the ``nn.MultiheadAttention`` way: ``(x, x, x, ...) -> (out, None)``.

    Attributes:
        fn: The wrapped ``fn(x [B, N, C], attn_mask=None) -> [B, N, C]`` (e.g. the cascade's attention).
    """

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, query: torch.Tensor, key: object = None, value: object = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        _check_self_attention(query, key, value, kwargs)
        return self.fn(query), None


def _layers(model: nn.Module) -> list[nn.Module]:
    return list(model.encoder.layers)


def convert(model: nn.Module) -> nn.Module:
    """Replace every encoder layer's ``nn.MultiheadAttention`` by :class:`PrunableMHAttention`, in place (exact, idempotent)."""
    for layer in _layers(model):
        if isinstance(layer.self_attention, nn.MultiheadAttention):
            layer.self_attention = PrunableMHAttention(layer.self_attention)
    return model


def _attn_half(b: nn.Module, x: torch.Tensor, **kw: Any) -> torch.Tensor:
    h = b.ln_1(x)
    return x + b.dropout(b.self_attention(h, h, h, need_weights=False)[0])


def _mlp_half(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.mlp(b.ln_2(x))


#: ``EncoderBlock.forward``, term by term (``tests/test_torchvision.py`` locks it to the block's own forward).
_HALVES = BlockHalves(_attn_half, _mlp_half)


class TorchvisionHost(Host):
    """torchvision ``VisionTransformer`` with the plain ``conv_proj`` patch embedding (``vit_b_16``, ``vit_l_32``, ...)."""

    name = "torchvision"

    def claims(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith("torchvision.")

    def check(self, model: nn.Module) -> None:
        name = type(model).__name__
        if name != _MODEL or type(model).__module__ != "torchvision.models.vision_transformer":
            raise UnsupportedModelError(
                f"torchvision's {name} is not supported; supported: torchvision.models.VisionTransformer "
                "(vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14). Nothing was changed."
            )
        if not isinstance(model.conv_proj, nn.Conv2d):
            raise UnsupportedModelError(
                "torchvision VisionTransformer with a convolutional stem (conv_stem_configs) is not supported; "
                "the plain conv_proj patch embedding is. Nothing was changed."
            )
        for i, layer in enumerate(_layers(model)):
            att = layer.self_attention
            if type(layer).__name__ != _BLOCK or not isinstance(att, (nn.MultiheadAttention, PrunableMHAttention)):
                raise UnsupportedModelError(f"encoder layer {i} is a {type(layer).__name__}, not torchvision's EncoderBlock")
            if isinstance(att, nn.MultiheadAttention) and (not att.batch_first or not att._qkv_same_embed_dim):
                raise UnsupportedModelError(f"encoder layer {i}'s attention is not batch-first self-attention")

    # -- structure -----------------------------------------------------------------------
    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        self.check(model)
        convert(model)
        layers = model.encoder.layers.named_children()
        return [(f"encoder.layers.{n}.self_attention", layer.self_attention) for n, layer in layers]

    def block_layers(self, model: nn.Module) -> list[BlockLayers]:
        out = []
        for name, attn in self.attention_modules(model):
            layer = model.get_submodule(name.rsplit(".", 1)[0])
            fc1, fc2 = layer.mlp[0], layer.mlp[3]
            out.append(BlockLayers(name, attn, attn.qkv, attn.proj, fc1, fc2, layer.ln_1, layer.ln_2, layer))
        return out

    def head_layout(self, attn: nn.Module) -> tuple[int, int]:
        return int(attn.num_heads), int(attn.head_dim)

    def prefix_tokens(self, model: nn.Module) -> int:
        return 1

    def classifier_heads(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.heads if isinstance(m, nn.Linear)]

    def readout(self, model: nn.Module) -> list[Readout]:
        return [Readout(model.encoder.ln, "token", None, (next(iter(self.classifier_heads(model))),), index=0)]

    def residual_scales(self, block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.conv_proj, model.encoder.ln]

    def fixed_residual(self, model: nn.Module) -> str | None:
        return None

    # -- tp glue ----------------------------------------------------------------------------
    def pruning_kwargs(self, model: nn.Module) -> dict[str, Any]:
        attns = self.attention_modules(model)
        return {
            "num_heads": {a.qkv: int(a.num_heads) for _, a in attns},
            "ignored_layers": self.classifier_heads(model),
            "unwrapped_parameters": [(model.class_token, 2), (model.encoder.pos_embedding, 2)],
            "customized_pruners": {},
        }

    def sync(self, model: nn.Module, num_heads: Any = None) -> nn.Module:
        attns = self.attention_modules(model)
        timm_sync.apply_layouts(timm_sync.check_layouts(attns, num_heads))
        for (_, attn), layer in zip(attns, _layers(model)):
            layer.num_heads = int(attn.num_heads)
        model.hidden_dim = int(model.conv_proj.out_channels)  # _process_input reshapes by it
        model.mlp_dim = max(int(layer.mlp[0].out_features) for layer in _layers(model))
        return model

    # -- attention capture -------------------------------------------------------------
    def attention_maps(self, model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None):
        return timm_attention.capture_attention(self.attention_modules(model), store, callback)

    @contextlib.contextmanager
    def eager_attention(self, model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
        attns = self.attention_modules(model)
        with fused_attn_off(a for _, a in attns):
            yield attns

    # -- token cascade -------------------------------------------------------------------
    def token_blocks(self, model: nn.Module) -> list[nn.Module]:
        self.attention_modules(model)
        return _layers(model)

    def block_halves(self, block: nn.Module) -> BlockHalves | None:
        return _HALVES if type(block).__name__ == _BLOCK else None

    def block_attention(self, block: nn.Module) -> nn.Module | None:
        return getattr(block, "self_attention", None)

    def cascade_attention(self, attn: nn.Module, x: torch.Tensor, num_prefix: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        return timm_blocks.cascade_attention(attn, x, num_prefix, *args, **kwargs)

    def attention_forward(self, attn: nn.Module) -> Callable[..., torch.Tensor]:
        return Attention.forward

    def wrap_attention_call(self, attn: nn.Module, fn: Callable[..., torch.Tensor]) -> Callable[..., Any]:
        return MHACall(fn)

    def unwrap_attention_call(self, forward: Any) -> Any:
        return forward.fn if isinstance(forward, MHACall) else forward

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        n = int(model.image_size) // int(model.patch_size)
        return n, n

    def patch_embed_macs(self, model: nn.Module) -> int:
        conv = model.conv_proj
        rows, cols = self.patch_grid(model)
        return rows * cols * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

    def reads_prefix_only(self, model: nn.Module) -> bool:
        return True

    # -- storage ---------------------------------------------------------------------------
    def save_spec(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        attns = self.attention_modules(model)
        for name, a in attns:
            if a.num_heads * a.head_dim != a.attn_dim or a.attn_dim != a.qkv.out_features // 3:
                raise ValueError(f"{name} is out of sync with its qkv weights; call tpv.sync_attention(model) first")
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
        if any(abs(m.eps - 1e-6) > 1e-12 for m in norms) or any(not isinstance(m, nn.Linear) for m in model.heads[::2]):
            raise NotImplementedError("save_pruned supports torchvision's default LayerNorm(eps=1e-6) and linear heads")
        pre = getattr(model.heads, "pre_logits", None)
        kwargs = {
            "image_size": int(model.image_size), "patch_size": int(model.patch_size), "num_layers": len(attns),
            "num_heads": 1, "hidden_dim": int(model.conv_proj.out_channels), "mlp_dim": 1,
            "num_classes": int(model.heads.head.out_features),
            "representation_size": int(pre.out_features) if isinstance(pre, nn.Linear) else None,
        }  # fmt: skip
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        spec = {
            "class": _MODEL,
            "kwargs": kwargs,
            "attention": {
                n: {"num_heads": int(a.num_heads), "head_dim": int(a.head_dim), "scale": float(a.scale)} for n, a in attns
            },
            "norms": {n: list(m.normalized_shape) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)},
            "shapes": {k: list(v.shape) for k, v in state.items()},
        }
        return spec, state

    def rebuild(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
        if spec.get("class") != _MODEL:
            raise ValueError(f"class {spec.get('class')!r} is not torchvision's {_MODEL}")
        missing = [k for k in ("kwargs", "attention", "norms", "shapes") if k not in spec]
        if missing:
            raise ValueError(f"the spec lacks {', '.join(missing)}; re-save the model with tpv.save_pruned")
        if {k: list(v.shape) for k, v in tensors.items()} != spec["shapes"]:
            raise ValueError("the weights file does not match the shapes recorded in the spec")
        try:
            from torchvision.models.vision_transformer import VisionTransformer
        except ImportError as e:
            raise ImportError(f"the spec holds a torchvision model: pip install torchvision ({e})") from e
        model = convert(VisionTransformer(**spec["kwargs"]))
        restore_shapes(model, tensors, spec["norms"], spec["attention"], (PrunableMHAttention,))
        model.load_state_dict(tensors, strict=True)
        self.sync(model)
        return model.eval()


def from_timm(model: nn.Module) -> nn.Module:
    """The same network as a torchvision ``VisionTransformer`` (weights mapped, equal logits; imports torchvision).

    For a plain, unpruned timm ViT (:func:`~tp_vit_plugins.hosts.timm.support.plain_vit_difference`)
    with ``LayerNorm(eps=1e-6)``, biases everywhere and square images. The timm model is left unchanged;
    the copy is in eval mode on the model's device and dtype.

    Raises:
        TypeError: The model is not such a timm ViT (the message names the first difference).
    """
    from torchvision.models.vision_transformer import VisionTransformer

    from .timm.support import plain_vit_difference

    def refuse(why: str) -> None:
        raise TypeError(f"from_timm converts a plain timm ViT to torchvision; this one {why}")

    why = plain_vit_difference(model)
    if why is not None:
        refuse(why)
    blocks = list(model.blocks)
    width, heads, hidden = model.embed_dim, blocks[0].attn.num_heads, blocks[0].mlp.fc1.out_features
    if any(m.bias is None for b in blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)):
        refuse("has a layer without bias")
    if abs(model.norm.eps - 1e-6) > 1e-12:
        refuse("has norms other than LayerNorm(eps=1e-6)")
    size, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    if size[0] != size[1] or patch[0] != patch[1]:
        refuse("has non-square images or patches")
    ref = next(model.parameters())
    tv = VisionTransformer(image_size=size[0], patch_size=patch[0], num_layers=len(blocks), num_heads=heads, hidden_dim=width,
                           mlp_dim=hidden, num_classes=model.head.out_features)  # fmt: skip
    src = model.state_dict()
    out = {
        "class_token": src["cls_token"], "encoder.pos_embedding": src["pos_embed"],
        "conv_proj.weight": src["patch_embed.proj.weight"], "conv_proj.bias": src["patch_embed.proj.bias"],
        "encoder.ln.weight": src["norm.weight"], "encoder.ln.bias": src["norm.bias"],
        "heads.head.weight": src["head.weight"], "heads.head.bias": src["head.bias"],
    }  # fmt: skip
    for i in range(len(blocks)):
        t, v = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        pairs = (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.proj", "self_attention.out_proj"), ("mlp.fc1", "mlp.0"),
                 ("mlp.fc2", "mlp.3"))  # fmt: skip
        for kind in ("weight", "bias"):
            out[v + f"self_attention.in_proj_{kind}"] = src[t + f"attn.qkv.{kind}"]
            for mine, theirs in pairs:
                out[v + f"{theirs}.{kind}"] = src[t + f"{mine}.{kind}"]
    tv.load_state_dict(out, strict=True)
    return tv.to(device=ref.device, dtype=ref.dtype).eval()
