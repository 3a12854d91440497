"""EVA / EVA02, BEiT and CaiT attention in a form Torch-Pruning can prune (part of the timm adapter).

timm's ``EvaAttention``, BEiT's ``Attention`` and CaiT's ``TalkingHeadAttn`` cannot be pruned
as they are:

* their q / v biases are separate parameters concatenated with a constant zero k bias and
  applied with ``F.linear(x, qkv.weight, bias)`` — the ``qkv`` module is never called, so tp
  cannot trace which channels the biases belong to (EVA may also use three separate q / k /
  v projections);
* their forward reshapes the heads' output to the width of the block's *input*
  (``reshape(B, N, C)``), which only works while ``heads * head_dim == embed_dim``: any
  head or head-dim pruning breaks the next forward.

:func:`convert_attention` turns every such module, in place, into a subclass
(:class:`PrunableEvaAttention`, :class:`PrunableBeitAttention`,
:class:`PrunableTalkingHeadAttn`) with one fused ``qkv``
``nn.Linear`` whose bias holds ``[q_bias, 0, v_bias]``, the attributes the rest of the
library reads (``head_dim``, ``attn_dim``, ``q_norm`` / ``k_norm``), and a forward that
reshapes to ``num_heads * head_dim``. The conversion is exact (outputs are unchanged, fused
and eager) and idempotent; the state-dict keys change (``q_bias`` / ``v_bias`` /
``q_proj`` / ``k_proj`` / ``v_proj`` become ``qkv.weight`` / ``qkv.bias``), which
:func:`~tp_vit_plugins.save_pruned` / :func:`~tp_vit_plugins.load_pruned` handle.

What else these families carry and how it is kept consistent:

* BEiT's relative position bias table ``[R, H]`` has one column per head:
  :class:`~tp_vit_plugins.ViTPruner` removes the columns of the heads it removes; tp never
  touches it (it is an ignored parameter in :func:`~tp_vit_plugins.vit_pruning_kwargs`).
  A shared relative position bias (one table for all blocks) is refused.
* CaiT's talking-heads mixers (``proj_l`` / ``proj_w``, ``[H, H]``) lose the row and column
  of every removed head in the same way; its two class-attention blocks (``ClassAttn``)
  stay whole, and so does the residual stream, which they reshape to their input width.
* Swin's window attention has a relative position table per block (pruned like BEiT's);
  the residual streams stay whole (patch merging concatenates 2 x 2 neighbours, which tp
  cannot follow), and tokens cannot be dropped from windows.
* EVA02's rotary embedding is computed once for the full ``head_dim`` and shared by all
  blocks: :class:`~tp_vit_plugins.ViTPruner` removes head dims there in rotary pairs, the same
  share in every block, and records the dims each attention keeps (``rope_dims``), whose
  rotary columns its forward selects (:func:`select_rope_dims`).
* LayerScale-like ``gamma_1`` / ``gamma_2`` parameters of the blocks follow the residual
  stream (unwrapped parameters, axis 0); EVA's ``scale_norm`` LayerNorm and SwiGLU MLPs are
  ordinary layers to tp; EVA02's packed ``GluMlp`` is split into timm's ``SwiGLU`` first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import GluMlp, SwiGLU, apply_rot_embed_cat, maybe_add_mask, resolve_self_attn_mask
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.swin_transformer import WindowAttention
from torch import nn

__all__ = [
    "PrunableEvaAttention",
    "PrunableBeitAttention",
    "PrunableTalkingHeadAttn",
    "PrunableWindowAttention",
    "HeadMixer",
    "FAMILY_ATTENTIONS",
    "convert_attention",
    "needs_conversion",
    "head_tables",
    "head_mixers",
    "drop_heads",
    "has_rope",
    "rope_with_identity_prefix",
    "select_rope_dims",
    "rope_pairs",
]


def rope_with_identity_prefix(rope: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """The rotary embedding ``[..., N_patch, 2 * d]`` (``[sin, cos]``) with ``sin = 0, cos = 1`` rows for the prefix tokens.

    Rotating every token with it leaves the prefix tokens exactly unchanged (``x * 1 + rot(x) * 0``),
    as timm's slicing and concatenation along the token axis do; without that concatenation
    tp does not mistake the token axis for a channel axis.
    """
    if num_prefix == 0:
        return rope
    sin, cos = rope.tensor_split(2, -1)
    pad = (*sin.shape[:-2], num_prefix, sin.shape[-1])
    return torch.cat([torch.cat([sin.new_zeros(pad), sin], -2), torch.cat([cos.new_ones(pad), cos], -2)], -1)


def select_rope_dims(attn: nn.Module, rope: torch.Tensor) -> torch.Tensor:
    """The rotary embedding ``[..., 2 * d0]`` (``[sin, cos]``) restricted to the head dims ``attn`` kept.

    ``attn.rope_dims`` lists, in order, the original in-head dims a head-dim-pruned EVA
    attention still has (``None``: all). They are removed in rotary pairs
    (:func:`rope_pairs`), so every kept dim still meets its partner in the rotation.
    """
    dims = getattr(attn, "rope_dims", None)
    if dims is None:
        return rope
    sin, cos = rope.tensor_split(2, -1)
    idx = torch.as_tensor(dims, device=rope.device)
    return torch.cat([sin.index_select(-1, idx), cos.index_select(-1, idx)], -1)


def rope_pairs(head_dim: int, rotate_half: bool) -> list[tuple[int, int]]:
    """The in-head dims a rotary embedding rotates together: ``(2p, 2p + 1)``, or ``(p, p + d / 2)`` with ``rotate_half``."""
    half = head_dim // 2
    return [(p, p + half) for p in range(half)] if rotate_half else [(2 * p, 2 * p + 1) for p in range(half)]


class PrunableEvaAttention(EvaAttention):
    """timm's ``EvaAttention`` with one fused ``qkv`` (bias included) and a pruning-safe reshape.

    The maths is timm's (q / k norms, rotary embedding on patch tokens, optional
    ``scale_norm`` and sigmoid gate, fused SDPA or the eager path); the differences are
    that ``qkv`` is always one ``nn.Linear`` called as a module, the prefix tokens are
    rotated by the identity instead of being sliced off and concatenated back (same values,
    :func:`rope_with_identity_prefix`), and the heads' output is reshaped to
    ``num_heads * head_dim`` rather than to the input width. Build it with
    :func:`convert_attention`, not directly.
    """

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]`` (``rope``: the model's rotary embedding for the patch tokens)."""
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            rope = select_rope_dims(self, rope)
            rope, half = rope_with_identity_prefix(rope, self.num_prefix_tokens), bool(getattr(self, "rotate_half", False))
            # view_as: one consumer per unbind output, or tp splits qkv into as many parts as q / k have uses
            q = apply_rot_embed_cat(q.view_as(q), rope, half=half).type_as(v)
            k = apply_rot_embed_cat(k.view_as(k), rope, half=half).type_as(v)
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal=is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(B, N, -1))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class PrunableBeitAttention(BeitAttention):
    """BEiT's ``Attention`` with a biased fused ``qkv``, ``q_norm`` / ``k_norm`` identities and a pruning-safe reshape.

    The maths is timm's (relative position bias per head, plus an optional shared bias
    passed in, fused SDPA or the eager path). Build it with :func:`convert_attention`.
    """

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))


class HeadMixer(nn.Linear):
    """A ``[H, H]`` linear over the head axis (CaiT's ``proj_l`` / ``proj_w``); computes what ``nn.Linear`` does.

    Its own class lets tp be told (a customized pruner,
    :class:`~tp_vit_plugins.hosts.timm.pruning.HeadMixerPruner`) that its channels are heads, not
    the attention channels tp's tracing would otherwise pair them with.
    """


class PrunableTalkingHeadAttn(TalkingHeadAttn):
    """CaiT's talking-heads attention with the attributes the library reads and a pruning-safe reshape.

    The maths is timm's: logits mixed across heads by ``proj_l`` before the softmax and the
    probabilities mixed by ``proj_w`` after it (``[H, H]`` linears over the head axis), always
    eager (``fused_attn`` is ``False``; the probabilities :func:`~tp_vit_plugins.attention_maps`
    captures are those after ``proj_w``, which mixes rows that sum to 1 and need not). A removed
    head loses its q / k / v channels and its row and column of ``proj_l`` and ``proj_w``
    (:func:`drop_heads`); because the mixers couple heads, that is not the same as zeroing
    the head in the dense model. Build it with :func:`convert_attention`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
        attn = self.attn_drop(self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1)))


class PrunableWindowAttention(WindowAttention):
    """Swin's window attention with the attributes the library reads (``head_dim``, ``attn_dim``, ``q_norm`` / ``k_norm``).

    timm's forward is used unchanged (it already reshapes to the attention width); the
    relative position bias table ``[(2W - 1)^2, H]`` loses the columns of removed heads
    (:func:`drop_heads`). Build it with :func:`convert_attention`.
    """


#: timm attention class -> the prunable subclass it is converted into.
FAMILY_ATTENTIONS: dict[type[nn.Module], type[nn.Module]] = {
    EvaAttention: PrunableEvaAttention,
    BeitAttention: PrunableBeitAttention,
    TalkingHeadAttn: PrunableTalkingHeadAttn,
    WindowAttention: PrunableWindowAttention,
}


def needs_conversion(m: nn.Module) -> bool:
    """Whether ``m`` is a timm EVA / BEiT attention not converted yet."""
    return type(m) in FAMILY_ATTENTIONS


def _fused_qkv(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [3A, C], bias [3A] or None)`` of an EVA / BEiT attention, as one projection computes them."""
    if getattr(m, "qkv", None) is not None:
        weight = m.qkv.weight.detach()
    else:  # EVA with separate q / k / v projections
        weight = torch.cat([m.q_proj.weight.detach(), m.k_proj.weight.detach(), m.v_proj.weight.detach()])
    attn_dim = weight.shape[0] // 3
    if getattr(m, "q_bias", None) is not None:
        zeros = torch.zeros(attn_dim, dtype=weight.dtype, device=weight.device)
        return weight, torch.cat([m.q_bias.detach(), zeros, m.v_bias.detach()])
    if getattr(m, "q_proj", None) is not None:
        parts = [p.bias.detach() if p.bias is not None else None for p in (m.q_proj, m.k_proj, m.v_proj)]
        if all(b is None for b in parts):
            return weight, None
        zeros = torch.zeros(attn_dim, dtype=weight.dtype, device=weight.device)
        return weight, torch.cat([b if b is not None else zeros for b in parts])
    return weight, m.qkv.bias.detach() if m.qkv.bias is not None else None


def _convert_one(m: nn.Module) -> None:
    plain = getattr(m, "q_bias", None) is None and getattr(m, "q_proj", None) is None
    if plain and isinstance(getattr(m, "qkv", None), nn.Linear):
        qkv = m.qkv  # already one biased projection (CaiT, Swin, BEiT without q/v bias): the same parameters
    else:
        weight, bias = _fused_qkv(m)
        qkv = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(weight)
            if bias is not None:
                qkv.bias.copy_(bias)
        qkv.requires_grad_(next(iter(p.requires_grad for p in m.parameters()), True))
    weight = qkv.weight
    for name in ("q_bias", "v_bias"):
        if name in m._parameters:
            del m._parameters[name]
            setattr(m, name, None)
    if "k_bias" in m._buffers:
        del m._buffers["k_bias"]
        m.k_bias = None
    for name in ("q_proj", "k_proj", "v_proj"):
        if isinstance(m._modules.get(name), nn.Module):
            del m._modules[name]
            setattr(m, name, None)
    if "qkv" in m._modules:
        del m._modules["qkv"]
    m.qkv = qkv
    attn_dim = weight.shape[0] // 3
    m.head_dim = attn_dim // int(m.num_heads)
    m.attn_dim = attn_dim
    for name in ("q_norm", "k_norm", "norm"):  # BEiT / CaiT / Swin have none: identities keep one code path
        if not isinstance(getattr(m, name, None), nn.Module):
            setattr(m, name, nn.Identity())
    if isinstance(m, TalkingHeadAttn):
        m.fused_attn = False  # timm's talking heads have no fused path
        for mixer in (m.proj_l, m.proj_w):
            mixer.__class__ = HeadMixer
    m.__class__ = FAMILY_ATTENTIONS[type(m)]


def _split_glu(glu: GluMlp) -> SwiGLU:
    """The packed ``GluMlp`` of timm (one ``fc1`` whose halves are value and gate) as timm's ``SwiGLU`` (exact)."""
    w, b = glu.fc1.weight.detach(), glu.fc1.bias.detach() if glu.fc1.bias is not None else None
    half = w.shape[0] // 2
    gate_rows, value_rows = (slice(half, None), slice(None, half)) if glu.gate_last else (slice(None, half), slice(half, None))
    mlp = SwiGLU(w.shape[1], half, glu.fc2.out_features, bias=(b is not None, glu.fc2.bias is not None),
                 device=w.device, dtype=w.dtype)  # fmt: skip
    with torch.no_grad():
        for lin, rows in ((mlp.fc1_g, gate_rows), (mlp.fc1_x, value_rows)):
            lin.weight.copy_(w[rows])
            if b is not None:
                lin.bias.copy_(b[rows])
            lin.requires_grad_(glu.fc1.weight.requires_grad)
    mlp.act, mlp.drop1, mlp.norm, mlp.fc2, mlp.drop2 = glu.act, glu.drop1, glu.norm, glu.fc2, glu.drop2
    return mlp.train(glu.training)


def _packed_glus(model: nn.Module) -> list[tuple[nn.Module, str, GluMlp]]:
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is GluMlp and child.chunk_dim == -1
    ]


def convert_attention(model: nn.Module) -> nn.Module:
    """Convert every EVA / BEiT / CaiT / Swin attention of ``model`` in place (see module docs); idempotent.

    The q / v biases (and EVA's separate projections) become new ``qkv`` parameters; where the
    module already has one biased ``qkv`` it is kept. Create optimizers after this (as after
    any tp pruning, which replaces parameters too).

    Packed gated MLPs (timm's ``GluMlp``, EVA02's default: one ``fc1`` whose two halves are
    the value and the gate) become timm's ``SwiGLU`` (``fc1_g`` / ``fc1_x``), exactly: tp
    cannot pair the two halves of one ``fc1`` through ``chunk``.

    Returns:
        ``model``.
    """
    for m in [m for m in model.modules() if needs_conversion(m)]:
        _convert_one(m)
    for parent, name, glu in _packed_glus(model):
        setattr(parent, name, _split_glu(glu))
    return model


def head_tables(attn: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``attn`` with one column per head (BEiT's relative position bias table)."""
    table = getattr(attn, "relative_position_bias_table", None)
    return [table] if isinstance(table, nn.Parameter) else []


def head_mixers(attn: nn.Module) -> list[nn.Linear]:
    """``[H, H]`` linears of ``attn`` that mix heads (CaiT's talking-heads ``proj_l`` / ``proj_w``)."""
    if not isinstance(attn, TalkingHeadAttn):
        return []
    return [m for m in (attn.proj_l, attn.proj_w) if isinstance(m, nn.Linear)]


def drop_heads(attn: nn.Module, heads: Sequence[int]) -> None:
    """Remove ``heads`` from the per-head parameters tp does not know: table columns, mixer rows and columns.

    New parameters are created (never in place), so a :class:`~.snapshot.ModuleSnapshot`
    taken before still restores the old ones.
    """
    gone = {int(h) for h in heads}
    for table in head_tables(attn):
        keep = [h for h in range(table.shape[-1]) if h not in gone]
        attn.relative_position_bias_table = nn.Parameter(table.detach()[:, keep].clone(), requires_grad=table.requires_grad)
    for name in ("proj_l", "proj_w"):
        lin = getattr(attn, name, None)
        if lin not in head_mixers(attn):
            continue
        keep = torch.as_tensor([h for h in range(lin.in_features) if h not in gone])
        lin.weight = nn.Parameter(lin.weight.detach()[keep][:, keep].clone(), requires_grad=lin.weight.requires_grad)
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[keep].clone(), requires_grad=lin.bias.requires_grad)
        lin.in_features = lin.out_features = len(keep)


def has_rope(model: nn.Module) -> bool:
    """Whether ``model`` applies a rotary position embedding inside its attention (EVA02)."""
    return getattr(model, "rope", None) is not None
