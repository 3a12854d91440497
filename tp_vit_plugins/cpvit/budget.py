"""CP-ViT costs: analytic MACs of a cascade and the keep ratio that meets a MACs target."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..core.search import bisect_threshold
from ..hosts.timm.blocks import patch_embed_macs, patch_grid, reads_prefix_only, token_blocks
from ..hosts.timm.families import head_mixers
from ..hosts.timm.structure import block_layers, classifier_heads, head_layout, prefix_tokens
from ..hosts.timm.support import attention_pool
from .maths import DEFAULT_PRUNE_AT, DEFAULT_SCHEDULE_STEPS, DEFAULT_START_BLOCK, heads_kept, keep_schedule

__all__ = ["cascade_macs", "fit_keep_ratio", "MACS_NEUTRAL_OPTIONS"]


def cascade_macs(
    model: nn.Module,
    input_size: Sequence[int],
    keep_ratio: float = 0.5,
    head_keep_ratio: float = 1.0,
    start_block: int | None = None,
    head_start_block: int | None = None,
    counts: Sequence[int] | None = None,
    batch_size: int = 1,
    schedule_power: float = 1.0,
    schedule_steps: int | None = DEFAULT_SCHEDULE_STEPS,
    fold: str = "merge",
    prune_at: str = DEFAULT_PRUNE_AT,
    trim_last: bool = True,
) -> int:
    """Analytic MACs of one forward with the cascade (matmuls and convs, as FlopCounterMode counts).

    Exact on every supported family (``tests/test_cpvit.py`` checks it against
    :func:`~tp_vit_plugins.core.metrics.count_macs`): any MLP (EVA's SwiGLU included), CaiT's
    head mixers and class-attention blocks, a SigLIP-style attention pool.

    Args:
        model: timm ViT (pruned or not); only shapes are read.
        input_size: ``(C, H, W)`` of one image.
        keep_ratio, head_keep_ratio, start_block, head_start_block: As in
            :func:`~tp_vit_plugins.cpvit.patch.apply_cascade`.
        counts: Patch tokens entering each block, e.g. ``cascade.last.counts`` of a real
            forward (needed when ``beta > 0`` made the counts input-dependent); default: the
            schedule.
        batch_size: Images per forward.
        schedule_power, schedule_steps: The schedule's shape, as in ``apply_cascade``.
        fold: ``"merge"`` adds the similarity matmul of every merge (``pruned x kept x C``).
        prune_at: ``"mlp"``: a pruning block's MLP runs on the tokens entering the next block.
        trim_last: As in ``apply_cascade``: with ``prune_at="mlp"`` and a head reading the
            prefix tokens alone, the last block's MLP runs on the prefix tokens.

    Returns:
        Total multiply-accumulates.
    """
    depth = len(token_blocks(model))
    start_block = DEFAULT_START_BLOCK if start_block is None else start_block
    head_start_block = start_block if head_start_block is None else head_start_block
    rows, cols = patch_grid(model)
    P, prefix = rows * cols, prefix_tokens(model)
    if counts is None:
        counts = keep_schedule(P, depth, keep_ratio, start_block, schedule_power, schedule_steps)
    counts = list(counts)
    trim = trim_last and prune_at == "mlp" and reads_prefix_only(model) and min(counts) < P  # only a pruning cascade
    macs = patch_embed_macs(model)
    for i, b in enumerate(block_layers(model)):
        n = prefix + counts[i]
        H, d = head_layout(b.attn)
        skip = head_keep_ratio < 1 and i >= head_start_block
        kept = heads_kept(H, head_keep_ratio) if skip else H
        # per-token linears of the attention (qkv, an output gate), its output projection on the kept heads
        # (all heads when a head norm or gate needs the full layout), the two attention matmuls
        full = not isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity) or getattr(b.attn, "gate", None) is not None
        mixers = head_mixers(b.attn)  # CaiT's talking heads: linears over the heads of [N, N] maps
        macs += n * _linear_macs(b.attn, skip=(b.proj, *mixers)) + n * n * sum(_linear_macs(x) for x in mixers)
        macs += n * (H if full else kept) * d * b.proj.out_features + H * n * n * d + kept * n * n * d
        n_mlp = prefix + counts[i + 1] if prune_at == "mlp" and i + 1 < depth else n  # tokens through the MLP
        n_mlp = prefix if trim and i == depth - 1 else n_mlp
        macs += n_mlp * _linear_macs(getattr(b.block, "mlp", None))
        if fold == "merge" and i + 1 < depth and counts[i + 1] < counts[i]:
            macs += (counts[i] - counts[i + 1]) * counts[i + 1] * b.qkv.in_features  # similarity of pruned and kept tokens
    macs += _readout_macs(model, prefix + counts[-1] if not trim else prefix, counts[-1])
    macs += sum(h.in_features * h.out_features for h in classifier_heads(model) if isinstance(h, nn.Linear))
    return batch_size * macs


def _linear_macs(module: nn.Module | None, skip: Sequence[nn.Module] = ()) -> int:
    """MACs per token of every ``nn.Linear`` in ``module`` but ``skip`` (each applied once to every token)."""
    if module is None:
        return 0
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear) and m not in skip)


def _readout_macs(model: nn.Module, tokens: int, patches: int) -> int:
    """MACs of what reads the last block's ``tokens`` (``patches`` of them patch tokens) before the classifier.

    CaiT's class-attention blocks (the class token attends to itself and the patch tokens: its
    query, projection and MLP on one token, keys and values on ``1 + patches``) and an
    attention-pool head (latent queries over the patch tokens); 0 for a pooled / class-token head.
    """
    macs = 0
    for blk in getattr(model, "blocks_token_only", None) or ():
        a, n = blk.attn, 1 + patches  # the class token, then the patch tokens
        macs += a.q.in_features * a.q.out_features + n * (_linear_macs(a.k) + _linear_macs(a.v))
        macs += 2 * n * a.q.out_features + a.proj.in_features * a.proj.out_features + _linear_macs(blk.mlp)
    pool = attention_pool(model)
    if pool is not None:
        n = tokens if getattr(model, "pool_include_prefix", False) else patches
        L, dim = pool.latent_len, pool.q.out_features
        macs += L * _linear_macs(pool.q) + n * _linear_macs(pool.kv) + 2 * L * n * dim
        macs += L * (_linear_macs(pool.proj) + _linear_macs(getattr(pool, "mlp", None)))
    return macs


#: ``apply_cascade`` options that choose which tokens go or how the head pools, not how many go:
#: :func:`fit_keep_ratio` accepts and ignores them, so one options dict serves both calls.
MACS_NEUTRAL_OPTIONS = ("score", "seed", "weighted_pool", "score_at")


def fit_keep_ratio(model: nn.Module, input_size: Sequence[int], target: float, iterations: int = 30, **cascade_kwargs) -> float:
    """Largest CP-ViT keep ratio whose cascade keeps at most ``target`` of ``model``'s MACs.

    Bisects ``keep_ratio`` against :func:`cascade_macs` (analytic, exact for ``beta = 0``; with
    ``beta > 0`` the per-batch counts move around it).

    Args:
        model: timm ViT (pruned or not; only shapes are read).
        input_size: ``(C, H, W)`` of one image.
        target: Fraction of the cascade-free MACs to keep, in ``(0, 1]``.
        iterations: Bisection steps.
        **cascade_kwargs: ``head_keep_ratio``, ``start_block``, ``head_start_block``,
            ``schedule_power``, ``schedule_steps``, ``fold``, ``prune_at``, ``trim_last`` as in
            ``apply_cascade``; the options of :data:`MACS_NEUTRAL_OPTIONS` and ``mode="drop"``
            are accepted and ignored (they do not change the MACs).

    Returns:
        The keep ratio (1.0 when no token needs to go; ``1e-3``, the smallest ratio tried,
        when even that keeps more than ``target``: tokens alone cannot reach it).

    Raises:
        ValueError: ``target`` outside ``(0, 1]``, or ``mode="mask"`` (masked tokens keep their MACs).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    if cascade_kwargs.pop("mode", "drop") != "drop":
        raise ValueError("mode='mask' keeps every token's MACs (shapes unchanged): no keep ratio reaches a MACs target")
    cascade_kwargs = {k: v for k, v in cascade_kwargs.items() if k not in MACS_NEUTRAL_OPTIONS}
    dense = cascade_macs(model, input_size, keep_ratio=1.0, trim_last=False)

    def keeps_less(r: float) -> bool:  # True at small ratios: the cascade is within the target
        return cascade_macs(model, input_size, keep_ratio=r, **cascade_kwargs) / dense <= target

    if keeps_less(1.0):
        return 1.0
    lo, _ = bisect_threshold(keeps_less, 1e-3, 1.0, iterations)  # invariant: keeps_less(lo) or lo == 1e-3
    return lo
