"""CP-ViT cascade maths as pure tensor functions (no timm).

Notation: ``A`` is a block's attention probability tensor ``[B, H, N, N]`` (rows = queries
``i``, columns = keys), the first ``num_prefix`` tokens are prefix tokens (class,
distillation, register) and the other ``P`` are patch tokens.

* Token score of block ``l`` (Song et al., CP-ViT): ``s_l[b, p] = sum_h max_i A[b, h, i, p]``
  for every patch column ``p`` — how strongly *any* query of *any* head attends to the patch.
  The cascade accumulates ``S_l = S_{l-1} + s_l`` over blocks; a dropped token's score
  leaves with it. Prefix tokens are never scored or dropped.
* Head score: ``h_l[b, h] = sum_p max_i A[b, h, i, p]``, the same statistic per head.
* Attention range (locality) of a block: the share of patch-to-patch attention mass that
  lands within Chebyshev distance ``radius`` on the original patch grid, averaged over
  images, heads and query patches. 1 = purely local, ``(2r+1)^2 / P`` ≈ uniform.
* Schedule: with ``P`` patches, ``L`` blocks, final keep ratio ``rho`` and ramp exponent
  ``gamma``, the token count entering block ``l`` for ``start_block < l`` is
  ``n_l = round(P * (1 - (1 - rho) * t_l ** gamma))`` with ``t_l = (l - start_block) /
  (L - 1 - start_block)`` (``gamma = 1``: linear ramp; ``gamma < 1`` drops more tokens early;
  ``n_{L-1} = round(P * rho)`` exactly). A block with attention range ``a`` defers a
  share ``beta * a`` of its scheduled drop to later blocks (local layers prune less); the
  last pruning point always lands exactly on ``round(P * rho)``.
"""

from __future__ import annotations

import math

import torch

from ..core.search import round_half_up

__all__ = [
    "merge_into_kept",
    "token_scores",
    "head_scores",
    "cumulative_head_scores",
    "cascade_share",
    "range_adjusted_counts",
    "attention_range",
    "keep_schedule",
    "adjusted_count",
    "topk_sorted",
    "split_ranked",
    "ascending",
    "heads_kept",
    "gather_tokens",
]


def token_scores(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Per-patch score ``sum_h max_i A[b, h, i, p]``.

    Args:
        attn: Attention probabilities ``[B, H, N, N]``.
        num_prefix: Leading prefix tokens (not scored).

    Returns:
        ``[B, N - num_prefix]``.
    """
    return attn[..., num_prefix:].amax(dim=2).sum(dim=1)


def head_scores(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Per-head score ``sum_p max_i A[b, h, i, p]`` over patch columns, ``[B, H]``."""
    return attn[..., num_prefix:].amax(dim=2).sum(dim=-1)


def cumulative_head_scores(attn: torch.Tensor, token_scores: torch.Tensor | None, num_prefix: int) -> torch.Tensor:
    """Per-head score weighted by the cumulative patch score: ``sum_p max_i A[b, h, i, p] * s[b, p] / sum_p s[b, p]``, ``[B, H]``.

    A head scores by the attention it pays to the patches the cascade's cumulative score (summed
    over the blocks so far) marks informative, so the head score accumulates across blocks like
    the patch score (this library's reading of the paper's cumulative score "for patches and
    heads"). Without a token score (``None`` or another length) it is :func:`head_scores`.

    Args:
        attn: ``[B, H, N, N]`` probabilities.
        token_scores: ``[B, N - num_prefix]`` cumulative patch scores, or ``None``.
        num_prefix: Leading prefix tokens.
    """
    col = attn[..., num_prefix:].amax(dim=2)  # [B, H, P]
    if token_scores is None or token_scores.shape[-1] != col.shape[-1]:
        return col.sum(dim=-1)
    w = token_scores.to(col.dtype).clamp_min(0)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(col.dtype).tiny)
    return (col * w[:, None, :]).sum(dim=-1)


def range_adjusted_counts(schedule: list[int], localities: dict[int, float], beta: float) -> list[int]:
    """Token counts with each pruning point's share scaled by its attention range relative to the others.

    At pruning point ``l`` the schedule removes the share ``q_l`` of the tokens present; with
    ``m`` the mean locality over the points, the adjusted share is
    ``q_l * (1 + beta * (m - loc_l) / max(m, 1 - m))`` (clipped to ``[0, 1)``): a layer whose
    attention is more local than the others prunes less, a more global one prunes more, so the
    ratio can go up or down while the adjustments roughly cancel over the network (this
    library's reading of the paper's layer-aware adjustment; the magnitude is a reconstruction).

    Args:
        schedule: Counts ``[n_0, ..., n_{L-1}]`` of the plain schedule.
        localities: ``{pruning point: attention range in [0, 1]}`` (from calibration).
        beta: Strength in ``[0, 1]`` (0: the schedule).

    Returns:
        Adjusted counts, non-increasing, at least 1.
    """
    if not localities or beta == 0:
        return list(schedule)
    m = sum(localities.values()) / len(localities)
    spread = max(m, 1.0 - m, 1e-12)
    counts = [schedule[0]]
    for i in range(len(schedule) - 1):
        current = counts[-1]
        q = 1.0 - schedule[i + 1] / schedule[i] if schedule[i] else 0.0
        if i in localities and q > 0:
            q = min(max(q * (1.0 + beta * (m - localities[i]) / spread), 0.0), 1.0 - 1.0 / max(current, 1))
        counts.append(max(1, min(current, round_half_up(current * (1.0 - q)))))
    return counts


def attention_range(
    attn: torch.Tensor,
    positions: torch.Tensor,
    grid_width: int,
    num_prefix: int,
    radius: int = 1,
) -> float:
    """Share of patch-to-patch attention mass within ``radius`` on the patch grid.

    Args:
        attn: ``[B, H, N, N]`` probabilities.
        positions: ``[B, N - num_prefix]`` original flat grid index of every patch token.
        grid_width: Patches per grid row.
        num_prefix: Leading prefix tokens.
        radius: Chebyshev radius counted as "near".

    Returns:
        Locality in ``[0, 1]``.
    """
    a = attn[:, :, num_prefix:, num_prefix:]  # [B, H, P, P]
    row, col = positions // grid_width, positions % grid_width  # [B, P]
    near = ((row[:, :, None] - row[:, None, :]).abs() <= radius) & ((col[:, :, None] - col[:, None, :]).abs() <= radius)
    total = a.sum(-1)  # [B, H, P]; 0 for query rows left out (masked tokens)
    local = (a * near[:, None].to(a.dtype)).sum(-1)
    rows = total > 0
    return float((local[rows] / total[rows]).mean()) if rows.any() else 0.0


#: Schedule shapes: a continuous ramp, or piecewise-constant steps.
SCHEDULES = ("ramp", "stepped")


def cascade_share(depth: int, mean_keep: float, start_block: int) -> float:
    """The share ``r`` of its patch tokens every block from ``start_block`` on passes to the next, for a mean keep.

    The cascade keeps all ``P`` tokens up to ``start_block`` and ``P * r ** (l - start_block)``
    in block ``l`` after it; ``r`` is chosen so that the blocks see ``mean_keep`` of the patch
    tokens on average (``mean_keep = 0.5``: half of the patch-block work pruned).

    Raises:
        ValueError: ``mean_keep`` below what ``start_block + 1`` unpruned blocks already average.
    """
    floor = (start_block + 1) / depth
    if not floor < mean_keep <= 1.0:
        raise ValueError(
            f"a mean keep of {mean_keep} is out of reach for {depth} blocks pruned after block {start_block} "
            f"(the blocks up to it alone keep {floor:.3f}); raise keep_ratio or start earlier"
        )

    def mean(r: float) -> float:
        return (start_block + 1 + sum(r**j for j in range(1, depth - start_block))) / depth

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < mean_keep else (lo, mid)
    return (lo + hi) / 2


def keep_schedule(
    num_patches: int,
    depth: int,
    keep_ratio: float,
    start_block: int,
    power: float = 1.0,
    steps: int | None = None,
    mean: bool = False,
) -> list[int]:
    """Patch-token count entering every block under the progressive CP-ViT schedule.

    The ramp removes tokens after every block from ``start_block`` on:
    ``frac(l) = 1 - (1 - keep_ratio) * ((l - start) / span) ** power``. With ``steps`` the
    schedule is **stepped** instead: tokens go at ``steps`` evenly spaced blocks only, an equal
    share each time (``frac(l) = 1 - (1 - keep_ratio) * ceil(steps * (l - start) / span) / steps``;
    a reconstruction of the author code's per-stage ratios, whose exact values are not
    available here). With ``mean`` the schedule is a **cascade**: every block after
    ``start_block`` keeps the same share of the tokens it receives (:func:`cascade_share`), and
    ``keep_ratio`` is the share of patch tokens the blocks see on average (this library's reading
    of the paper's "progressively pruning 50 % patches").

    Args:
        num_patches: Patch tokens ``P`` of the input.
        depth: Number of blocks ``L``.
        keep_ratio: Fraction of patches present in the last block, in ``(0, 1]``.
        start_block: First block whose scores may drop tokens (drops happen after it).
        power: Ramp exponent ``gamma > 0`` (1 = linear, < 1 = front-loaded; ignored with ``steps``).
        steps: Number of pruning stages of the stepped schedule (``None``: the ramp).
        mean: ``keep_ratio`` is the mean share over the blocks, the schedule the cascade (``steps`` must be ``None``).

    Returns:
        ``[n_0, ..., n_{L-1}]``, non-increasing, ``n_l = P`` up to ``start_block``.

    Raises:
        ValueError: ``keep_ratio`` outside ``(0, 1]``, ``start_block`` not in ``[0, L - 2]``,
            ``power <= 0`` or ``steps`` below 1.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
    if not 0 <= start_block <= depth - 2:
        raise ValueError(f"start_block must lie in [0, {depth - 2}] for {depth} blocks, got {start_block}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    span = depth - 1 - start_block
    if mean:
        if steps is not None:
            raise ValueError("a mean keep ratio sets a cascade schedule: use steps=None")
        r = cascade_share(depth, keep_ratio, start_block)
        fracs = [1.0 if layer <= start_block else r ** (layer - start_block) for layer in range(depth)]
        return [max(1, min(num_patches, round_half_up(num_patches * f))) for f in fracs]
    counts = []
    for layer in range(depth):
        if layer <= start_block:
            frac = 1.0
        elif steps is not None:
            frac = 1.0 - (1.0 - keep_ratio) * math.ceil(steps * (layer - start_block) / span - 1e-9) / steps
        else:
            frac = 1.0 - (1.0 - keep_ratio) * ((layer - start_block) / span) ** power
        counts.append(max(1, min(num_patches, round_half_up(num_patches * frac))))
    return counts


def adjusted_count(current: int, scheduled_next: int, final: int, is_last: bool, locality: float, beta: float) -> int:
    """Token count after a pruning point, with the attention-range adjustment.

    Args:
        current: Patch tokens present now.
        scheduled_next: Count the linear schedule wants next.
        final: Count required in the last block.
        is_last: This is the last pruning point (land exactly on ``final``).
        locality: The block's attention range in ``[0, 1]``.
        beta: Strength of the adjustment (0 = plain schedule).

    Returns:
        The new count, between ``scheduled_next`` (or ``final``) and ``current``.
    """
    if is_last:
        return min(current, final)
    target = min(current, scheduled_next)
    deferred = round_half_up(beta * min(max(locality, 0.0), 1.0) * (current - target))
    return max(1, target + deferred)


def heads_kept(num_heads: int, head_keep_ratio: float) -> int:
    """Heads an input keeps under head skipping: ``round(H * ratio)`` half up, at least 1."""
    return max(1, round_half_up(num_heads * head_keep_ratio))


def ascending(idx: torch.Tensor) -> torch.Tensor:
    """Integer indices sorted ascending per row, by ``topk`` (ONNX ``TopK``: a stable sort has no ONNX op).

    Args:
        idx: ``[B, k]`` distinct indices.

    Returns:
        ``[B, k]``.
    """
    return idx.topk(idx.shape[1], dim=1, largest=False, sorted=True).values


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores per row, in ascending index order (token order kept).

    Args:
        scores: ``[B, P]``.
        k: Number to keep, ``1 <= k <= P``.

    Returns:
        ``[B, k]`` int64.
    """
    return ascending(scores.topk(k, dim=1, sorted=False).indices)


def split_ranked(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores' indices (ascending) and the rest (highest first): a partition of each row.

    One full ranking by ``topk`` (exportable), so the two sides never overlap, ties included.

    Args:
        scores: ``[B, P]``.
        k: Number to keep, ``1 <= k <= P``.

    Returns:
        ``(keep [B, k], rest [B, P - k])``, int64.
    """
    order = scores.topk(scores.shape[1], dim=1, sorted=True).indices
    return ascending(order[:, :k]), order[:, k:]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Keep the prefix tokens and the patch tokens ``keep`` of ``x``.

    One ``index_select`` over the flattened tokens (no ``cat``: cheaper on CPU than a
    ``gather`` along the token axis followed by concatenating the prefix).

    Args:
        x: Tokens ``[B, N, C]`` (prefix first).
        keep: Patch indices ``[B, k]`` relative to the patch tokens.
        num_prefix: Leading prefix tokens.

    Returns:
        ``[B, num_prefix + k, C]``.
    """
    B, N, C = x.shape
    prefix = torch.arange(num_prefix, device=x.device).expand(B, -1)
    rows = torch.cat([prefix, keep + num_prefix], dim=1) + N * torch.arange(B, device=x.device)[:, None]
    return x.reshape(B * N, C).index_select(0, rows.view(-1)).view(B, rows.shape[1], C)


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
