"""CP-ViT costs: analytic MACs of a cascade and the keep ratio that meets a MACs target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.search import bisect_threshold
from ..hosts import host_for, linear_macs
from .config import CascadeConfig, with_options
from .maths import heads_kept, keep_schedule

__all__ = ["cascade_macs", "fit_keep_ratio"]


def cascade_macs(
    model: nn.Module,
    input_size: Sequence[int],
    config: CascadeConfig | str | None = None,
    *,
    counts: Sequence[int] | None = None,
    batch_size: int = 1,
    **options: Any,
) -> int:
    """Analytic MACs of one forward with the cascade (matmuls and convs, as FlopCounterMode counts).

    Exact on every supported family (the tests check it against
    :func:`~tp_vit_plugins.count_macs`): any MLP (EVA's SwiGLU included), CaiT's head mixers
    and class-attention blocks, a SigLIP-style attention pool. Options that choose *which*
    tokens go (``score``, ``seed``, ``weighted_pool``, ``score_at``) do not change the MACs.

    Args:
        model: timm ViT (pruned or not); only shapes are read.
        input_size: ``(C, H, W)`` of one image.
        config: The cascade's options, as given to :func:`~tp_vit_plugins.apply_cascade`.
        counts: Patch tokens entering each block, e.g. ``cascade.last.counts`` of a real
            forward (needed when ``beta > 0`` made the counts input-dependent); default: the
            schedule.
        batch_size: Images per forward.
        **options: :class:`~tp_vit_plugins.cpvit.CascadeConfig` fields overriding ``config``.

    Returns:
        Total multiply-accumulates.

    Raises:
        ValueError: ``mode="mask"`` (masked tokens keep their MACs; count them with ``count_macs``).
    """
    cfg = with_options(config, options)
    if cfg.mode != "drop":
        raise ValueError("mode='mask' keeps every token's MACs (shapes unchanged): count it with tpv.count_macs")
    keep_ratio, head_keep_ratio = cfg.keep_ratio, cfg.head_keep_ratio
    fold, prune_at, trim_last = cfg.fold, cfg.prune_at, cfg.trim_last
    host = host_for(model)
    depth = len(host.token_blocks(model))
    start_block, head_start_block = cfg.start_blocks(depth)
    rows, cols = host.patch_grid(model)
    P, prefix = rows * cols, host.prefix_tokens(model)
    if counts is None:
        counts = keep_schedule(P, depth, keep_ratio, start_block, steps=cfg.schedule_steps, mean=cfg.keep_mean)
    counts = list(counts)
    trim = trim_last and prune_at == "mlp" and host.reads_prefix_only(model) and min(counts) < P  # only a pruning cascade
    macs = host.patch_embed_macs(model)
    for i, b in enumerate(host.block_layers(model)):
        n = prefix + counts[i]
        H, d = host.head_layout(b.attn)
        skip = head_keep_ratio < 1 and i >= head_start_block
        kept = heads_kept(H, head_keep_ratio) if skip else H
        # per-token linears of the attention (qkv, an output gate), its output projection on the kept heads
        # (all heads when a head norm or gate needs the full layout), the two attention matmuls
        full = not isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity) or getattr(b.attn, "gate", None) is not None
        mixers = host.head_mixers(b.attn)  # CaiT's talking heads: linears over the heads of [N, N] maps
        macs += n * linear_macs(b.attn, skip=(b.proj, *mixers)) + n * n * sum(linear_macs(x) for x in mixers)
        macs += n * (H if full else kept) * d * b.proj.out_features + H * n * n * d + kept * n * n * d
        n_mlp = prefix + counts[i + 1] if prune_at == "mlp" and i + 1 < depth else n  # tokens through the MLP
        n_mlp = prefix if trim and i == depth - 1 else n_mlp
        macs += n_mlp * linear_macs(getattr(b.block, "mlp", None))
        if fold == "merge" and i + 1 < depth and counts[i + 1] < counts[i]:
            macs += (counts[i] - counts[i + 1]) * counts[i + 1] * b.embed_dim  # similarity of pruned and kept tokens
    macs += host.readout_macs(model, prefix + counts[-1] if not trim else prefix, counts[-1])
    macs += sum(h.in_features * h.out_features for h in host.classifier_heads(model) if isinstance(h, nn.Linear))
    return batch_size * macs


def fit_keep_ratio(
    model: nn.Module,
    input_size: Sequence[int],
    macs_keep_ratio: float | None = None,
    config: CascadeConfig | str | None = None,
    *,
    iterations: int = 30,
    **options: Any,
) -> float:
    """Largest CP-ViT ``keep_ratio`` whose cascade keeps at most ``macs_keep_ratio`` of ``model``'s MACs.

    Bisects ``keep_ratio`` against :func:`cascade_macs` (analytic, exact for ``beta = 0``; with
    ``beta > 0`` the per-batch counts move around it).

    Example::

        cfg = tpv.cpvit.CascadeConfig(head_keep_ratio=0.75)
        keep = tpv.cpvit.fit_keep_ratio(model, (3, 224, 224), 0.6, cfg)   # 60 % of the MACs kept
        cascade = tpv.apply_cascade(model, cfg, keep_ratio=keep)

    Args:
        model: timm ViT (pruned or not; only shapes are read).
        input_size: ``(C, H, W)`` of one image.
        macs_keep_ratio: Fraction of the cascade-free MACs to keep, in ``(0, 1]``.
        config: The cascade's other options (its ``keep_ratio`` is what is searched).
        iterations: Bisection steps.
        **options: :class:`~tp_vit_plugins.cpvit.CascadeConfig` fields overriding ``config``.

    Returns:
        The keep ratio (1.0 when no token needs to go; ``1e-3``, the smallest ratio tried,
        when even that keeps more than the target: tokens alone cannot reach it).

    Raises:
        ValueError: ``macs_keep_ratio`` outside ``(0, 1]``, or ``mode="mask"`` (masked tokens keep their MACs).
    """
    if macs_keep_ratio is None or not 0.0 < macs_keep_ratio <= 1.0:
        raise ValueError(f"macs_keep_ratio (the share of MACs kept) must lie in (0, 1], got {macs_keep_ratio}")
    cfg = with_options(config, options)
    if cfg.mode != "drop":
        raise ValueError("mode='mask' keeps every token's MACs (shapes unchanged): no keep ratio reaches a MACs target")
    dense = cascade_macs(model, input_size, cfg, keep_ratio=1.0, trim_last=False)

    def keeps_less(r: float) -> bool:  # True at small ratios: the cascade is within the target
        return cascade_macs(model, input_size, cfg, keep_ratio=r) / dense <= macs_keep_ratio

    if keeps_less(1.0):
        return 1.0
    lo, _ = bisect_threshold(keeps_less, 1e-3, 1.0, iterations)  # invariant: keeps_less(lo) or lo == 1e-3
    return lo
