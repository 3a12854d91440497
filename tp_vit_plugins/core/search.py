"""Small numeric helpers shared by every method: half-up rounding and one bisection.

Pure Python (no torch, no timm). :func:`bisect_threshold` is the one bisection loop of the
library: MACs / latency budgets (:func:`tp_vit_plugins.fit_budget`), CP-ViT keep ratios
(:func:`tp_vit_plugins.fit_keep_ratio`) and the benchmarks all search a scalar with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["round_half_up", "bisect_threshold"]


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)`` with a small tolerance, so ``0.5 * 3 = 1.5 -> 2`` despite float error."""
    return int(math.floor(x + 0.5 + 1e-9))


def bisect_threshold(
    above: Callable[[float], bool],
    lo: float,
    hi: float,
    iterations: int = 30,
    done: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """Narrow ``[lo, hi]`` around the point where ``above(x)`` turns from ``True`` to ``False``.

    ``above`` must hold at ``lo`` and fail at ``hi`` (the caller checks the ends); each step
    evaluates the midpoint once and keeps the half that still brackets the change.

    Args:
        above: Predicate, ``True`` below the threshold (e.g. "still keeps more than the target").
        lo: Lower end, ``above(lo)`` assumed ``True``.
        hi: Upper end, ``above(hi)`` assumed ``False``.
        iterations: Largest number of evaluations.
        done: Optional early stop, checked before every evaluation (e.g. "close enough").

    Returns:
        The final bracket ``(lo, hi)``.

    Raises:
        ValueError: ``lo > hi`` or ``iterations < 0``.
    """
    if lo > hi or iterations < 0:
        raise ValueError(f"need lo <= hi and iterations >= 0, got lo={lo}, hi={hi}, iterations={iterations}")
    for _ in range(iterations):
        if done is not None and done():
            break
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if above(mid) else (lo, mid)
    return lo, hi
