"""The transformers adapter: Hugging Face ViT, DeiT and DINOv2 image models, pruned as they are.

transformers 5.x computes self-attention with separate ``q_proj`` / ``k_proj`` / ``v_proj`` and an
``o_proj``, reshaping by each module's ``head_dim`` and scaling the logits by its ``scaling``. The
adapter keeps those modules: tp prunes the four projections as one group per attention (tp's
``num_heads`` names q, k and v), :func:`sync_attention` then sets every module's
``num_attention_heads`` / ``head_dim`` (``scaling`` keeps the value the model was trained with) and
writes the sizes into ``model.config`` (the uniform ones; per-layer sizes in ``tpv_layers``).
Attention probabilities are captured with forward hooks on the eager attention function the model
already has; the token cascade replaces an attention's ``forward`` on the instance while it is on.
Reading a model (calibration, kwargs, MACs, budgets) changes neither its modules nor its state-dict
keys, so ``save_pretrained``, ``set_attn_implementation``, ``output_attentions`` and PEFT keep working.

Only this module reads transformers' internals; ``import tp_vit_plugins`` never imports
transformers (a model is recognised by its class's module).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import AttentionMaps, BlockHalves, BlockLayers, Host, Readout, UnsupportedModelError, resize_to_state

__all__ = [
    "SUPPORTED",
    "is_transformers_model",
    "check_transformers",
    "attention_modules",
    "block_layers",
    "head_layout",
    "backbone",
    "encoder_layers",
    "prefix_tokens",
    "classifier_heads",
    "unwrapped_parameters",
    "fixed_residual",
    "embedding_modules",
    "vit_pruning_kwargs",
    "sync_attention",
    "sync_config",
    "attention_maps",
    "eager_attention",
    "output_logits",
    "save_spec",
    "rebuild",
    "from_pretrained",
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
#: The config keys that hold per-layer sizes (when every layer agrees) and the per-layer list.
_LAYER_KEYS = ("num_attention_heads", "head_dim", "intermediate_size", "mlp_ratio")
LAYERS_KEY = "tpv_layers"


def is_transformers_model(model: object) -> bool:
    """Whether ``model`` comes from the ``transformers`` package (without importing it)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def check_transformers(model: nn.Module) -> None:
    """Refuse a transformers model this adapter does not cover (before anything changes).

    Raises:
        TypeError: (``UnsupportedModelError``) the class is not in :data:`SUPPORTED`, or it holds
            an attention module of another kind.
    """
    name = type(model).__name__
    if name not in SUPPORTED:
        raise UnsupportedModelError(
            f"transformers' {name} is not supported; supported: {', '.join(SUPPORTED)}. Nothing was changed."
        )
    for m in model.modules():
        kind = type(m).__name__
        if kind.endswith("Attention") and kind not in _ATTENTIONS and "Self" not in kind:
            raise UnsupportedModelError(f"{name} contains a {kind}, which this adapter does not prune. Nothing was changed.")
        if kind in _ATTENTIONS and not all(
            isinstance(getattr(m, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        ):
            raise UnsupportedModelError(
                f"{name}: a {kind} without nn.Linear q/k/v/o projections (e.g. wrapped by an adapter library); "
                "prune before wrapping. Nothing was changed."
            )


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every self-attention module (``ViTAttention`` & co.), in forward order; nothing is changed.

    Raises:
        TypeError: (``UnsupportedModelError``) see :func:`check_transformers`.
    """
    check_transformers(model)
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in _ATTENTIONS]
    if not found:
        raise TypeError(f"{type(model).__name__} contains no self-attention module ({', '.join(_ATTENTIONS)})")
    return found


def head_layout(attn: nn.Module) -> tuple[int, int]:
    """``(num_attention_heads, head_dim)`` of a (synced) attention module."""
    return int(attn.num_attention_heads), int(attn.head_dim)


def in_projections(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """``(q_proj, k_proj, v_proj)``."""
    return attn.q_proj, attn.k_proj, attn.v_proj


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


def output_logits(output: object) -> torch.Tensor:
    """The tensor tp traces: ``logits``, else ``pooler_output`` (it reads the whole network), else ``last_hidden_state``."""
    for attr in ("logits", "pooler_output", "last_hidden_state"):
        t = getattr(output, attr, None)
        if isinstance(t, torch.Tensor):
            return t
    return output  # type: ignore[return-value]


def _mlp_layers(layer: nn.Module) -> tuple[nn.Linear | None, nn.Linear | None]:
    mlp = getattr(layer, "mlp", None)
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        return fc1, fc2
    return None, None  # DINOv2's SwiGLU (gate / up / down)


def block_layers(model: nn.Module) -> list[BlockLayers]:
    """Every layer's attention projections (``q``, ``k``, ``v`` separate), output projection, MLP and norms."""
    attns = attention_modules(model)
    owner = {layer.attention: layer for layer in encoder_layers(model) if hasattr(layer, "attention")}
    out = []
    for name, attn in attns:
        layer = owner.get(attn)
        fc1, fc2 = _mlp_layers(layer)
        norm1 = getattr(layer, "layernorm_before", None) or getattr(layer, "norm1", None)
        norm2 = getattr(layer, "layernorm_after", None) or getattr(layer, "norm2", None)
        out.append(BlockLayers(name, attn, None, attn.o_proj, fc1, fc2, norm1, norm2, layer, in_projections(attn)))
    return out


def vit_pruning_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that let any ``tp.pruner.BasePruner`` prune a transformers ViT / DeiT / DINOv2 in place.

    * ``num_heads`` — ``{q_proj: H, k_proj: H, v_proj: H}`` for every attention (tp groups the
      four projections of an attention and removes whole heads or the same dims of every head);
    * ``ignored_layers`` — the classifiers (and, where the residual stream keeps its width, the
      patch projection);
    * ``unwrapped_parameters`` — class / distillation / register / mask tokens and position
      embeddings (last axis), DINOv2's LayerScale ``lambda1`` (axis 0);
    * ``output_transform`` — tp traces ``logits`` (or the pooled / last hidden state).

    Nothing is changed. After ``pruner.step()`` call ``sync_attention(model, pruner.num_heads)``.
    """
    attns = attention_modules(model)
    fixed = fixed_residual(model) is not None
    return {
        "num_heads": {p: int(a.num_attention_heads) for _, a in attns for p in in_projections(a)},
        "ignored_layers": [*classifier_heads(model), *([patch_projection(model)] if fixed else [])],
        "unwrapped_parameters": list(unwrapped_parameters(model)),
        "customized_pruners": {},
        "output_transform": output_logits,
    }


def _lookup_heads(num_heads: Mapping[Any, int] | None, name: str, attn: nn.Module) -> int | None:
    if not num_heads:
        return None
    for key in (*in_projections(attn), attn, name):
        try:
            if key in num_heads:
                return int(num_heads[key])
        except TypeError:
            continue
    return None


def _check_one(name: str, attn: nn.Module, heads: int | None) -> int:
    q, k, v = in_projections(attn)
    width = q.out_features
    if k.out_features != width or v.out_features != width or attn.o_proj.in_features != width:
        raise ValueError(
            f"{name}: q/k/v_proj out_features ({q.out_features}, {k.out_features}, {v.out_features}) and "
            f"o_proj.in_features ({attn.o_proj.in_features}) disagree; the four projections of one attention must be "
            "pruned together (use tp with tpv.vit_pruning_kwargs(model))"
        )
    H, d = head_layout(attn)
    if heads is None:
        if width == H * d:
            heads = H
        else:
            candidates = {c for c, ok in ((width // d, width % d == 0), (H, width % H == 0)) if ok}
            if len(candidates) != 1:
                raise ValueError(
                    f"cannot tell how {name!r} was pruned ({H} heads x {d} -> {width} channels); pass the head counts, "
                    "e.g. sync_attention(model, pruner.num_heads)"
                )
            heads = candidates.pop()
    if heads < 1 or width % heads:
        raise ValueError(f"{name}: {width} channels are not divisible by num_heads={heads}")
    return heads


def sync_attention(model: nn.Module, num_heads: Mapping[Any, int] | None = None) -> nn.Module:
    """Set every attention's ``num_attention_heads`` / ``head_dim`` from its (pruned) projections, then the config.

    ``scaling`` is left as trained: transformers passes it to every attention implementation,
    so after head-dim pruning eager, SDPA and flex attention all compute what the unpruned model
    computed with those dims zeroed. Every module is validated before any is changed. Idempotent.

    Args:
        model: A supported transformers model, pruned by tp or not.
        num_heads: Head counts after pruning, keyed by ``q_proj`` / ``k_proj`` / ``v_proj``, the
            attention module or its qualified name (e.g. ``pruner.num_heads``). Without it the
            count is inferred where unambiguous.

    Raises:
        ValueError: Inconsistent shapes or an ambiguous layout (nothing changed).
    """
    attns = attention_modules(model)
    plan = [(a, _check_one(n, a, _lookup_heads(num_heads, n, a))) for n, a in attns]
    for attn, heads in plan:
        attn.num_attention_heads = heads
        attn.head_dim = attn.q_proj.out_features // heads
    sync_config(model)
    return model


def layer_sizes(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer: ``num_attention_heads``, ``head_dim``, ``scaling`` and the MLP's hidden width (``intermediate_size``)."""
    out = []
    for layer in encoder_layers(model):
        a = layer.attention
        fc1, _ = _mlp_layers(layer)
        mlp = getattr(layer, "mlp", None)
        hidden = fc1.out_features if fc1 is not None else getattr(getattr(mlp, "up_proj", None), "out_features", None)
        out.append({"num_attention_heads": int(a.num_attention_heads), "head_dim": int(a.head_dim),
                    "scaling": float(a.scaling), "intermediate_size": None if hidden is None else int(hidden)})  # fmt: skip
    return out


def _uniform_values(config: Any, layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The config values that rebuild ``layers`` exactly with transformers alone, or ``None`` if none do."""
    first = layers[0]
    if any({k: v for k, v in ly.items()} != first for ly in layers):
        return None
    if abs(first["scaling"] - first["head_dim"] ** -0.5) > 1e-9 * first["scaling"]:
        return None  # head dims pruned: the trained scaling is not what a fresh module computes from head_dim
    values: dict[str, Any] = {"num_attention_heads": first["num_attention_heads"]}
    if (
        getattr(config, "head_dim", None) is not None
        or int(config.hidden_size) // first["num_attention_heads"] != first["head_dim"]
    ):
        values["head_dim"] = first["head_dim"]
    hidden = first["intermediate_size"]
    if hasattr(config, "mlp_ratio"):  # DINOv2: the MLP width comes from mlp_ratio
        width = int(config.hidden_size)
        if getattr(config, "use_swiglu_ffn", False) or hidden % width:
            return None  # the config's mlp_ratio is an int
        values["mlp_ratio"] = hidden // width
    else:
        values["intermediate_size"] = hidden
    return values


def sync_config(model: nn.Module) -> None:
    """Write the pruned sizes into ``model.config`` so that it says nothing false.

    ``hidden_size`` follows the patch projection. When every layer has the same sizes (and head
    dims were not pruned, so ``scaling`` is what a new module computes), ``num_attention_heads``,
    ``head_dim`` and ``intermediate_size`` (DINOv2: ``mlp_ratio``) hold them and
    ``from_pretrained`` rebuilds the model as it is. Otherwise those keys are ``None`` (transformers
    alone then refuses to build the model rather than load it wrongly) and ``tpv_layers`` lists
    every layer's sizes, which :func:`from_pretrained` reads.
    """
    config = model.config
    config.hidden_size = int(patch_projection(model).out_channels)
    layers = layer_sizes(model)
    values = _uniform_values(config, layers)
    if values is not None:
        for key, value in values.items():
            setattr(config, key, value)
        if hasattr(config, LAYERS_KEY):
            delattr(config, LAYERS_KEY)
        return
    for key in _LAYER_KEYS:  # past the config's type check: None is what makes transformers refuse it
        if hasattr(config, key):
            object.__setattr__(config, key, None)
    setattr(config, LAYERS_KEY, layers)


def _set_eager(configs: list[Any]) -> list[Any]:
    saved = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = "eager"
    return saved


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Run transformers' eager attention inside the block (it returns probabilities); the implementation returns on exit."""
    attns = attention_modules(model)
    configs = list({id(a.config): a.config for _, a in attns}.values())
    saved = _set_eager(configs)
    try:
        yield attns
    finally:
        for c, impl in zip(configs, saved):
            c._attn_implementation = impl


class _CaptureHook:
    """Forward hook: the eager attention's ``(output, probabilities)`` -> the recorder."""

    def __init__(self, recorder: AttentionMaps, index: int) -> None:
        self.recorder, self.index = recorder, index

    def __call__(self, module: nn.Module, args: tuple, output: tuple) -> None:
        self.recorder.record(self.index, output[1])


@contextlib.contextmanager
def attention_maps(
    model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None
) -> Iterator[AttentionMaps]:
    """Capture per-block attention probabilities ``[B, H, N, N]`` from transformers' eager attention.

    Forward hooks on the attention modules read the weights the eager implementation returns;
    on exit (also when the body raises) the hooks go and each config gets its implementation back.
    """
    handles = []
    with eager_attention(model) as attns:
        recorder = AttentionMaps([n for n, _ in attns], store, callback)
        try:
            for i, (_, a) in enumerate(attns):
                handles.append(a.register_forward_hook(_CaptureHook(recorder, i)))
            yield recorder
        finally:
            for h in handles:
                h.remove()


class FusedView:
    """A read-only view of a transformers attention in timm's ``Attention`` terms (for the token cascade's attention).

    ``qkv(x)`` concatenates ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)``; ``proj`` is ``o_proj``;
    ``scale`` is the module's ``scaling``; ``fused_attn`` follows the model's attention
    implementation. No module is replaced or changed.
    """

    q_norm = k_norm = norm = attn_drop = proj_drop = nn.Identity()
    gate = None

    def __init__(self, attn: nn.Module) -> None:
        self.attn = attn
        self.num_heads, self.head_dim = head_layout(attn)
        self.scale = float(attn.scaling)
        self.proj = attn.o_proj
        self.training = attn.training
        self.fused_attn = getattr(attn.config, "_attn_implementation", "sdpa") != "eager"

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        return torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1)


def cascade_attention(attn: nn.Module, x: torch.Tensor, num_prefix: int, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The cascade's attention (:func:`tp_vit_plugins.hosts.timm.blocks.cascade_attention`) on a transformers attention."""
    from .timm.blocks import cascade_attention as timm_cascade

    return timm_cascade(FusedView(attn), x, num_prefix, *args, **kwargs)


def _plain_forward(attn: nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    return type(attn).forward(attn, x)[0]


def save_spec(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(spec, tensors)``: the class, its synced config, every layer's sizes, and the weights (native keys)."""
    check_transformers(model)
    sync_config(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    spec = {"class": type(model).__name__, "config": model.config.to_dict(), "layers": layer_sizes(model),
            "native": True, "shapes": {k: list(v.shape) for k, v in state.items()}}  # fmt: skip
    return spec, state


def _skeleton(cls: type, config_dict: dict, layers: list[dict]) -> nn.Module:
    """An unpruned model of ``cls`` whose config holds valid values where the pruned config says ``None``."""
    cfg = dict(config_dict)
    cfg.pop(LAYERS_KEY, None)
    first = layers[0] if layers else {}
    if cfg.get("num_attention_heads") is None:
        cfg["num_attention_heads"] = first.get("num_attention_heads", 1)
    if "head_dim" in cfg and cfg["head_dim"] is None:
        cfg.pop("head_dim")
    if "intermediate_size" in cfg and cfg["intermediate_size"] is None:
        cfg["intermediate_size"] = first.get("intermediate_size") or cfg["hidden_size"]
    if "mlp_ratio" in cfg and cfg["mlp_ratio"] is None:
        cfg["mlp_ratio"] = cls.config_class().mlp_ratio  # the default, of the type the config checks
    config = cls.config_class.from_dict(cfg)
    impl = config_dict.get("_attn_implementation_internal") or getattr(config, "_attn_implementation", None) or "sdpa"
    config._attn_implementation = impl
    return cls(config)


def _finish(model: nn.Module, config_dict: dict, layers: list[dict], state: dict[str, torch.Tensor]) -> nn.Module:
    resize_to_state(model, state)
    for layer, sizes in zip(encoder_layers(model), layers):
        a = layer.attention
        a.num_attention_heads, a.head_dim = int(sizes["num_attention_heads"]), int(sizes["head_dim"])
        a.scaling = float(sizes["scaling"])
    model.load_state_dict(state, strict=True)
    sync_config(model)
    return model.eval()


def _transformers_class(name: object) -> type:
    if name not in SUPPORTED:
        raise ValueError(f"class {name!r} is not one of the supported transformers classes {SUPPORTED}")
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the spec holds a transformers model: pip install transformers ({e})") from e
    return getattr(transformers, name)


def _from_fused(spec: dict, state: dict[str, torch.Tensor]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Layers and native tensors of a spec saved with a fused ``qkv`` (earlier releases)."""
    state = dict(state)
    layers = []
    for name, lay in spec["attention"].items():
        for kind in ("weight", "bias"):
            t = state.pop(f"{name}.qkv.{kind}", None)
            if t is not None:
                for part, chunk in zip(("q", "k", "v"), t.chunk(3)):
                    state[f"{name}.{part}_proj.{kind}"] = chunk.contiguous()
            t = state.pop(f"{name}.proj.{kind}", None)
            if t is not None:
                state[f"{name}.o_proj.{kind}"] = t
        layers.append({"num_attention_heads": int(lay["num_heads"]), "head_dim": int(lay["head_dim"]),
                       "scaling": float(lay["scale"])})  # fmt: skip
    return layers, state


def rebuild(spec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model of ``spec`` (its class, config and per-layer sizes) with ``state`` loaded strictly.

    Raises:
        ValueError: The class is not a supported transformers class, or the tensors do not match the spec.
        ImportError: transformers is not installed.
    """
    if {k: list(v.shape) for k, v in state.items()} != spec.get("shapes"):
        raise ValueError("the weights file does not match the shapes recorded in the spec")
    cls = _transformers_class(spec.get("class"))
    if spec.get("native"):
        layers = spec["layers"]
    else:
        layers, state = _from_fused(spec, state)
    model = _skeleton(cls, spec["config"], layers)
    keys = set(model.state_dict()) ^ set(state)
    if keys:
        raise ValueError(f"rebuilt {cls.__name__} and saved weights differ in keys: {sorted(keys)[:8]}")
    return _finish(model, spec["config"], layers, state)


def _checkpoint_keys(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """``{key on disk: key in model}``: transformers' own renaming of checkpoint keys (``save_pretrained`` writes older names)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # a transformers without checkpoint renaming: keys are the model's
        return {k: k for k in keys}
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = model.state_dict()
    return {k: rename_source_key(k, renamings, converters, model.base_model_prefix, meta)[0] for k in keys}


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a pruned model that ``save_pretrained`` wrote, with every layer's own sizes.

    Reads ``config.json`` (its ``tpv_layers`` when the layers differ) and ``model.safetensors``;
    a model whose config holds uniform sizes loads with transformers' own ``from_pretrained``
    too, and this returns the same model. ``kwargs`` are ignored keys kept for call-site
    compatibility (``torch_dtype`` is applied).

    Raises:
        FileNotFoundError: No ``config.json`` / ``model.safetensors`` in ``path``.
        ValueError: The architecture is not supported, or the weights do not fit the sizes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    config_dict = json.loads((path / "config.json").read_text())
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (a sharded or .bin checkpoint is not supported here)")
    arch = (config_dict.get("architectures") or [None])[0]
    cls = _transformers_class(arch)
    layers = config_dict.get(LAYERS_KEY)
    model = _skeleton(cls, config_dict, layers or [])
    saved = load_file(str(weights))
    names = _checkpoint_keys(model, list(saved))
    state = {names[k]: v for k, v in saved.items()}
    if layers is None:  # uniform: the config alone describes the model
        layers = layer_sizes(model)
    keys = set(model.state_dict()) ^ set(state)
    if keys:
        raise ValueError(f"{path}: the {cls.__name__} of its config and the saved weights differ in keys: {sorted(keys)[:8]}")
    model = _finish(model, config_dict, layers, state)
    dtype = kwargs.get("torch_dtype") or kwargs.get("dtype")
    return model.to(dtype) if isinstance(dtype, torch.dtype) else model


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


def token_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder layers, in order (one global token sequence).

    Raises:
        TypeError: (``UnsupportedModelError``) an unsupported model or a layer of an unknown kind.
    """
    attention_modules(model)
    layers = encoder_layers(model)
    unknown = sorted({type(b).__name__ for b in layers if layer_halves(b) is None})
    if unknown:
        raise UnsupportedModelError(
            f"{type(model).__name__}: layers of kind {unknown} are not split by this adapter. Nothing was changed."
        )
    return layers


def _patch_embed_macs(model: nn.Module) -> int:
    conv = patch_projection(model)
    rows, cols = patch_grid(model)
    return rows * cols * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]


def _residual_scales(layer: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    out = []
    for attr in ("layer_scale1", "layer_scale2"):  # DINOv2's LayerScale
        g = getattr(getattr(layer, attr, None), "lambda1", None)
        out.append(g.detach() if isinstance(g, torch.Tensor) else None)
    return out[0], out[1]


class TransformersHost(Host):
    """Hugging Face ViT / DeiT / DINOv2 models (classes in :data:`SUPPORTED`), recognised by their class's module.

    The model keeps its own modules: the methods read ``q_proj`` / ``k_proj`` / ``v_proj`` /
    ``o_proj`` through :meth:`in_projections` / :meth:`out_projection` and the head layout
    through ``num_attention_heads`` / ``head_dim``.
    """

    name = "transformers"
    fallback = False

    def claims(self, model: nn.Module) -> bool:
        return is_transformers_model(model)

    def check(self, model: nn.Module) -> None:
        check_transformers(model)

    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return attention_modules(model)

    def block_layers(self, model: nn.Module) -> list[BlockLayers]:
        return block_layers(model)

    def head_layout(self, attn: nn.Module) -> tuple[int, int]:
        return head_layout(attn)

    def in_projections(self, attn: nn.Module) -> tuple[nn.Linear, ...]:
        return in_projections(attn)

    def out_projection(self, attn: nn.Module) -> nn.Linear:
        return attn.o_proj

    def prefix_tokens(self, model: nn.Module) -> int:
        return prefix_tokens(model)

    def classifier_heads(self, model: nn.Module) -> list[nn.Module]:
        return classifier_heads(model)

    def readout(self, model: nn.Module) -> list[Readout]:
        prefix = prefix_tokens(model)
        return [Readout(norm, pool, None, layers, index, prefix, cols) for norm, pool, layers, index, cols in readouts(model)]

    def residual_scales(self, block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return _residual_scales(block)

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        return embedding_modules(model)

    def fixed_residual(self, model: nn.Module) -> str | None:
        return fixed_residual(model)

    def pruning_kwargs(self, model: nn.Module) -> dict[str, Any]:
        return vit_pruning_kwargs(model)

    def sync(self, model: nn.Module, num_heads: Any = None) -> nn.Module:
        return sync_attention(model, num_heads)

    def attention_maps(self, model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None):
        return attention_maps(model, store, callback)

    def eager_attention(self, model: nn.Module):
        return eager_attention(model)

    def token_blocks(self, model: nn.Module) -> list[nn.Module]:
        return token_blocks(model)

    def block_halves(self, block: nn.Module) -> BlockHalves | None:
        pair = layer_halves(block)
        return BlockHalves(*pair) if pair is not None else None

    def block_attention(self, block: nn.Module) -> nn.Module | None:
        return getattr(block, "attention", None)

    def cascade_attention(self, attn: nn.Module, x: torch.Tensor, num_prefix: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        return cascade_attention(attn, x, num_prefix, *args, **kwargs)

    def attention_forward(self, attn: nn.Module) -> Callable[..., torch.Tensor]:
        return _plain_forward

    def wrap_attention_call(self, attn: nn.Module, fn):
        return LayerAttentionCall(fn)

    def unwrap_attention_call(self, forward):
        return forward.fn if isinstance(forward, LayerAttentionCall) else forward

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        return patch_grid(model)

    def patch_embed_macs(self, model: nn.Module) -> int:
        return _patch_embed_macs(model)

    def reads_prefix_only(self, model: nn.Module) -> bool:
        return reads_prefix_only(model)

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
