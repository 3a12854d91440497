"""Apply / remove the CP-ViT cascade on a timm ViT (the only token code touching timm).

``apply_cascade`` replaces every block's ``attn.forward`` with an instance attribute (the
class and its weights are untouched):

* blocks whose scores are needed compute attention eagerly (on CPU in cache-sized batch
  chunks that only keep each image's token statistic, :data:`CHUNK_BYTES`), feed the
  cumulative token / head statistics (:mod:`tp_vit_plugins.tokens.cascade`), and, where head skipping is on,
  compute ``attn @ v`` and the output projection only for each input's kept heads;
* other blocks call the module's own forward (fused SDPA stays fused);
* at each pruning point the lowest-scoring patch tokens are gathered out (``mode="drop"``:
  later layers really run on fewer tokens; ``fold="merge"``: merged into kept ones) or
  recorded as masked keys (``mode="mask"``: shapes unchanged, for analysis). By default
  (``prune_at="mlp"``) this happens inside the pruning block, between its attention and its
  MLP: the block's ``forward`` is replaced by its two residual halves (:func:`block_halves`,
  a table of timm's block types, each locked to the block's own forward by the tests) with
  the pruning in between; ``prune_at="block"`` prunes in a forward hook after the whole block
  (any block type). With dropped tokens both give the same outputs (the MLP works per
  token); pruning before the MLP saves the MLP of the tokens that go.
* with merged tokens, an average-pool head weighs every token by the patches it stands for
  (``model.forward_head`` replaced; ``weighted_pool``).

**Per-image determinism.** An image's output never depends on the other images in its batch:
token scores, top-k and head skipping are per image, the ``"random"`` baseline scores a fixed
random value per grid position, and the token counts are one fixed schedule. The paper's
layer-aware attention-range adjustment (``beta > 0``) measures how local attention is; at run
time that would be an average over the batch, so here it is **calibrated** once on calibration
data (:meth:`Cascade.calibrate`, or ``apply_cascade(..., calib=loader)``) into fixed per-block
counts (this library's reconstruction; the paper adjusts per batch).

``remove_cascade`` deletes the instance attributes and hooks: the model behaves exactly as
before. Works on tp-pruned models (any ``num_heads`` / ``head_dim``).

**Families.** Every family with one global token sequence: ViT / DeiT / DeiT3 / SigLIP-style
(the attention pool reads the tokens that are left), BEiT and EVA02 (their relative position
bias and rotary embedding are gathered at each kept token's grid position, so dropping a
token equals masking it as a key), CaiT (talking heads: the proportional-attention bias and
the key mask apply after the ``proj_l`` mixing, masked keys get no weight from ``proj_w``,
no head skipping; the class-attention blocks read the tokens that are left). Swin is
refused (windows over a 2-D grid: no global sequence). Merged tokens (``fold="merge"``)
keep the grid position of the kept token they merge into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Attention, apply_rot_embed_cat
from timm.models.beit import Block as BeitBlock
from timm.models.cait import LayerScaleBlock
from timm.models.eva import EvaBlock, EvaBlockPostNorm
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

from ..core.adapter import ATTENTION_TYPES, UnsupportedModelError, attention_modules, check_supported, prefix_tokens
from ..core.calibration import iter_batches
from ..core.families import PrunableTalkingHeadAttn, head_tables, rope_with_identity_prefix, select_rope_dims
from .maths import (
    DEFAULT_PRUNE_AT,
    DEFAULT_SCHEDULE_STEPS,
    DEFAULT_START_BLOCK,
    adjusted_count,
    attention_range,
    gather_tokens,
    head_scores,
    heads_kept,
    keep_schedule,
    token_scores,
    topk_sorted,
)

__all__ = [
    "Cascade",
    "apply_cascade",
    "remove_cascade",
    "find_cascade",
    "cascade_attention",
    "patch_grid",
    "patch_embed_macs",
    "token_blocks",
    "TOKEN_MODES",
    "TOKEN_SCORES",
    "TOKEN_FOLDS",
    "PRUNE_SITES",
    "SCORE_SITES",
    "BlockHalves",
    "block_halves",
    "reads_prefix_only",
    "merge_into_kept",
    "CHUNK_BYTES",
]

#: Token modes: really drop tokens, or keep shapes and mask them out as keys.
TOKEN_MODES = ("drop", "mask")
#: What happens to pruned tokens: dropped (the paper), or merged into their most similar kept
#: token with size-weighted averages and proportional attention (this library's extension).
TOKEN_FOLDS = ("drop", "merge")
#: Token scorers: CP-ViT's cumulative score, and two baselines on the same schedule —
#: EViT-style attention of the class token in the current block, and random scores.
TOKEN_SCORES = ("cumulative", "cls", "random")
#: Where tokens leave a pruning block: ``"mlp"``, between the block's attention and its MLP (the
#: MLP already runs on the kept tokens, as in EViT and ToMe), or ``"block"``, after the whole block.
PRUNE_SITES = ("mlp", "block")
#: Which blocks' attention the cumulative token score sums: every block up to the last pruning
#: point (the paper), or the pruning blocks only (the others keep fused attention).
SCORE_SITES = ("all", "prune")


@dataclass(frozen=True)
class BlockHalves:
    """A timm block's forward as its two residual halves: ``mlp(block, attn(block, x, **kw))`` is ``block(x, **kw)``.

    Attributes:
        attn: ``(block, x [B, N, C], **kwargs) -> [B, N, C]``, the stream after the attention residual
            (``kwargs``: what the block's forward takes besides ``x``, passed on to its attention).
        mlp: ``(block, x [B, N', C]) -> [B, N', C]``, the MLP residual (per token: any ``N'``).
    """

    attn: Callable[..., torch.Tensor]
    mlp: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _scaled(scale: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    return y if scale is None else scale * y


#: timm's block forwards, term by term (exact class match: a subclass may change its forward;
#: ``tests/test_cpvit.py`` locks every entry to the block's own forward).
_HALVES: dict[type, BlockHalves] = {
    Block: BlockHalves(  # ViT / DeiT / DeiT3 (pre-norm, LayerScale ls1 / ls2)
        lambda b, x, **kw: x + b.drop_path1(b.ls1(b.attn(b.norm1(x), **kw))),
        lambda b, x: x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)))),
    ),
    ResPostBlock: BlockHalves(  # post-norm ViT
        lambda b, x, **kw: x + b.drop_path1(b.norm1(b.attn(x, **kw))),
        lambda b, x: x + b.drop_path2(b.norm2(b.mlp(x))),
    ),
    EvaBlockPostNorm: BlockHalves(
        lambda b, x, **kw: x + b.drop_path1(b.norm1(b.attn(x, **kw))),
        lambda b, x: x + b.drop_path2(b.norm2(b.mlp(x))),
    ),
    **dict.fromkeys(
        (EvaBlock, BeitBlock),  # optional gamma_1 / gamma_2 layer scales
        BlockHalves(
            lambda b, x, **kw: x + b.drop_path1(_scaled(b.gamma_1, b.attn(b.norm1(x), **kw))),
            lambda b, x: x + b.drop_path2(_scaled(b.gamma_2, b.mlp(b.norm2(x)))),
        ),
    ),
    LayerScaleBlock: BlockHalves(  # CaiT's self-attention blocks
        lambda b, x: x + b.drop_path(b.gamma_1 * b.attn(b.norm1(x))),
        lambda b, x: x + b.drop_path(b.gamma_2 * b.mlp(b.norm2(x))),
    ),
}


def block_halves(block: nn.Module) -> BlockHalves | None:
    """The two residual halves of a timm block's forward, or ``None`` for a block type not in the table."""
    return _HALVES.get(type(block))


def merge_into_kept(
    x: torch.Tensor, sizes: torch.Tensor | None, keep: torch.Tensor, num_prefix: int, dropped: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the patch tokens ``keep`` and merge every other patch token into its most similar kept one.

    Similarity is the cosine of the token features; a merged token is the size-weighted
    average of everything merged into it (this library's extension: the CP-ViT paper drops
    pruned tokens; the merging follows ToMe's size-weighted averaging, with CP-ViT's
    cumulative score still choosing which tokens stay). Per image: no statistic crosses the batch.

    Computed as a running mean, ``x_k + sum_d s_d (x_d - x_k) / S_k`` with ``S_k`` the merged
    size, which equals ``(s_k x_k + sum_d s_d x_d) / S_k``: only the ``P - n`` dropped rows are
    scaled and added, and the kept rows are one ``index_select`` (cheaper on CPU than
    gathering, scaling and dividing all of them).

    Args:
        x: ``[B, num_prefix + P, C]`` tokens.
        sizes: ``[B, P]`` patches each patch token stands for (``None``: all 1).
        keep: ``[B, n]`` indices of the kept patch tokens (ascending).
        num_prefix: Leading prefix tokens (kept as they are).
        dropped: ``[B, P - n]`` the other patch indices, any order (computed when ``None``).

    Returns:
        ``(x [B, num_prefix + n, C], sizes [B, n])``.
    """
    out, merged_sizes = _merge(x, sizes, keep, num_prefix, dropped)
    return out, merged_sizes[:, num_prefix:]


def _merge(
    x: torch.Tensor, sizes: torch.Tensor | None, keep: torch.Tensor, num_prefix: int, dropped: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge_into_kept` returning the sizes with the prefix tokens' (1 each): ``[B, num_prefix + n]``."""
    B, N, C = x.shape
    p, n = num_prefix, keep.shape[1]
    m = N - p - n
    if m == 0:
        ones = x.new_ones(B, p, dtype=torch.float32)
        return x, torch.cat([ones, sizes if sizes is not None else x.new_ones(B, n, dtype=torch.float32)], dim=1)
    if dropped is None:
        drop_mask = torch.ones(B, N - p, dtype=torch.bool, device=x.device).scatter_(1, keep, False)
        dropped = drop_mask.nonzero()[:, 1].view(B, m)  # ascending per row
    image = torch.arange(B, device=x.device)[:, None]
    out = gather_tokens(x, keep, p)  # a new tensor: merged into in place
    dx = x.reshape(B * N, C).index_select(0, (dropped + (N * image + p)).view(-1))  # [B * m, C]
    kx = out[:, p:]
    # most similar kept token by cosine: a dropped token's own norm does not change its argmax
    sim = (dx.view(B, m, C) @ kx.transpose(1, 2)) / torch.linalg.vector_norm(kx, dim=-1).clamp_min(1e-12)[:, None]
    dst = (sim.max(-1).indices + ((p + n) * image + p)).view(-1)  # rows of out
    if sizes is None:
        ds, merged_sizes = x.new_ones(B * m, dtype=torch.float32), x.new_ones(B * (p + n), dtype=torch.float32)
    else:
        ds = sizes.gather(1, dropped).view(-1)
        merged_sizes = torch.cat([sizes.new_ones(B, p), sizes.gather(1, keep)], dim=1).view(-1)
    merged_sizes.index_add_(0, dst, ds)
    rows = out.view(B * (p + n), C)
    rows.index_add_(0, dst, (dx - rows.index_select(0, dst)) * (ds / merged_sizes[dst]).to(x.dtype)[:, None])
    return out, merged_sizes.view(B, p + n)


@dataclass
class _ForwardState:
    """What one forward pass carries from block to block."""

    scores: torch.Tensor | None = None  # [B, P_cur] cumulative token scores
    positions: torch.Tensor | None = None  # [B, P_cur] original grid index of each patch token
    key_mask: torch.Tensor | None = None  # [B, P] True = masked (mask mode)
    counts: list[int] = field(default_factory=list)  # patch tokens entering each block
    localities: list[float] = field(default_factory=list)
    heads_kept: list[int] = field(default_factory=list)
    sizes: torch.Tensor | None = None  # [B, P_cur] patches each token stands for (fold="merge")
    bias: torch.Tensor | None = None  # [B, 1, 1, N] log(size) logit bias, made once per merge


#: Families whose heads and widths prune but whose tokens cannot be dropped, and why.
_NO_TOKEN_PATCH = {
    "SwinTransformer": "Swin (attention within windows of a 2-D grid; there is no global token sequence)",
}


def token_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks tokens flow through, in order (one global token sequence).

    Raises:
        TypeError: ``model`` is not a supported timm ``VisionTransformer``-family model
            (:func:`~tp_vit_plugins.core.adapter.check_supported`).
    """
    check_supported(model)
    family = _NO_TOKEN_PATCH.get(type(model).__name__)
    if family is not None:
        raise UnsupportedModelError(
            f"{family}: the token cascade (and token merging) does not support it yet; prune its heads and widths "
            "with ViTPruner / GOHSP / VTP instead. Nothing was changed."
        )
    attention_modules(model)  # EVA / BEiT attention converted (exact, idempotent)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not all(
        isinstance(getattr(b, "attn", None), ATTENTION_TYPES) for b in blocks
    ):
        raise TypeError(
            f"{type(model).__name__} is not a timm VisionTransformer-family model "
            "(expected .blocks made of blocks with a timm.layers.Attention .attn)"
        )
    return list(blocks)


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid.

    Raises:
        TypeError: The patch embedding has no fixed grid (dynamic image sizes).
    """
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise TypeError("the patch embedding has no fixed grid_size; dynamic image sizes are not supported")
    return int(grid[0]), int(grid[1])


def patch_embed_macs(model: nn.Module) -> int:
    """MACs of the patch-embedding convolution for one image."""
    conv = model.patch_embed.proj
    rows, cols = patch_grid(model)
    return rows * cols * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]


def cascade_attention(
    attn: Attention,
    x: torch.Tensor,
    num_prefix: int = 1,
    key_mask: torch.Tensor | None = None,
    heads_kept: int | None = None,
    observe: Callable[[torch.Tensor], None] | None = None,
    logit_bias: torch.Tensor | None = None,
    observe_keys: Callable[[torch.Tensor], None] | None = None,
    positions: torch.Tensor | None = None,
    rope: torch.Tensor | None = None,
    reduce_probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The timm ``Attention.forward`` eager path, plus what the cascade needs.

    With the defaults this computes exactly what timm's own forward computes (fused or
    eager; ``tests/test_cpvit.py`` locks the two together on every supported family). The
    cascade adds: ``key_mask`` (mask mode: masked patches are neither keys nor scored
    queries), ``observe(probs)`` (the softmax probabilities ``[B, H, N, N]`` before dropout,
    masked query rows zeroed) and ``heads_kept`` (every input keeps only its ``k``
    highest-scoring heads; ``attn @ v`` and the output projection run on those alone). Token
    merging baselines add ``logit_bias`` (``[B, 1, 1, N]``, e.g. ``log(size)`` for proportional
    attention) and read the keys through ``observe_keys(k)`` (``[B, H, N, d]``).

    Args:
        attn: A (possibly tp-pruned and synced) timm ``Attention``.
        x: Tokens ``[B, N, C]``.
        num_prefix: Leading prefix tokens (never masked, not scored).
        key_mask: ``[B, N - num_prefix]``, ``True`` = masked patch.
        heads_kept: Heads each input keeps (``None`` = all).
        observe: Callback receiving the attention probabilities.
        logit_bias: Added to the attention logits before the softmax.
        observe_keys: Callback receiving the (normed) keys.
        positions: ``[B, N - num_prefix]`` grid index of every patch token (``None``: all
            patches in grid order). Position-indexed terms follow their tokens: BEiT's
            relative position bias and EVA's rotary embedding.
        rope: EVA's rotary embedding for the full grid, ``[P, 2 * d]`` (``[sin, cos]``).
        reduce_probs: A per-image statistic of the probabilities, ``[b, H, N, N] -> [b, ...]``:
            ``observe`` then receives that statistic for the whole batch instead of the
            probabilities, and without a key mask or head skipping the attention runs over the
            batch in chunks whose probabilities stay in the CPU cache (:data:`CHUNK_BYTES`; the
            full ``[B, H, N, N]`` tensor is never built; one chunk on other devices).

    Returns:
        ``[B, N, C_out]``.
    """
    a = attn
    B, N, _ = x.shape
    H, d = a.num_heads, a.head_dim
    gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
    q, k, v = a.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    if rope is not None:  # EVA: rotate each patch token by its own grid position
        rope = select_rope_dims(a, rope)  # the head dims this attention kept
        if positions is not None:
            rope = rope[positions][:, None]  # [B, 1, P_cur, 2d]
        rope = rope_with_identity_prefix(rope, num_prefix)
        half = bool(getattr(a, "rotate_half", False))
        q, k = apply_rot_embed_cat(q, rope, half=half).type_as(v), apply_rot_embed_cat(k, rope, half=half).type_as(v)
    if head_tables(a):  # BEiT: the relative position bias between the tokens that are left
        rel = a._get_rel_pos_bias()  # [1, H, N0, N0]
        if positions is not None:
            idx = torch.cat([torch.arange(num_prefix, device=x.device).expand(B, -1), positions + num_prefix], dim=1)
            rel = rel[0][:, idx[:, :, None], idx[:, None, :]].transpose(0, 1)  # [B, H, N, N]
        logit_bias = rel if logit_bias is None else rel + logit_bias
    if observe_keys is not None:
        observe_keys(k)
    if observe is not None and reduce_probs is not None:
        full_heads = heads_kept is None or heads_kept >= H
        if key_mask is None and full_heads and not isinstance(a, PrunableTalkingHeadAttn):
            y = _attend_in_chunks(a, q, k, v, logit_bias, reduce_probs, observe).transpose(1, 2).reshape(B, N, H * d)
            y = a.norm(y)
            y = y * gate if gate is not None else y
            return a.proj_drop(a.proj(y))
        sink = observe
        observe = lambda probs: sink(reduce_probs(probs))  # noqa: E731
    if isinstance(a, PrunableTalkingHeadAttn):
        return _talking_heads(a, q, k, v, num_prefix, key_mask, heads_kept, observe, logit_bias)
    if observe is None and key_mask is None and (heads_kept is None or heads_kept >= H) and a.fused_attn:
        # nothing to observe: the fused kernel, with the bias as an additive mask (proportional attention)
        bias = logit_bias.to(q.dtype) if logit_bias is not None else None
        p_drop = a.attn_drop.p if a.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop, scale=a.scale)
        y = a.norm(y.transpose(1, 2).reshape(B, N, H * d))
        y = y * gate if gate is not None else y
        return a.proj_drop(a.proj(y))
    logits = (q * a.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
    if logit_bias is not None:
        logits = logits + logit_bias
    masked = None
    if key_mask is not None:
        pad = torch.zeros(B, num_prefix, dtype=torch.bool, device=x.device)
        masked = torch.cat([pad, key_mask], dim=1)
        logits = logits.masked_fill(masked[:, None, None, :], float("-inf"))
    probs = logits.softmax(dim=-1)
    stats = probs if masked is None else probs.masked_fill(masked[:, None, :, None], 0.0)
    if observe is not None:
        observe(stats)
    probs = a.attn_drop(probs)
    if heads_kept is None or heads_kept >= H:
        y = (probs @ v).transpose(1, 2).reshape(B, N, H * d)
        y = a.norm(y)
        y = y * gate if gate is not None else y
        return a.proj_drop(a.proj(y))
    heads = topk_sorted(head_scores(stats, num_prefix), heads_kept)  # [B, k]
    idx = heads[:, :, None, None]
    out = probs.gather(1, idx.expand(-1, -1, N, N)) @ v.gather(1, idx.expand(-1, -1, N, d))  # [B, k, N, d]
    out = out.transpose(1, 2)  # [B, N, k, d]
    if not isinstance(a.norm, nn.Identity) or gate is not None:  # need the full [B, N, attn_dim] layout
        full = out.new_zeros(B, N, H, d).scatter(2, heads[:, None, :, None].expand(-1, N, -1, d), out)
        y = a.norm(full.reshape(B, N, H * d))
        y = y * gate if gate is not None else y
        return a.proj_drop(a.proj(y))
    w = a.proj.weight.view(a.proj.out_features, H, d)  # [C, H, d]
    w_kept = w[:, None].expand(-1, B, -1, -1).gather(2, heads[None, :, :, None].expand(w.shape[0], -1, -1, d))
    y = torch.einsum("bnkd,cbkd->bnc", out, w_kept)
    if a.proj.bias is not None:
        y = y + a.proj.bias
    return a.proj_drop(y)


#: CPU cache budget of the scoring attention (:func:`cascade_attention`'s ``reduce_probs``): when the
#: batch's ``[B, H, N, N]`` probabilities exceed ``4 * CHUNK_BYTES``, they are computed for as many
#: images at a time as fit in ``CHUNK_BYTES`` (at least one). On a 2-core Xeon (2 MiB L2 per core),
#: DeiT-small's eager attention + token score at batch 64 took 113 ms in one piece and 60 ms in
#: chunks (fused SDPA without scores: 45 ms; ``python benchmarks/cascade_ops.py``); at 50 tokens and
#: batch 64 the whole batch is one chunk.
CHUNK_BYTES = 1 << 20


def _attend_in_chunks(
    a: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    reduce_probs: Callable[[torch.Tensor], torch.Tensor],
    observe: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """Eager attention ``softmax(q k^T * scale + bias) v`` over batch chunks, observing ``reduce_probs`` of each.

    Args:
        a: The attention module (``scale``, ``attn_drop``).
        q, k, v: ``[B, H, N, d]``.
        bias: ``[B or 1, H or 1, N, N or 1]`` logit bias, or ``None``.
        reduce_probs: Per-image statistic of a chunk's probabilities ``[b, H, N, N] -> [b, ...]``.
        observe: Receives the statistic of the whole batch.

    Returns:
        ``[B, H, N, d]``.
    """
    B, H, N, _ = q.shape
    per_image = H * N * N * q.element_size()
    step = B if q.device.type != "cpu" or B * per_image <= 4 * CHUNK_BYTES else max(1, CHUNK_BYTES // per_image)
    outs, stats = [], []
    for i in range(0, B, step):
        j = slice(i, i + step)
        logits = (q[j] * a.scale) @ k[j].transpose(-2, -1)
        if bias is not None:
            logits = logits + (bias[j] if bias.shape[0] > 1 else bias)
        probs = logits.softmax(dim=-1)
        stats.append(reduce_probs(probs))
        outs.append(a.attn_drop(probs) @ v[j])
    observe(stats[0] if len(stats) == 1 else torch.cat(stats))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _talking_heads(
    a: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_prefix: int,
    key_mask: torch.Tensor | None,
    heads_kept: int | None,
    observe: Callable[[torch.Tensor], None] | None,
    logit_bias: torch.Tensor | None,
) -> torch.Tensor:
    """CaiT's talking-heads attention with the cascade's additions (``q, k, v``: ``[B, H, N, d]``).

    The logits are mixed over heads by ``proj_l``; a proportional-attention bias and the key
    mask apply after that mixing, right before the softmax; the probabilities mixed by
    ``proj_w`` (whose bias would otherwise give masked keys weight) are zeroed at masked
    keys, so masking a key equals dropping it. Head skipping is not defined (heads are mixed).
    """
    B, H, N, d = q.shape
    if heads_kept is not None and heads_kept < H:
        raise ValueError("head skipping is not defined for talking-heads attention (CaiT): use head_keep_ratio=1.0")
    logits = a.proj_l(((q * a.scale) @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if logit_bias is not None:
        logits = logits + logit_bias
    masked = None
    if key_mask is not None:
        masked = torch.cat([torch.zeros(B, num_prefix, dtype=torch.bool, device=q.device), key_mask], dim=1)
        logits = logits.masked_fill(masked[:, None, None, :], float("-inf"))
    probs = a.proj_w(logits.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if masked is not None:
        probs = probs.masked_fill(masked[:, None, None, :], 0.0)
    if observe is not None:
        observe(probs if masked is None else probs.masked_fill(masked[:, None, :, None], 0.0))
    y = (a.attn_drop(probs) @ v).transpose(1, 2).reshape(B, N, H * d)
    return a.proj_drop(a.proj(a.norm(y)))


class _AfterBlock:
    """Forward hook of block ``index`` calling its cascade (an object, so ``copy.deepcopy`` of the model copies it too)."""

    def __init__(self, cascade: Cascade, index: int) -> None:
        self.cascade, self.index = cascade, index

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        return self.cascade._prune(self.index, out)


class _CascadeBlock:
    """Replacement ``block.forward`` of a pruning block (``prune_at="mlp"``): attention, prune, MLP."""

    def __init__(self, cascade: Cascade, index: int, block: nn.Module, halves: BlockHalves) -> None:
        self.cascade, self.index, self.block, self.halves = cascade, index, block, halves

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        h = self.halves.attn(self.block, x, **kwargs)
        pruned = self.cascade._prune(self.index, h)
        return self.halves.mlp(self.block, h if pruned is None else pruned)


class _CascadeAttention:
    """Replacement ``attn.forward`` bound to one block."""

    def __init__(self, cascade: Cascade, index: int, attn: Attention) -> None:
        self.cascade, self.index, self.attn = cascade, index, attn

    def __call__(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: torch.Tensor | None = None,
        shared_rel_pos_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c, a = self.cascade, self.attn
        if attn_mask is not None or is_causal or shared_rel_pos_bias is not None:
            raise ValueError(
                "the CP-ViT cascade does not support attn_mask / is_causal / a shared position bias (dropping tokens "
                "changes the sequence length they were built for); call tpv.tokens.remove_cascade(model) first"
            )
        bias = c.state.bias  # proportional attention: a merged token counts as many patches
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        st = c.state
        dropped = x.shape[1] < c.num_prefix + c.num_patches
        positions = st.positions if dropped else None  # grid order while nothing was dropped
        plain = self.index not in c.score_blocks and self.index not in c.head_blocks and st.key_mask is None
        if plain and bias is None and positions is None:
            return type(a).forward(a, x) if rope is None else type(a).forward(a, x, rope=rope)
        kept = None
        if self.index in c.head_blocks:
            kept = heads_kept(a.num_heads, c.head_keep_ratio)
            st.heads_kept.append(kept)
        observe, reduce = None, None
        if self.index in c.score_blocks and c._calibrating is None:  # the token statistic alone
            observe, reduce = partial(c._accumulate, self.index), c._statistic
        elif self.index in c.score_blocks:  # calibration also measures the attention range
            observe = partial(c._observe, self.index)
        return cascade_attention(a, x, c.num_prefix, st.key_mask, kept, observe, logit_bias=bias, positions=positions,
                                 rope=rope, reduce_probs=reduce)  # fmt: skip


class _SizeWeightedHead:
    """Replacement ``model.forward_head`` of an average-pool model with merged tokens.

    Scales every pooled token by ``n * size / sum(sizes)`` before the model's own head averages
    the ``n`` tokens, so the pool is the size-weighted mean: each original patch counts once,
    as it does in the dense model (with proportional attention, this library's extension of
    the merge fold). ``forward_features`` is untouched.
    """

    def __init__(self, cascade: Cascade, include_prefix: bool) -> None:
        self.cascade, self.include_prefix = cascade, include_prefix

    def __call__(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        c = self.cascade
        sizes = c.state.sizes  # [B, P_cur] or None (nothing merged in this forward)
        if sizes is not None and x.shape[1] == c.num_prefix + sizes.shape[1]:
            p = c.num_prefix
            if self.include_prefix:
                sizes = torch.cat([sizes.new_ones(sizes.shape[0], p), sizes], dim=1)
            w = (sizes * (sizes.shape[1] / sizes.sum(1, keepdim=True))).to(x.dtype)[..., None]
            x = x * w if self.include_prefix else torch.cat([x[:, :p], x[:, p:] * w], dim=1)
        return type(c.model).forward_head(c.model, x, pre_logits)


def reads_prefix_only(model: nn.Module) -> bool:
    """The head reads the prefix tokens alone (``global_pool="token"``: class / distillation token).

    Then the patch tokens leaving the last block are never read, and neither is anything the
    last block's MLP computes for them.
    """
    family = isinstance(model, VisionTransformer) or type(model).__name__ in ("Eva", "Beit")
    return family and getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None


def _averages_patch_tokens(model: nn.Module) -> bool:
    """The model's head is a plain mean over its tokens (``global_pool="avg"``, no attention pool)."""
    return getattr(model, "global_pool", None) == "avg" and getattr(model, "attn_pool", None) is None


class Cascade:
    """A CP-ViT cascade attached to one model (see :func:`apply_cascade`)."""

    def __init__(
        self,
        model: nn.Module,
        keep_ratio: float,
        head_keep_ratio: float,
        start_block: int,
        head_start_block: int,
        mode: str,
        beta: float,
        radius: int,
        score: str = "cumulative",
        seed: int = 0,
        schedule_power: float = 1.0,
        fold: str = "drop",
        schedule_steps: int | None = None,
        prune_at: str = "block",
        weighted_pool: bool = True,
        score_at: str = "all",
        trim_last: bool = False,
    ) -> None:
        self.model = model
        self.fold = fold
        self.prune_at = prune_at
        self.weighted_pool = weighted_pool
        self.score = score
        self._generator = torch.Generator().manual_seed(seed)
        self.blocks = token_blocks(model)
        self.depth = len(self.blocks)
        #: Position-indexed attention terms (BEiT's relative bias, EVA's rope) follow the kept tokens.
        self.positional = type(model).__name__ in ("Eva", "Beit")
        self.num_prefix = prefix_tokens(model)
        rows, self.grid_width = patch_grid(model)
        self.num_patches = rows * self.grid_width
        self.keep_ratio, self.head_keep_ratio = keep_ratio, head_keep_ratio
        self.start_block, self.head_start_block = start_block, head_start_block
        self.mode, self.beta, self.radius = mode, beta, radius
        self.schedule = keep_schedule(self.num_patches, self.depth, keep_ratio, start_block, schedule_power, schedule_steps)
        self.final_count = self.schedule[-1]
        prune_points = [i for i in range(self.depth - 1) if self.schedule[i + 1] < self.schedule[i]]
        self.last_point = prune_points[-1] if prune_points else -1
        #: The last block's MLP runs on the prefix tokens alone (see ``apply_cascade(trim_last=)``); only a
        #: cascade that prunes trims, so ``keep_ratio=1.0`` stays bit-identical to the model.
        self.trim_last = trim_last and prune_at == "mlp" and mode == "drop" and bool(prune_points) and reads_prefix_only(model)
        #: Blocks whose attention feeds the token score (they run eager attention). The ``"random"``
        #: baseline reads no attention (only a calibration of ``beta`` does).
        scoring = set(prune_points) if score_at == "prune" else set(range(self.last_point + 1))
        self.score_blocks = scoring if score != "random" or beta > 0 else set()
        self.head_blocks = set(range(head_start_block, self.depth)) if head_keep_ratio < 1.0 else set()
        self.state = _ForwardState()
        self.last = _ForwardState()
        self._handles: list = []
        #: Fixed patch-token count entering every block (``beta`` calibrated in; see :meth:`calibrate`).
        self.counts = list(self.schedule) if beta == 0 else None
        self._calibrating: dict[int, list[tuple[float, int]]] | None = None
        self._random_table = torch.rand(self.num_patches, generator=self._generator)

    # -------------------------------------------------------------- lifecycle
    def _attach(self) -> None:
        for i, blk in enumerate(self.blocks):
            blk.attn.forward = _CascadeAttention(self, i, blk.attn)
            if i > self.last_point and not (self.trim_last and i == self.depth - 1):  # later blocks never prune
                continue
            if self.prune_at == "mlp":
                blk.forward = _CascadeBlock(self, i, blk, block_halves(blk))
            else:
                self._handles.append(blk.register_forward_hook(_AfterBlock(self, i)))
        self._handles.append(self.blocks[0].register_forward_pre_hook(self._reset))
        own_head = "forward_head" in vars(self.model)  # someone's own replacement: left alone
        merged = self.fold == "merge" and self.mode == "drop"
        if self.weighted_pool and merged and _averages_patch_tokens(self.model) and not own_head:
            include = bool(getattr(self.model, "pool_include_prefix", False))
            self.model.forward_head = _SizeWeightedHead(self, include)

    def detach(self) -> None:
        """Remove every hook and patched forward; the model is exactly as before.

        Hooks are found in the blocks' own hook dicts (not through the handles), so a
        ``copy.deepcopy`` of a cascaded model detaches its own copies.
        """
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for blk in self.blocks:
            for hooks in (blk._forward_hooks, blk._forward_pre_hooks):
                mine = [
                    k for k, hook in hooks.items() if isinstance(hook, _AfterBlock) or getattr(hook, "__self__", None) is self
                ]
                for key in mine:
                    del hooks[key]
        for blk in self.blocks:
            if isinstance(blk.attn.__dict__.get("forward"), _CascadeAttention):
                del blk.attn.forward
            if isinstance(blk.__dict__.get("forward"), _CascadeBlock):
                del blk.forward
        if isinstance(self.model.__dict__.get("forward_head"), _SizeWeightedHead):
            del self.model.forward_head

    @torch.no_grad()
    def calibrate(self, loader: Iterable, max_batches: int | None = 8) -> list[int]:
        """Fix the attention-range adjustment into per-block token counts from calibration data.

        Every batch runs with the paper's adjustment (the count after each pruning point is
        moved towards the current count by ``beta * locality``); the localities are averaged
        per pruning point over all images, and the counts the averages give become
        :attr:`counts`, used for every later input. Without ``beta`` there is nothing to
        calibrate (the counts are the schedule).

        Args:
            loader: Yields image tensors or ``(images, target)`` tuples.
            max_batches: Use at most this many batches (``None``: all).

        Returns:
            The fixed counts ``[n_0, ..., n_{L-1}]``.

        Raises:
            ValueError: The loader yields no batch.
        """
        if self.beta == 0:
            return list(self.counts)
        was_training = self.model.training
        self.model.eval()
        self._calibrating = {}
        try:
            seen = 0
            for x in iter_batches(loader, max_batches, progress=False):
                self.model(x)
                seen += 1
            if not seen:
                raise ValueError("calibration loader yielded no batches")
            records = self._calibrating
        finally:
            self._calibrating = None
            self.model.train(was_training)
        counts = [self.num_patches]
        for index in range(self.depth - 1):
            current = counts[-1]
            if index > self.last_point:
                counts.append(current)
                continue
            pairs = records.get(index, [])
            loc = sum(v * b for v, b in pairs) / max(1, sum(b for _, b in pairs))
            n = adjusted_count(current, self.schedule[index + 1], self.final_count, index == self.last_point, loc, self.beta)
            counts.append(min(n, current))
        self.counts = counts
        return list(counts)

    # -------------------------------------------------------------- per forward
    def _reset(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self.counts is None and self._calibrating is None:
            raise RuntimeError(
                "this cascade has beta > 0 and is not calibrated: call cascade.calibrate(loader) (or "
                "apply_cascade(..., calib=loader)) so the attention-range adjustment becomes a fixed schedule"
            )
        B = x.shape[0]
        if x.shape[1] != self.num_prefix + self.num_patches:
            raise ValueError(f"expected {self.num_prefix + self.num_patches} tokens, got {x.shape[1]}")
        self.last = self.state
        pos = None
        if self.score == "random" or self._calibrating is not None or self.positional:  # these read grid positions
            pos = torch.arange(self.num_patches, device=x.device).expand(B, -1)
        self.state = _ForwardState(positions=pos, counts=[self.num_patches])

    def _statistic(self, probs: torch.Tensor) -> torch.Tensor | None:
        """The token statistic ``[b, P]`` from probabilities ``[b, H, N, N]`` (per image)."""
        if self.score == "cumulative":
            return token_scores(probs, self.num_prefix)
        if self.score == "cls":  # EViT-style: the class token's attention in this block
            rows = probs[:, :, 0] if getattr(self.model, "cls_token", None) is not None else probs.mean(2)
            return rows[..., self.num_prefix :].mean(1)
        return None  # "random": scores come from the fixed table at the pruning point

    def _accumulate(self, index: int, s: torch.Tensor | None) -> None:
        """Fold block ``index``'s statistic ``[B, P]`` into the running token scores."""
        st = self.state
        if s is not None:
            st.scores = s if self.score == "cls" or st.scores is None else st.scores + s
        if self.mode == "mask" and st.key_mask is not None and st.scores is not None:
            st.scores = st.scores.masked_fill(st.key_mask, 0.0)

    def _observe(self, index: int, probs: torch.Tensor) -> None:
        """Full-probability observer (calibration: the token statistic and the attention range)."""
        self._accumulate(index, self._statistic(probs))
        if self._calibrating is not None:
            st = self.state
            st.localities.append(attention_range(probs, st.positions, self.grid_width, self.num_prefix, self.radius))

    def _prune(self, index: int, out: torch.Tensor) -> torch.Tensor | None:
        """Drop, merge or mask tokens at block ``index``'s pruning point (``None``: ``out`` unchanged).

        Called with the block's output (``prune_at="block"``) or with the stream after its
        attention, before its MLP (``prune_at="mlp"``).
        """
        st = self.state
        if index == self.depth - 1 and self.trim_last:  # the head reads the prefix tokens alone
            return out[:, : self.num_prefix]
        if index > self.last_point or index + 1 >= self.depth:
            return None
        current = st.counts[-1]
        if self._calibrating is not None:  # calibration: the batch's attention range decides
            loc = st.localities[-1] if st.localities else 0.0
            self._calibrating.setdefault(index, []).append((loc, out.shape[0]))
            n = adjusted_count(current, self.schedule[index + 1], self.final_count, index == self.last_point, loc, self.beta)
        else:
            n = self.counts[index + 1]
        if n >= current:
            st.counts.append(current)
            return None
        st.counts.append(n)
        if self.score == "random":  # a fixed random value per grid position: per image, whatever the batch
            st.scores = self._random_table.to(out.device)[st.positions]
        if self.mode == "drop":
            dropped = None
            if self.fold == "merge":  # one ranking gives both sides
                order = st.scores.argsort(dim=1, descending=True, stable=True)
                keep, dropped = order[:, :n].sort(dim=1).values, order[:, n:]
            else:
                keep = topk_sorted(st.scores, n)
            st.scores = st.scores.gather(1, keep)
            if st.positions is not None:
                st.positions = st.positions.gather(1, keep)
            if self.fold == "merge":
                out, merged_sizes = _merge(out, st.sizes, keep, self.num_prefix, dropped)
                st.sizes = merged_sizes[:, self.num_prefix :]
                st.bias = merged_sizes.log()[:, None, None, :]
                return out
            return gather_tokens(out, keep, self.num_prefix)
        alive = ~st.key_mask if st.key_mask is not None else torch.ones_like(st.scores, dtype=torch.bool)
        masked_scores = st.scores.masked_fill(~alive, float("-inf"))
        keep = topk_sorted(masked_scores, n)
        st.key_mask = torch.ones_like(alive).scatter_(1, keep, False)
        return None


def find_cascade(model: nn.Module) -> Cascade | None:
    """The cascade currently applied to ``model``, if any."""
    for blk in getattr(model, "blocks", []):
        fwd = getattr(blk, "attn", None) and blk.attn.__dict__.get("forward")
        if isinstance(fwd, _CascadeAttention):
            return fwd.cascade
    return None


def apply_cascade(
    model: nn.Module,
    keep_ratio: float = 0.5,
    head_keep_ratio: float = 1.0,
    start_block: int | None = None,
    mode: str = "drop",
    beta: float = 0.0,
    radius: int = 1,
    head_start_block: int | None = None,
    score: str = "cumulative",
    seed: int = 0,
    schedule_power: float = 1.0,
    calib: Iterable | None = None,
    calib_batches: int | None = 8,
    fold: str | None = None,
    schedule_steps: int | None = DEFAULT_SCHEDULE_STEPS,
    prune_at: str = DEFAULT_PRUNE_AT,
    weighted_pool: bool = True,
    score_at: str = "all",
    trim_last: bool = True,
) -> Cascade:
    """Attach a CP-ViT cascade to a timm ViT (inference-time, per input).

    .. note:: **Measured on the zoo** (``benchmarks/RESULTS.md``, "Zoo: session 9 (tokens
       before the MLP)", no fine-tune, equal measured MACs, 3 seeds): with these defaults
       (start block 0, 3-stage stepped schedule, tokens merged before the pruning block's MLP,
       size-weighted average pool, last MLP trimmed for class-token heads) the cascade is
       ahead of ToMe-style merging at every target: +1.29 pt [+0.90, +1.66] at 80 % MACs,
       +1.90 [+1.48, +2.36] at 70 %, +2.47 [+2.03, +3.00] at 60 %, +5.03 [+4.38, +5.70] at 50 %
       (without the trim, which removes dead computation rather than choosing tokens better:
       +1.22 / +1.58 / +1.53 / +3.77, all intervals above 0); ahead of EViT-style pruning by
       +4.4 to +20.3 pt; above random scores on the same schedule on every zoo model. A 40.6 %
       MACs cut costs 0.96 pt on the zoo mean (dense 94.63 %). The paper's own pipeline (ramp
       from ``depth // 4``, dropped tokens after whole blocks) is ``start_block=depth // 4,
       schedule_steps=None, fold="drop", prune_at="block"``.

    Args:
        model: timm ``VisionTransformer`` family model (DeiT, distilled, register tokens,
            LayerScale, tp-pruned ones included).
        keep_ratio: Fraction of patch tokens still present in the last block, in ``(0, 1]``.
        head_keep_ratio: Fraction of heads each input keeps in blocks ``>= head_start_block``
            (1.0 = no head skipping).
        start_block: First block whose scores drop tokens (after it); default 0 (chosen on the zoo).
        mode: ``"drop"`` (gather tokens out) or ``"mask"`` (analysis: mask them as keys).
        beta: Attention-range adjustment strength (0 = plain schedule). With ``beta > 0`` the
            adjustment is calibrated on ``calib`` into fixed counts (see module docs).
        radius: Chebyshev radius of "near" patches for the attention range.
        head_start_block: First block with head skipping; default ``start_block``.
        score: Token scorer, one of :data:`TOKEN_SCORES` (``"cumulative"`` is CP-ViT; ``"cls"``
            and ``"random"`` are baselines on the identical schedule).
        seed: Seed of the ``"random"`` scorer.
        schedule_power: Ramp exponent of the keep schedule (1 = linear, < 1 drops more
            tokens in early blocks; see :func:`~tp_vit_plugins.tokens.cascade.keep_schedule`).
        fold: What pruned tokens become, one of :data:`TOKEN_FOLDS`: ``"merge"`` (the default
            in ``"drop"`` mode, chosen on the zoo: into the most similar kept token,
            size-weighted, with proportional attention ``+ log(size)`` in later blocks; this
            library's extension) or ``"drop"`` (the paper; the default in ``"mask"`` mode).
        schedule_steps: An int: the stepped schedule with that many pruning stages (default
            3, chosen on the zoo); ``None``: the ramp (see :func:`~tp_vit_plugins.cpvit.maths.keep_schedule`).
        calib: Calibration batches for ``beta > 0`` (required then).
        calib_batches: Use at most this many of them.
        prune_at: Where tokens leave a pruning block, one of :data:`PRUNE_SITES`: ``"mlp"``
            (after the block's attention, so its MLP runs on the kept tokens only, as EViT and
            ToMe reduce tokens; this library's extension, the paper reduces the FFN's tokens
            by its own ratio) or ``"block"`` (after the whole block). The block's attention
            scores the tokens either way.
        weighted_pool: With merged tokens, an average-pool head (``global_pool="avg"``) weights
            each token by the patches it stands for, so every original patch counts once in
            the mean, as in the dense model (this library's extension, like proportional
            attention; ``model.forward_head`` is replaced while the cascade is applied).
            ``False``: timm's plain mean over the tokens that are left.
        score_at: Which blocks' attention the cumulative score sums, one of :data:`SCORE_SITES`:
            ``"all"`` (every block up to the last pruning point, the paper's cumulative score)
            or ``"prune"`` (only the pruning blocks: the blocks in between keep timm's fused
            attention; the same as ``"all"`` on the ramp, which prunes after every block).
        trim_last: When the head reads the prefix tokens alone (``global_pool="token"``) and
            tokens leave before the MLP, the last block's MLP runs on the prefix tokens only:
            nothing computed for the patch tokens after the last attention is ever read, so
            the logits are the same (up to float rounding) and the MACs lower (this library's
            extension; the MACs it frees let the schedule keep more tokens at a MACs target).
            Only a cascade that prunes tokens trims; ``forward_features`` then returns the
            prefix tokens alone.

    Returns:
        The :class:`Cascade` (``cascade.last`` holds the counts of the latest forward).

    Raises:
        TypeError: Not a timm ViT, or a cascade is already applied.
        ValueError: Invalid ratio, block index, mode, beta or radius, or ``beta > 0`` without
            ``calib``.
    """
    blocks = token_blocks(model)
    if find_cascade(model) is not None:
        raise TypeError("a cascade is already applied; call remove_cascade(model) first")
    if any("forward" in vars(b) for b in blocks):
        raise TypeError("a token reduction already replaced a block's forward (e.g. a token-merging peer); remove it first")
    if score_at not in SCORE_SITES:
        raise ValueError(f"score_at must be one of {SCORE_SITES}, got {score_at!r}")
    if prune_at not in PRUNE_SITES:
        raise ValueError(f"prune_at must be one of {PRUNE_SITES}, got {prune_at!r}")
    odd = sorted({type(b).__name__ for b in blocks if block_halves(b) is None})
    if prune_at == "mlp" and odd:
        raise UnsupportedModelError(
            f"prune_at='mlp' needs the block's forward split at its MLP, which is not known for {', '.join(odd)}; "
            "use prune_at='block' (tokens leave after the whole block). Nothing was changed."
        )
    depth = len(blocks)
    start_block = DEFAULT_START_BLOCK if start_block is None else start_block
    head_start_block = start_block if head_start_block is None else head_start_block
    if mode not in TOKEN_MODES:
        raise ValueError(f"mode must be one of {TOKEN_MODES}, got {mode!r}")
    if fold is None:
        fold = "merge" if mode == "drop" else "drop"
    if fold not in TOKEN_FOLDS or (fold == "merge" and mode != "drop"):
        raise ValueError(f"fold must be one of {TOKEN_FOLDS} (merging needs mode='drop'), got fold={fold!r}, mode={mode!r}")
    if score not in TOKEN_SCORES:
        raise ValueError(f"score must be one of {TOKEN_SCORES}, got {score!r}")
    if not 0.0 < head_keep_ratio <= 1.0:
        raise ValueError(f"head_keep_ratio must lie in (0, 1], got {head_keep_ratio}")
    if not 0 <= head_start_block < depth:
        raise ValueError(f"head_start_block must lie in [0, {depth - 1}], got {head_start_block}")
    if not 0.0 <= beta <= 1.0 or radius < 0:
        raise ValueError(f"need 0 <= beta <= 1 and radius >= 0, got beta={beta}, radius={radius}")
    if beta > 0 and calib is None:
        raise ValueError(
            f"beta={beta} adjusts the schedule by attention range, which is calibrated once so every image gets "
            "the same counts whatever its batch: pass calib=<calibration loader> (or beta=0)"
        )
    keep_schedule(1, depth, keep_ratio, start_block, schedule_power, schedule_steps)  # validates the schedule
    talking = [b.attn for b in token_blocks(model) if isinstance(b.attn, PrunableTalkingHeadAttn)]
    if any(heads_kept(a.num_heads, head_keep_ratio) < a.num_heads for a in talking):
        raise ValueError(f"head_keep_ratio={head_keep_ratio} skips heads, which talking-heads attention (CaiT) mixes; use 1.0")
    cascade = Cascade(
        model, keep_ratio, head_keep_ratio, start_block, head_start_block, mode, beta, radius, score, seed, schedule_power,
        fold, schedule_steps, prune_at, weighted_pool, score_at, trim_last,
    )  # fmt: skip
    cascade._attach()
    if beta > 0:
        try:
            cascade.calibrate(calib, calib_batches)
        except Exception:
            cascade.detach()
            raise
    return cascade


def remove_cascade(model: nn.Module) -> None:
    """Remove the cascade from ``model`` (no-op if none is applied)."""
    cascade = find_cascade(model)
    if cascade is not None:
        cascade.detach()
