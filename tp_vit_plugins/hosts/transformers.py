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

from .base import UnsupportedModelError

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
    "embedding_modules",
    "sync_config",
    "output_logits",
    "save_spec",
    "rebuild",
    "TransformersHost",
    "layer_halves",
    "LayerAttentionCall",
    "patch_projection",
    "patch_grid",
    "reads_prefix_only",
    "readouts",
    "from_timm",
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
#: Classes whose classifiers read the prefix tokens alone (class, distillation).
_PREFIX_READERS = ("ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` comes from the ``transformers`` package (without importing it)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def check_transformers(model: nn.Module) -> None:
    """Refuse a transformers model this adapter does not cover (before anything changes).

    Raises:
        TypeError: (``UnsupportedModelError``) the class is not in :data:`SUPPORTED`.
    """
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
    """Layers whose outputs (classes, a ``*Model``'s pooled features) are never pruned."""
    heads = [m for a in _CLASSIFIERS if isinstance(m := getattr(model, a, None), nn.Linear)]
    pooler = getattr(getattr(backbone(model), "pooler", None), "dense", None)
    return [*heads, *([pooler] if isinstance(pooler, nn.Linear) else [])]


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
    """Why the residual stream keeps its width (``None``: it may be pruned).

    tp follows the width through the patch projection, the class / distillation / register
    tokens and position embeddings (declared in :func:`unwrapped_parameters`), every norm,
    DINOv2's LayerScale and the ViT / DeiT classifiers; :func:`sync_config` writes the new
    width into the model's config. DINOv2's classifier reads ``torch.cat([cls, mean(patches)])``,
    whose two halves tp does not both follow (it prunes the columns of one half only), so a
    DINOv2 classifier keeps its width (a ``Dinov2Model`` backbone does not).
    """
    name = type(model).__name__
    if name.startswith("Dinov2") and name.endswith("ForImageClassification"):
        return (
            f"{name}'s classifier reads [cls, mean(patches)] concatenated, a channel layout tp does not follow, "
            "so its residual stream keeps its width (prune the Dinov2Model backbone's width, or heads and MLPs here)"
        )
    return None


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """Layers that exist only on the residual stream: the patch projection and the final norm."""
    norm = getattr(backbone(model), "layernorm", None)
    return [patch_projection(model), *([norm] if isinstance(norm, nn.Module) else [])]


def sync_config(model: nn.Module) -> None:
    """Write the residual width (the patch projection's outputs) into ``model.config.hidden_size``."""
    model.config.hidden_size = int(patch_projection(model).out_channels)


def output_logits(output: object) -> torch.Tensor:
    """The tensor tp traces: ``logits``, else ``pooler_output`` (it reads the whole network), else ``last_hidden_state``."""
    for attr in ("logits", "pooler_output", "last_hidden_state"):
        t = getattr(output, attr, None)
        if isinstance(t, torch.Tensor):
            return t
    return output  # type: ignore[return-value]


def save_spec(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(spec, tensors)``: the class, its own config, every attention's layout, and the weights."""
    from .timm.structure import attention_modules

    check_transformers(model)
    attns = {}
    for name, a in attention_modules(model):
        if a.num_heads * a.head_dim != a.attn_dim or a.attn_dim != a.qkv.out_features // 3:
            raise ValueError(f"{name} is out of sync with its qkv weights; call tpv.sync_attention(model) first")
        attns[name] = {"num_heads": int(a.num_heads), "head_dim": int(a.head_dim), "scale": float(a.scale),
                       "fused_attn": bool(a.fused_attn)}  # fmt: skip
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    spec = {"class": type(model).__name__, "config": model.config.to_dict(), "attention": attns,
            "shapes": {k: list(v.shape) for k, v in state.items()}}  # fmt: skip
    return spec, state


def rebuild(spec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model of ``spec`` (its class and config, attention converted, per-layer sizes) with ``state`` loaded.

    Raises:
        ValueError: The class is not a supported transformers class, or the tensors do not match the spec.
        ImportError: transformers is not installed.
    """
    from .base import restore_shapes

    if {k: list(v.shape) for k, v in state.items()} != spec.get("shapes"):
        raise ValueError("the weights file does not match the shapes recorded in the spec")
    name = spec.get("class")
    if name not in SUPPORTED:
        raise ValueError(f"class {name!r} is not one of the supported transformers classes {SUPPORTED}")
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the spec holds a transformers model: pip install transformers ({e})") from e
    cls = getattr(transformers, name)
    config = cls.config_class.from_dict(spec["config"])
    model = convert(cls(config))
    restore_shapes(model, state, None, spec["attention"], (PrunableHFAttention,))
    for attn_name, layout in spec["attention"].items():
        model.get_submodule(attn_name).fused_attn = bool(layout.get("fused_attn", True))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _vit_attn_half(b: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
    return x + b.dropout(b.attention(b.layernorm_before(x), attention_mask, **kw)[0])


def _vit_mlp_half(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.dropout(b.mlp(b.layernorm_after(x)))


def _dinov2_attn_half(b: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
    return x + b.drop_path(b.layer_scale1(b.attention(b.norm1(x), attention_mask=attention_mask, **kw)[0]))


def _dinov2_mlp_half(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path(b.layer_scale2(b.mlp(b.norm2(x))))


#: transformers' layer forwards, term by term (by class name: transformers is never imported here;
#: ``tests/test_transformers.py`` locks every entry to the layer's own forward).
_HALVES = {
    **dict.fromkeys(("ViTLayer", "DeiTLayer"), (_vit_attn_half, _vit_mlp_half)),
    **dict.fromkeys(("Dinov2Layer", "Dinov2WithRegistersLayer"), (_dinov2_attn_half, _dinov2_mlp_half)),
}


def layer_halves(layer: nn.Module) -> tuple | None:
    """``(attn, mlp)``: a layer's forward as its two residual halves, or ``None`` for another layer type.

    ``attn(layer, x [B, N, C], attention_mask=None, **kw) -> [B, N, C]`` is the stream after the
    attention residual, ``mlp(layer, x [B, N', C]) -> [B, N', C]`` the MLP residual (per token).
    """
    return _HALVES.get(type(layer).__name__)


class LayerAttentionCall:
    """A replacement attention ``forward`` called the transformers way.

    transformers' layers call ``attention(hidden_states, attention_mask, **kwargs)`` and unpack
    ``(output, weights)``; this wraps ``fn(x [B, N, C], attn_mask=None) -> [B, N, C]`` (the
    cascade's attention) into that convention. While ``torch.export`` traces, transformers
    materialises the all-visible ``[B, 1, N, N]`` mask of the full sequence (it cannot inspect a
    mask while tracing); images have no padding, so that mask is dropped (the cascade changes
    ``N``). A mask passed in eager use reaches ``fn``, which refuses it.

    Attributes:
        fn: The wrapped callable.
    """

    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __call__(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object
    ) -> tuple[torch.Tensor, None]:
        if attention_mask is not None and torch.compiler.is_exporting():
            attention_mask = None
        return self.fn(hidden_states, attn_mask=attention_mask), None


def patch_projection(model: nn.Module) -> nn.Conv2d:
    """The patch-embedding convolution (``embeddings.patch_embeddings.projection``)."""
    return backbone(model).embeddings.patch_embeddings.projection


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid at the configured image size."""
    pe = backbone(model).embeddings.patch_embeddings
    size, patch = pe.image_size, pe.patch_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return int(size[0]) // int(patch[0]), int(size[1]) // int(patch[1])


def reads_prefix_only(model: nn.Module) -> bool:
    """The classifiers read the class (and distillation) token alone: ViT / DeiT classifiers, not DINOv2's mean."""
    return type(model).__name__ in _PREFIX_READERS


def readouts(model: nn.Module) -> list[tuple]:
    """How the classifiers read the final norm's output: ``(norm, pool, layers, token index, columns)`` each.

    ViT / DeiT: the classifier on the class token (DeiT with teacher: and the distillation
    classifier on token 1); DINOv2: the classifier's first half on the class token, its second
    half on the mean of the patch tokens; a ``*Model`` without a classifier: none.
    """
    norm = getattr(backbone(model), "layernorm", None)
    heads = {a: m for a in _CLASSIFIERS if isinstance(m := getattr(model, a, None), nn.Linear)}
    if not heads:
        return []
    if "cls_classifier" in heads:
        cls, dist = heads["cls_classifier"], heads["distillation_classifier"]
        return [(norm, "token", (cls,), 0, None), (norm, "token", (dist,), 1, None)]
    head = heads["classifier"]
    if type(model).__name__.startswith("Dinov2"):
        width = head.in_features // 2
        return [(norm, "token", (head,), 0, (0, width)), (norm, "avg", (head,), 0, (width, 2 * width))]
    return [(norm, "token", (head,), 0, None)]


def from_timm(model: nn.Module) -> nn.Module:
    """The same network as a transformers ``ViTForImageClassification`` (weights mapped, equal logits).

    For a plain timm ViT / DeiT (``timm.models.vision_transformer.VisionTransformer``): a class
    token, no register or distillation token, pre-norm blocks without LayerScale or q/k norm,
    exact GELU, a linear head on the class token, every block of the same widths with
    ``num_heads * head_dim`` equal to the residual width (convert before pruning heads). The
    model itself is left unchanged; the copy is in eval mode, SDPA attention, on the model's
    device and dtype. Imports transformers.

    Args:
        model: The timm model.

    Returns:
        The transformers model (its attention not yet converted; every entry point converts it).

    Raises:
        TypeError: The model is not such a timm ViT (the message names the first difference).
    """
    from .timm.support import plain_vit_difference

    why = plain_vit_difference(model)
    if why is not None:
        raise TypeError(f"from_timm converts a plain timm ViT / DeiT; this one {why}")
    blocks = list(model.blocks)
    width, heads, hidden = model.embed_dim, blocks[0].attn.num_heads, blocks[0].mlp.fc1.out_features
    from transformers import ViTConfig, ViTForImageClassification

    proj = model.patch_embed.proj
    config = ViTConfig(
        hidden_size=width, num_hidden_layers=len(blocks), num_attention_heads=heads, intermediate_size=hidden,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(model.norm.eps), image_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(proj.kernel_size), num_channels=proj.in_channels, qkv_bias=blocks[0].attn.qkv.bias is not None,
        num_labels=model.head.out_features,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    ref = next(model.parameters())
    hf = ViTForImageClassification(config).to(device=ref.device, dtype=ref.dtype).eval()
    src = model.state_dict()
    out = {
        "vit.embeddings.cls_token": src["cls_token"], "vit.embeddings.position_embeddings": src["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
        "vit.layernorm.weight": src["norm.weight"], "vit.layernorm.bias": src["norm.bias"],
        "classifier.weight": src["head.weight"], "classifier.bias": src["head.bias"],
    }  # fmt: skip
    if "patch_embed.proj.bias" in src:
        out["vit.embeddings.patch_embeddings.projection.bias"] = src["patch_embed.proj.bias"]
    for i in range(len(blocks)):
        t, h = f"blocks.{i}.", f"vit.layers.{i}."
        for kind in ("weight", "bias"):
            if t + f"attn.qkv.{kind}" in src:
                for part, chunk in zip(("q", "k", "v"), src[t + f"attn.qkv.{kind}"].chunk(3)):
                    out[h + f"attention.{part}_proj.{kind}"] = chunk
            for mine, theirs in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                                 ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):  # fmt: skip
                if t + f"{mine}.{kind}" in src:
                    out[h + f"{theirs}.{kind}"] = src[t + f"{mine}.{kind}"]
    missing = set(hf.state_dict()) - set(out)
    if missing:
        raise TypeError(f"from_timm converts a plain timm ViT / DeiT; this one has no counterpart for {sorted(missing)[:4]}")
    hf.load_state_dict(out, strict=True)
    return hf


# The host class last: today it shares the timm adapter's fused-attention functions (which reach
# this module's functions through the converted attention), so it is defined once both exist.
from .base import Host  # noqa: E402
from .timm.host import TimmHost  # noqa: E402


class TransformersHost(TimmHost):
    """Hugging Face ViT / DeiT / DINOv2 models (classes in :data:`SUPPORTED`), recognised by their class's module.

    The attention is converted exactly into :class:`PrunableHFAttention` (fused ``qkv``) on first
    structural use; from there the timm adapter's functions apply, and this class supplies what
    differs: support, the layers' calling convention for a replaced attention, storage.
    """

    name = "transformers"
    fallback = False

    def claims(self, model: nn.Module) -> bool:
        return is_transformers_model(model)

    def check(self, model: nn.Module) -> None:
        check_transformers(model)

    def is_supported(self, model: nn.Module) -> bool:
        return Host.is_supported(self, model)

    def wrap_attention_call(self, attn: nn.Module, fn):
        return LayerAttentionCall(fn) if isinstance(attn, PrunableHFAttention) else fn

    def unwrap_attention_call(self, forward):
        return forward.fn if isinstance(forward, LayerAttentionCall) else forward

    def has_class_token(self, model: nn.Module) -> bool:
        return True

    def positional_attention(self, model: nn.Module) -> bool:
        return False

    def attention_pool(self, model: nn.Module) -> nn.Module | None:
        return None

    def save_spec(self, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
        return save_spec(model)

    def rebuild(self, spec: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
        return rebuild(spec, tensors)


def _pruning_callback_class() -> type:
    """:class:`PruningCallback`, built on first use (it subclasses ``transformers.TrainerCallback``)."""
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        """Drive a pruner's sparse training from a ``transformers.Trainer``: tp's loop, as callbacks.

        * ``on_pre_optimizer_step`` (after the backward of every optimizer step, after gradient
          clipping, before the optimizer): ``pruner.regularize(model)``;
        * ``on_epoch_end``: ``pruner.update_regularizer()`` (when the pruner has one);
        * ``on_train_end``: ``pruner.step()`` when ``step_at_end`` (the pruned model is then the
          trainer's model; fine-tune it with a new ``Trainer``).

        Example::

            pruner = tpv.GOHSPPruner(model, example, imp, pruning_ratio=0.4)
            trainer = Trainer(model=model, args=args, train_dataset=ds,
                              callbacks=[tpv.hosts.transformers.PruningCallback(pruner)])
            trainer.train()                      # sparse training, then the hard prune

        With fp16 loss scaling the gradients ``regularize`` sees are scaled; use bf16 or fp32.

        Args:
            pruner: A tp pruner with ``regularize(model)`` (``tpv.GOHSPPruner``, ``tpv.VTPPruner``,
                ``tp.pruner.GroupNormPruner``, ...).
            step_at_end: Call ``pruner.step()`` when training ends.

        Attributes:
            regularized: Optimizer steps regularised so far.
            epochs: ``update_regularizer()`` calls so far.
            pruned: Whether ``pruner.step()`` ran.
        """

        def __init__(self, pruner: object, step_at_end: bool = True) -> None:
            if not callable(getattr(pruner, "regularize", None)):
                raise TypeError(f"PruningCallback needs a pruner with regularize(model), got {type(pruner).__name__}")
            self.pruner, self.step_at_end = pruner, step_at_end
            self.regularized, self.epochs, self.pruned = 0, 0, False

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: D102
            self.pruner.regularize(model if model is not None else self.pruner.model)
            self.regularized += 1

        def on_epoch_end(self, args, state, control, **kwargs):  # noqa: D102
            update = getattr(self.pruner, "update_regularizer", None)
            if callable(update):
                update()
                self.epochs += 1

        def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: D102
            if self.step_at_end and not self.pruned:
                self.pruner.step()
                self.pruned = True

    PruningCallback.__module__ = __name__
    PruningCallback.__qualname__ = "PruningCallback"
    return PruningCallback


def __getattr__(name: str) -> object:
    if name == "PruningCallback":  # transformers is imported here, not when the package is
        cls = _pruning_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
