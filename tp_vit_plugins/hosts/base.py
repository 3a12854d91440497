"""The host interface: what a pruning method may ask of a model's library, and the registry of hosts.

A *host* is one library of ViT models (timm, transformers, ...). Methods (``core/``,
``gohsp/``, ``cpvit/``, ``vtp/``, ``budget.py``, ``export.py``) never import a host library and
never branch on a host's types: they call :func:`host_for` and ask the returned :class:`Host`.
Each host lives in one module (or package) of :mod:`tp_vit_plugins.hosts`, subclasses
:class:`Host` and is added with :func:`register_host`; nothing else in the library changes.

What a host answers, in the library's terms:

* **support** — :meth:`Host.claims` (is this model mine?), :meth:`Host.check` (refuse, before
  anything changes, with :class:`UnsupportedModelError`);
* **structure** — the attention modules and, per block, the prunable layers
  (:class:`BlockLayers`: attention projections with their head layout, MLP layers, norms), head
  count / head dim getters (:meth:`Host.head_layout`), prefix tokens, classifier layers,
  readouts (:class:`Readout`), residual-branch scales, embedding-only layers, whether the
  residual stream must keep its width;
* **tp glue** — :meth:`Host.pruning_kwargs` (what any tp pruner needs) and :meth:`Host.sync`
  (head counts / head dims / scale after a tp step), per-head tensors tp cannot see
  (:meth:`Host.drop_heads`), rotary head dims;
* **attention capture** — :meth:`Host.attention_maps` (probabilities ``[B, H, N, N]`` per block,
  hooks removed and the attention path restored on exit);
* **the token cascade** — the blocks tokens flow through, each block's two residual halves
  (:class:`BlockHalves`), its attention with the cascade's statistics
  (:meth:`Host.cascade_attention`) and the host's calling convention for a replaced attention;
* **storage** — :meth:`Host.save_spec` / :meth:`Host.rebuild` (a JSON spec + tensors; no pickle).

``docs/extending.md`` ("A new host") lists what a new host implements.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "UnsupportedModelError",
    "BlockLayers",
    "Readout",
    "BlockHalves",
    "AttentionMaps",
    "Host",
    "register_host",
    "registered_hosts",
    "host_for",
    "split_qkv",
    "unit_param_costs",
    "linear_macs",
    "resize_to_state",
    "restore_shapes",
    "fused_attn_off",
]


class UnsupportedModelError(TypeError):
    """The model is not one this library can prune (raised before anything changes)."""


@dataclass(frozen=True)
class BlockLayers:
    """The prunable layers of one transformer block.

    Attributes:
        name: Qualified name of the block's attention module.
        attn: The attention module (its head layout: :meth:`Host.head_layout`).
        qkv: Fused query/key/value projection, ``out_features = 3 * num_heads * head_dim``
            (rows ``[q; k; v]``, each grouped head by head: :func:`split_qkv`); ``None`` where
            the host keeps separate projections (see ``in_projs``).
        proj: Attention output projection, ``in_features = num_heads * head_dim``.
        fc1: MLP input projection (``None`` when the block has no plain two-layer MLP, e.g.
            EVA02's SwiGLU with ``fc1_g`` / ``fc1_x``).
        fc2: MLP output projection (``None`` when the block has no such layer).
        norm1: The norm the attention reads the residual stream through (``None`` if none).
        norm2: The norm the MLP reads it through (``None`` if none).
        block: The transformer block holding both.
        in_projs: The attention's input projections whose rows are grouped head by head:
            ``(qkv,)`` (fused) or ``(q, k, v)`` (separate, transformers); default ``(qkv,)``.
            The first one keys per-head state (:meth:`Host.head_key`).
    """

    name: str
    attn: nn.Module
    qkv: nn.Linear | None
    proj: nn.Linear
    fc1: nn.Linear | None
    fc2: nn.Linear | None
    norm1: nn.Module | None = None
    norm2: nn.Module | None = None
    block: nn.Module | None = None
    in_projs: tuple[nn.Linear, ...] = ()

    def __post_init__(self) -> None:
        if not self.in_projs:
            if self.qkv is None:
                raise ValueError(f"{self.name}: BlockLayers needs qkv or in_projs")
            object.__setattr__(self, "in_projs", (self.qkv,))

    @property
    def key(self) -> nn.Linear:
        """The layer that keys this attention's per-head state (``qkv``, or ``q`` when separate)."""
        return self.in_projs[0]

    @property
    def embed_dim(self) -> int:
        """Width of the residual stream the attention reads."""
        return int(self.in_projs[0].in_features)

    def qkv_weight(self) -> torch.Tensor:
        """``[3 * H * d, C]``: the q, k and v rows stacked (a detached view or copy, for reading)."""
        ws = [m.weight.detach() for m in self.in_projs]
        return ws[0] if len(ws) == 1 else torch.cat(ws)


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
        columns: ``(start, stop)``: the input columns of ``layers`` this readout feeds (DINOv2's
            classifier reads ``[cls, mean(patches)]``); ``None``: all of them.
    """

    norm: nn.Module | None
    pool: str
    fc_norm: nn.Module | None
    layers: tuple[nn.Linear, ...]
    index: int = 0
    num_prefix: int = 0
    columns: tuple[int, int] | None = None


@dataclass(frozen=True)
class BlockHalves:
    """A block's forward as its two residual halves: ``mlp(block, attn(block, x, **kw))`` is ``block(x, **kw)``.

    Attributes:
        attn: ``(block, x [B, N, C], **kwargs) -> [B, N, C]``, the stream after the attention residual
            (``kwargs``: what the block's forward takes besides ``x``, passed on to its attention).
        mlp: ``(block, x [B, N', C]) -> [B, N', C]``, the MLP residual (per token: any ``N'``).
    """

    attn: Callable[..., torch.Tensor]
    mlp: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def split_qkv(t: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """View a fused ``qkv`` weight ``[3 * H * d, C]`` (or bias ``[3 * H * d]``) as ``[3, H, d, ...]``.

    The fused projection stacks the q, k and v rows, each grouped head by head. A separate
    projection's ``[H * d, C]`` weight is viewed likewise as ``[1, H, d, C]``.
    """
    return t.view(-1, num_heads, head_dim, *t.shape[1:])


def unit_param_costs(b: BlockLayers) -> tuple[int, int]:
    """Parameters removed with one (head, head dim) cell and with one MLP hidden dim of block ``b``.

    A cell is one q, k and v row (with their biases) and one ``proj`` column; a hidden
    dim is one ``fc1`` row (with its bias) and one ``fc2`` column (0 when the block has no
    two-layer MLP).
    """
    embed = b.embed_dim
    per_row = sum(m.out_features for m in b.in_projs) // max(1, b.proj.in_features)  # 3
    cell = (per_row + 1) * embed + (per_row if b.in_projs[0].bias is not None else 0)
    if b.fc1 is None or b.fc2 is None:
        return cell, 0
    neuron = b.fc1.in_features + b.fc2.out_features + (1 if b.fc1.bias is not None else 0)
    return cell, neuron


def linear_macs(module: nn.Module | None, skip: Sequence[nn.Module] = ()) -> int:
    """MACs per token of every ``nn.Linear`` in ``module`` but ``skip`` (each applied once to every token)."""
    if module is None:
        return 0
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear) and m not in skip)


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter / buffer of ``model`` the shape it has in ``state`` (values not loaded).

    Linear and Conv2d modules get their ``in_*`` / ``out_*`` attributes from the new weights.

    Raises:
        ValueError: A key of ``state`` has no counterpart in ``model``.
    """
    touched: set[nn.Module] = set()
    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        current = getattr(module, attr, None)
        if current is None:
            raise ValueError(f"saved tensor {key!r} has no counterpart in the rebuilt model")
        if tuple(current.shape) == tuple(tensor.shape):
            continue
        empty = torch.empty(tensor.shape, dtype=tensor.dtype)
        if isinstance(current, nn.Parameter):
            setattr(module, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
        else:
            module._buffers[attr] = empty
        touched.add(module)
    for m in touched:
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.Conv2d):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


@contextlib.contextmanager
def fused_attn_off(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Set ``fused_attn = False`` on ``modules`` (their eager path); the flags come back on every path."""
    mods = list(modules)
    saved = [m.fused_attn for m in mods]
    try:
        for m in mods:
            m.fused_attn = False
        yield
    finally:
        for m, flag in zip(mods, saved):
            m.fused_attn = flag


def restore_shapes(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    norms: dict[str, list[int]] | None = None,
    attention: dict[str, dict] | None = None,
    attention_types: tuple[type, ...] = (nn.Module,),
) -> None:
    """Give a freshly built ``model`` the saved shapes: tensors, norm widths, each attention's layout (values not loaded).

    Args:
        model: The rebuilt, unpruned skeleton (attention already in the host's prunable form).
        tensors: The saved state dict.
        norms: ``{norm name: normalized_shape}``.
        attention: ``{attention name: {"num_heads", "head_dim", "scale"}}``.
        attention_types: What each named attention must be.

    Raises:
        ValueError: Keys that differ from the skeleton's, or a named attention of another type.
    """
    keys = set(model.state_dict()) ^ set(tensors)
    if keys:
        raise ValueError(f"rebuilt {type(model).__name__} and saved weights differ in keys: {sorted(keys)[:8]}")
    resize_to_state(model, tensors)
    for name, shape in (norms or {}).items():
        model.get_submodule(name).normalized_shape = tuple(shape)
    for name, layout in (attention or {}).items():
        attn = model.get_submodule(name)
        if not isinstance(attn, attention_types):
            raise ValueError(f"{name} is a {type(attn).__name__} in the rebuilt model, not a prunable attention")
        attn.num_heads, attn.head_dim = int(layout["num_heads"]), int(layout["head_dim"])
        attn.attn_dim, attn.scale = attn.num_heads * attn.head_dim, float(layout["scale"])


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
        self.record(index, args[0])  # attn_drop's input: softmax probabilities, before dropout

    def record(self, index: int, probs: torch.Tensor) -> None:
        """Store / pass on block ``index``'s probabilities ``[B, H, N, N]`` (what a host's capture hook calls)."""
        probs = probs.detach()
        if self._store:
            self.maps[index] = probs
        if self._callback is not None:
            self._callback(index, probs)


class Host(abc.ABC):
    """What the methods may ask of one model library. Subclass it and :func:`register_host` an instance.

    Every method takes the model (or one of its submodules the host itself returned) and never
    changes a user's weights unless its name says so (:meth:`sync`, :meth:`drop_heads`); a host
    may convert attention modules into a prunable form first (exactly: outputs unchanged).
    The methods read an attention through :meth:`head_layout`, :meth:`head_key`,
    :meth:`in_projections`, :meth:`out_projection` and :class:`BlockLayers`; the defaults
    describe timm's layout (a fused ``qkv`` Linear and ``proj``).
    """

    #: Short name, written into saved specs (``"host"``) and error messages.
    name: str = ""
    #: A fallback host is asked after every other host (the timm host: its :meth:`check` names
    #: what is supported when no other host claims a model).
    fallback: bool = False

    # -- support --------------------------------------------------------------------------
    @abc.abstractmethod
    def claims(self, model: nn.Module) -> bool:
        """Whether ``model`` belongs to this host (its library), supported or not. Changes nothing."""

    @abc.abstractmethod
    def check(self, model: nn.Module) -> None:
        """Refuse, before anything changes, a model of this host the pruners cannot keep consistent.

        Raises:
            UnsupportedModelError: naming what is not supported and what is.
        """

    def is_supported(self, model: nn.Module) -> bool:
        """:meth:`check` as a bool. Changes nothing (no attention is converted)."""
        try:
            self.check(model)
        except TypeError:
            return False
        return True

    def check_global_sequence(self, model: nn.Module, what: str) -> None:
        """Refuse ``what`` (a statistic over one global token sequence) on windowed-attention models (none by default)."""
        return None

    # -- structure -----------------------------------------------------------------------
    @abc.abstractmethod
    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every attention module in forward order, ``[(qualified_name, module)]`` (one per block)."""

    @abc.abstractmethod
    def block_layers(self, model: nn.Module) -> list[BlockLayers]:
        """Every block's attention and MLP layers, in forward order."""

    @abc.abstractmethod
    def head_layout(self, attn: nn.Module) -> tuple[int, int]:
        """``(num_heads, head_dim)`` of an attention module (after :meth:`sync`)."""

    def head_key(self, attn: nn.Module) -> nn.Linear:
        """The layer that keys ``attn``'s per-head state (head scores, ``num_heads``, floors): its first input projection."""
        return self.in_projections(attn)[0]

    def in_projections(self, attn: nn.Module) -> tuple[nn.Linear, ...]:
        """``attn``'s input projections with head-grouped rows: ``(qkv,)`` by default (timm's fused layout)."""
        return (attn.qkv,)

    def out_projection(self, attn: nn.Module) -> nn.Linear:
        """``attn``'s output projection (its inputs are the heads' channels): ``proj`` by default."""
        return attn.proj

    def heads_per_block(self, model: nn.Module) -> list[int]:
        """Head count of every attention block, in order."""
        return [self.head_layout(a)[0] for _, a in self.attention_modules(model)]

    @abc.abstractmethod
    def prefix_tokens(self, model: nn.Module) -> int:
        """Leading tokens that are not patches (class, distillation, register tokens) in the blocks."""

    @abc.abstractmethod
    def classifier_heads(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose outputs (classes) must never be pruned."""

    @abc.abstractmethod
    def readout(self, model: nn.Module) -> list[Readout]:
        """How the classifier side reads the residual stream (empty: unknown readout)."""

    @abc.abstractmethod
    def residual_scales(self, block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(attention branch scale [C], MLP branch scale [C])`` of a block (LayerScale), ``None`` where absent."""

    @abc.abstractmethod
    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        """Layers that exist only on the residual stream (patch projection, final norms)."""

    @abc.abstractmethod
    def fixed_residual(self, model: nn.Module) -> str | None:
        """Why the residual stream must keep its width (``None`` if it may be pruned)."""

    # -- tp glue ----------------------------------------------------------------------------
    @abc.abstractmethod
    def pruning_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """Fresh keyword arguments that let any ``tp.pruner.BasePruner`` prune ``model`` correctly."""

    @abc.abstractmethod
    def sync(self, model: nn.Module, num_heads: Any = None) -> nn.Module:
        """Make every attention consistent with its (possibly pruned) projections; returns ``model``."""

    def drop_heads(self, attn: nn.Module, heads: Sequence[int]) -> None:
        """Remove per-head tensors tp cannot see (relative position tables, head mixers) for ``heads`` (none by default)."""
        return None

    def has_rope(self, model: nn.Module) -> bool:
        """Whether the model applies a rotary embedding inside its attention (head dims go in pairs)."""
        return False

    def rope_pairs(self, attn: nn.Module) -> list[tuple[int, int]] | None:
        """The rotary dim pairs of ``attn``'s current head dims, or ``None`` without rope."""
        return None

    # -- attention capture -------------------------------------------------------------
    @abc.abstractmethod
    def attention_maps(
        self, model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """Capture per-block attention probabilities ``[B, H, N, N]`` (see :func:`tp_vit_plugins.utils.attention_maps`)."""

    @abc.abstractmethod
    def eager_attention(self, model: nn.Module) -> contextlib.AbstractContextManager[list[tuple[str, nn.Module]]]:
        """Force the eager attention path inside the block; restore it on exit."""

    # -- token cascade -------------------------------------------------------------------
    @abc.abstractmethod
    def token_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The blocks tokens flow through, in order (one global token sequence); refuses other models."""

    @abc.abstractmethod
    def block_halves(self, block: nn.Module) -> BlockHalves | None:
        """The two residual halves of a block's forward, or ``None`` for a block type the host does not split."""

    @abc.abstractmethod
    def block_attention(self, block: nn.Module) -> nn.Module | None:
        """A block's attention module (``None``: none)."""

    @abc.abstractmethod
    def cascade_attention(self, attn: nn.Module, x: torch.Tensor, num_prefix: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The attention of ``attn`` on ``x [B, N, C]`` with the cascade's key mask, kept heads and statistics."""

    @abc.abstractmethod
    def attention_forward(self, attn: nn.Module) -> Callable[..., torch.Tensor]:
        """The unbound forward of ``attn`` that returns a tensor ``[B, N, C]``."""

    def wrap_attention_call(self, attn: nn.Module, fn: Callable[..., torch.Tensor]) -> Callable[..., Any]:
        """``fn(x, attn_mask=None) -> [B, N, C]`` in the calling convention the host's blocks use for ``attn``."""
        return fn

    def unwrap_attention_call(self, forward: Any) -> Any:
        """The inverse of :meth:`wrap_attention_call`."""
        return forward

    @abc.abstractmethod
    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        """``(rows, cols)`` of the patch grid at the configured image size."""

    @abc.abstractmethod
    def patch_embed_macs(self, model: nn.Module) -> int:
        """MACs of the patch embedding for one image."""

    @abc.abstractmethod
    def reads_prefix_only(self, model: nn.Module) -> bool:
        """The classifier reads the prefix tokens alone (then the last block's patch tokens are unused)."""

    def averages_patch_tokens(self, model: nn.Module) -> bool:
        """The classifier is a plain mean over the tokens."""
        return False

    def readout_macs(self, model: nn.Module, tokens: int, patches: int) -> int:
        """MACs of what reads the last block's ``tokens`` (``patches`` of them patches) before the classifier (0 by default)."""
        return 0

    def has_class_token(self, model: nn.Module) -> bool:
        """The sequence starts with a class token."""
        return True

    def positional_attention(self, model: nn.Module) -> bool:
        """The attention reads each token's grid position (relative bias, rotary embedding)."""
        return False

    def head_mixers(self, attn: nn.Module) -> list[nn.Linear]:
        """Talking-heads mixers ``[H, H]`` of ``attn`` (none by default): no per-input head skipping there."""
        return []

    def attention_pool(self, model: nn.Module) -> nn.Module | None:
        """An attention-pool head left whole, or ``None``."""
        return None

    # -- storage ---------------------------------------------------------------------------
    @abc.abstractmethod
    def save_spec(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(spec, tensors)``: a JSON-able description that rebuilds ``model`` and every tensor to save."""

    @abc.abstractmethod
    def rebuild(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
        """The model of ``spec`` with ``tensors`` loaded strictly (outputs equal the saved model's)."""


_HOSTS: list[Host] = []


def register_host(host: Host, *, first: bool = False) -> Host:
    """Add a host to the registry (``first=True``: ask it before the others). Returns ``host``.

    A host registered under a name already taken replaces the earlier one.

    Raises:
        TypeError: ``host`` is not a :class:`Host` instance.
    """
    if not isinstance(host, Host):
        raise TypeError(f"register_host expects a tp_vit_plugins.hosts.Host instance, got {type(host).__name__}")
    _HOSTS[:] = [h for h in _HOSTS if h.name != host.name]
    _HOSTS.insert(0, host) if first else _HOSTS.append(host)
    return host


def registered_hosts() -> list[Host]:
    """The registered hosts, in the order :func:`host_for` asks them."""
    return list(_HOSTS)


def host_for(model: object) -> Host:
    """The host that claims ``model`` (the first registered one that does). Changes nothing.

    Raises:
        UnsupportedModelError: ``model`` is not an ``nn.Module`` or no host claims it.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for host in sorted(_HOSTS, key=lambda h: h.fallback):  # stable: registration order within each kind
        if host.claims(model):
            return host
    names = ", ".join(h.name for h in _HOSTS)
    raise UnsupportedModelError(
        f"{type(model).__name__} (module {type(model).__module__}) belongs to no registered host ({names}). Nothing was changed."
    )
