"""What the CP-ViT cascade replaces in a timm ViT: block halves and the scoring attention.

* :func:`block_halves` — a timm block's forward as its two residual halves (a table of timm's
  block types, each locked to the block's own forward by the tests), so tokens can leave a
  block between its attention and its MLP;
* :func:`cascade_attention` — timm's eager attention path plus the cascade's statistics, key
  mask and per-input head skipping (BEiT's relative bias and EVA's rotary embedding follow
  their tokens; CaiT's talking heads);
* :func:`token_blocks`, :func:`patch_grid`, :func:`reads_prefix_only` — the token sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Attention, apply_rot_embed_cat
from timm.models.beit import Block as BeitBlock
from timm.models.cait import LayerScaleBlock
from timm.models.eva import EvaBlock, EvaBlockPostNorm
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

from ..base import BlockHalves, linear_macs
from .families import PrunableTalkingHeadAttn, head_tables, rope_with_identity_prefix, select_rope_dims
from .structure import attention_modules
from .support import ATTENTION_TYPES, UnsupportedModelError, attention_pool, check_supported


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
    """The two residual halves of a timm block's forward, or ``None`` for a type not in the tables."""
    return _HALVES.get(type(block))


def block_attention(block: nn.Module) -> nn.Module | None:
    """A block's attention module, ``block.attn`` (``None``: none)."""
    return getattr(block, "attn", None)


def attention_forward(attn: nn.Module) -> Callable[..., torch.Tensor]:
    """The unbound forward of ``attn`` (it returns a tensor)."""
    return type(attn).forward


#: Families whose heads and widths prune but whose tokens cannot be dropped, and why.
_NO_TOKEN_PATCH = {
    "SwinTransformer": "Swin (attention within windows of a 2-D grid; there is no global token sequence)",
}


def token_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks tokens flow through, in order (one global token sequence).

    Raises:
        TypeError: ``model`` is not a supported timm ``VisionTransformer``-family model
            (:func:`~tp_vit_plugins.hosts.timm.support.check_supported`).
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
    select_heads: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
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
        heads_kept: Heads each input keeps (``None`` = all); needs ``select_heads``.
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
        select_heads: The method's head choice, ``(probs [B, H, N, N], num_prefix, k) -> [B, k]``
            (ascending head indices per input), used when ``heads_kept < H``.

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
    if select_heads is None:
        raise ValueError("heads_kept below the head count needs select_heads (the method's per-input head choice)")
    heads = select_heads(stats, num_prefix, heads_kept)  # [B, k]
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
#: images at a time as fit in ``CHUNK_BYTES`` (at least one), so they stay in a typical L2 cache.
CHUNK_BYTES = 1 << 20


def _attend_whole(a, q, k, v, bias, reduce_probs, observe) -> torch.Tensor:
    """:func:`_attend_in_chunks` as one chunk (what a compiled or exported graph runs)."""
    logits = (q * a.scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(dim=-1)
    observe(reduce_probs(probs))
    return a.attn_drop(probs) @ v


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
    if torch.compiler.is_compiling():  # export / compile: one piece, no branch or loop on the (symbolic) batch size
        return _attend_whole(a, q, k, v, bias, reduce_probs, observe)
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
    observe(stats[0] if len(stats) == 1 or stats[0] is None else torch.cat(stats))  # None: no statistic wanted
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


def reads_prefix_only(model: nn.Module) -> bool:
    """The head reads the prefix tokens alone (``global_pool="token"``: class / distillation token).

    Then the patch tokens leaving the last block are never read, and neither is anything the
    last block's MLP computes for them.
    """
    family = isinstance(model, VisionTransformer) or type(model).__name__ in ("Eva", "Beit")
    return family and getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None


def averages_patch_tokens(model: nn.Module) -> bool:
    """The model's head is a plain mean over its tokens (``global_pool="avg"``, no attention pool)."""
    return getattr(model, "global_pool", None) == "avg" and getattr(model, "attn_pool", None) is None


def readout_macs(model: nn.Module, tokens: int, patches: int) -> int:
    """MACs of what reads the last block's ``tokens`` (``patches`` of them patch tokens) before the classifier.

    CaiT's class-attention blocks (the class token attends to itself and the patch tokens: its
    query, projection and MLP on one token, keys and values on ``1 + patches``) and an
    attention-pool head (latent queries over the patch tokens); 0 for a pooled / class-token head.
    """
    macs = 0
    for blk in getattr(model, "blocks_token_only", None) or ():
        a, n = blk.attn, 1 + patches  # the class token, then the patch tokens
        macs += a.q.in_features * a.q.out_features + n * (linear_macs(a.k) + linear_macs(a.v))
        macs += 2 * n * a.q.out_features + a.proj.in_features * a.proj.out_features + linear_macs(blk.mlp)
    pool = attention_pool(model)
    if pool is not None:
        n = tokens if getattr(model, "pool_include_prefix", False) else patches
        L, dim = pool.latent_len, pool.q.out_features
        macs += L * linear_macs(pool.q) + n * linear_macs(pool.kv) + 2 * L * n * dim
        macs += L * (linear_macs(pool.proj) + linear_macs(getattr(pool, "mlp", None)))
    return macs
