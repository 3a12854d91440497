"""Budgets in MACs or measured latency instead of channel ratios.

tp takes a channel ratio; users think in "keep 60 % of the MACs". :func:`fit_budget` bisects
one scalar ``r`` that sets the pruning ratios (heads, width or both) of a
:class:`~tp_vit_plugins.ViTPruner` (or any pruner factory) on throw-away copies until the
pruned model's MACs — or measured latency — is as close to the target as the structure
allows, and reports the achieved value next to the target. The user's model is never
modified.

Latency targets are measured, not modelled: the bisection runs on the measured ratio. Every
candidate is timed alternately with the dense model (``measure_latency``, same batch size, same
thread count) for ``latency_rounds`` rounds and the median of the per-round ratios is its kept
fraction, so drifts of the machine cancel in the ratio. The returned model is timed once more
for ``achieved`` (the measurement that selected it is biased toward the target). Timing noise
still limits how close a latency target can be hit.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from .core.metrics import count_macs, measure_latency
from .core.pruner import ViTPruner
from .core.search import bisect_threshold
from .hosts import host_for

__all__ = ["BudgetResult", "fit_budget", "clone_with_grads", "remap_state", "vit_prune_fn", "BUDGET_STRUCTURES"]

#: Ratios tried by the fallback scan when ``max_ratio`` itself does not reach the target.
_SCAN_POINTS = 8

#: What the scalar ratio controls.
BUDGET_STRUCTURES = ("heads", "width", "both")


@dataclass
class BudgetResult:
    """Outcome of :func:`fit_budget`.

    Attributes:
        ratio: The scalar pruning ratio found.
        target: Requested fraction of the dense cost to keep.
        achieved: Fraction actually kept by ``model``; for latency a fresh measurement of the
            returned model after the search (the value that selected it is biased toward the
            target by the selection).
        metric: ``"macs"`` or ``"latency"``.
        model: The pruned copy at ``ratio``.
        evaluations: Number of pruned copies built.
        macs_kept: Fraction of the dense MACs ``model`` keeps (whatever the metric).
    """

    ratio: float
    target: float
    achieved: float
    metric: str
    model: nn.Module
    evaluations: int
    macs_kept: float = 1.0

    @property
    def relative_error(self) -> float:
        """``|achieved - target| / target``."""
        return abs(self.achieved - self.target) / self.target


def clone_with_grads(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies ``.grad`` (deepcopy drops it; Taylor criteria need it)."""
    twin = copy.deepcopy(model)
    for p_twin, p in zip(twin.parameters(), model.parameters()):
        if p.grad is not None:
            p_twin.grad = p.grad.detach().clone()
    return twin


def remap_state(obj: object, source: nn.Module, twin: nn.Module) -> object:
    """Deep copy of ``obj`` whose references to ``source``'s modules/parameters point into ``twin``.

    Data-driven importances key their state by module (``head_scores[attn.qkv]``, gate values
    per Linear); a pruned *copy* of the model needs a copy of that state keyed by its own
    modules. ``twin`` must be a deep copy of ``source`` (same module tree).
    """
    memo: dict[int, object] = {}
    for (_, a), (_, b) in zip(source.named_modules(remove_duplicate=False), twin.named_modules(remove_duplicate=False)):
        memo[id(a)] = b
    for (_, a), (_, b) in zip(source.named_parameters(remove_duplicate=False), twin.named_parameters(remove_duplicate=False)):
        memo[id(a)] = b
    return copy.deepcopy(obj, memo)


def _max_head_ratio(model: nn.Module, kwargs: dict) -> float:
    """Largest head ratio that leaves every block ``min_heads`` heads (ViTPruner's rounding)."""
    heads = host_for(model).heads_per_block(model)
    keep = int(kwargs.get("min_heads", 1))
    if kwargs.get("global_head_pruning", kwargs.get("global_pruning", False)):
        return (sum(heads) - keep * len(heads)) / sum(heads)
    return min((h - 1) / h for h in heads)


PruneFn = Callable[[nn.Module, torch.Tensor, float], None]


def vit_prune_fn(
    importance: tp.importance.Importance | None,
    source: nn.Module,
    head_ratio: Callable[[float], float],
    width_ratio: Callable[[float], float],
    **pruner_kwargs: Any,
) -> PruneFn:
    """A ``prune_fn`` for :func:`fit_budget`: a :class:`ViTPruner` step on a copy of ``source``.

    The importance is remapped onto every copy (:func:`remap_state`), so calibrated,
    module-keyed criteria (graph / cumulative head scores, gate values) keep working.
    """

    def prune(model: nn.Module, example: torch.Tensor, r: float) -> None:
        kwargs = {"global_pruning": True, **pruner_kwargs}
        heads = min(head_ratio(r), _max_head_ratio(model, kwargs))
        imp = remap_state(importance, source, model) if importance is not None else None
        ViTPruner(model, example, imp, pruning_ratio=width_ratio(r), head_pruning_ratio=heads, **kwargs).step()

    return prune


class _Search:
    """State of one :func:`fit_budget` run: the cost of candidates and the best one so far."""

    def __init__(
        self, model: nn.Module, example: torch.Tensor, target: float, metric: str, tolerance: float, latency: dict
    ) -> None:
        self.model, self.example, self.target, self.metric = model, example, target, metric
        self.tolerance, self.latency = tolerance, latency
        self.dense_macs = float(count_macs(model, example))
        self.best: BudgetResult | None = None
        self.evaluations = 0
        self.bar: tqdm | None = None

    def _seconds(self, m: nn.Module, warmup: int) -> float:
        bs = self.latency["batch_size"]
        return measure_latency(m, self.example, (bs,), min_run_time=self.latency["min_run_time"], warmup=warmup)[bs]

    def kept_fraction(self, m: nn.Module) -> float:
        """MACs kept, or the median latency ratio with the dense model re-timed alternately (drift cancels)."""
        if self.metric == "macs":
            return count_macs(m, self.example) / self.dense_macs
        rounds = self.latency["rounds"]
        return statistics.median(self._seconds(m, 3 if i == 0 else 1) / self._seconds(self.model, 1) for i in range(rounds))

    def converged(self) -> bool:
        return self.best is not None and self.best.relative_error <= self.tolerance

    def evaluate(self, prune: PruneFn, r: float) -> float:
        """Prune a copy at ratio ``r``, measure it, remember it if it is the closest yet."""
        candidate = clone_with_grads(self.model)
        prune(candidate, self.example, r)
        self.evaluations += 1
        kept = self.kept_fraction(candidate)
        macs = kept if self.metric == "macs" else count_macs(candidate, self.example) / self.dense_macs
        result = BudgetResult(r, self.target, kept, self.metric, candidate, self.evaluations, macs)
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(ratio=f"{r:.3f}", kept=f"{kept:.3f}", target=f"{self.target:.3f}")
        if self.best is None or result.relative_error < self.best.relative_error:
            self.best = result
        return kept

    def run(self, prune: PruneFn, max_ratio: float, budget: int) -> float:
        """Bisect ``r`` with at most ``budget`` candidates; return the largest ``r`` seen still keeping > target.

        The cost is not always monotone in ``r`` (tp leaves a group alone rather than remove
        all of its channels, so at large ratios whole head-dim groups can survive): when the
        bound ``max_ratio`` does not reach the target, a coarse scan of ``r`` looks for a
        ratio that does before the target is declared out of reach.
        """
        stop = self.evaluations + budget
        lo, hi = 0.0, max_ratio
        if self.evaluate(prune, hi) > self.target:
            hi = None
            for k in range(1, _SCAN_POINTS):
                if self.evaluations >= stop or self.converged():
                    break
                r = max_ratio * k / _SCAN_POINTS
                if self.evaluate(prune, r) <= self.target:
                    hi = r
                    break
                lo = r
            if hi is None:
                return lo
        lo, _ = bisect_threshold(
            lambda r: self.evaluate(prune, r) > self.target,
            lo,
            hi,
            iterations=max(0, stop - self.evaluations),
            done=self.converged,
        )
        return lo


def _check_budget_args(target: float, structure: str, metric: str, max_ratio: float, max_evaluations: int, latency: dict) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"keep_ratio (the share of the cost kept) must lie in (0, 1], got {target}")
    if structure not in BUDGET_STRUCTURES:
        raise ValueError(f"structure must be one of {BUDGET_STRUCTURES}, got {structure!r}")
    if metric not in ("macs", "latency"):
        raise ValueError(f"metric must be 'macs' or 'latency', got {metric!r}")
    if not 0.0 < max_ratio < 1.0:
        raise ValueError(f"max_ratio must lie in (0, 1), got {max_ratio}")
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1, got {max_evaluations}")
    if metric == "latency" and (latency["batch_size"] < 1 or latency["min_run_time"] <= 0 or latency["rounds"] < 1):
        raise ValueError(
            "latency_batch_size and latency_rounds must be >= 1 and latency_min_run_time > 0, got "
            f"{latency['batch_size']}, {latency['rounds']} and {latency['min_run_time']}"
        )


def fit_budget(
    model: nn.Module,
    example_inputs: torch.Tensor,
    keep_ratio: float | None = None,
    importance: tp.importance.Importance | None = None,
    structure: str = "both",
    metric: str = "macs",
    prune_fn: PruneFn | None = None,
    max_ratio: float = 0.95,
    tolerance: float = 0.01,
    max_evaluations: int = 16,
    latency_batch_size: int = 64,
    latency_min_run_time: float = 0.1,
    latency_rounds: int = 7,
    progress: bool = False,
    **pruner_kwargs: Any,
) -> BudgetResult:
    """Find the pruning ratio whose result keeps ``keep_ratio`` of the dense MACs (or latency).

    Example::

        result = tpv.fit_budget(model, example, keep_ratio=0.6, importance=tp.importance.GroupMagnitudeImportance(p=2))
        pruned = result.model            # a pruned copy; ``model`` is untouched
        print(result.ratio, result.achieved)

    Args:
        model: A timm ViT (left untouched; copies are pruned).
        example_inputs: Input for tracing and for the MACs count, e.g. ``[1, C, H, W]``.
        keep_ratio: Fraction of the dense cost to **keep**, in ``(0, 1]`` (0.6 = keep 60 % of the MACs).
        importance: Criterion for the default :class:`ViTPruner` factory (gradient-based
            criteria need ``.grad`` on ``model``; every copy receives a copy of it).
        structure: ``"heads"``, ``"width"`` or ``"both"`` for the default factory.
        metric: ``"macs"`` (FlopCounterMode, eager attention) or ``"latency"`` (median
            ``measure_latency`` ratio at ``latency_batch_size`` on ``example_inputs``' device,
            candidate and dense model timed alternately; noisy, slower).
        prune_fn: ``prune_fn(model_copy, example_inputs, r)`` prunes in place with scalar
            ratio ``r``; overrides ``importance`` / ``structure`` / ``pruner_kwargs``. State keyed
            by ``model``'s modules must be remapped onto the copy (see :func:`vit_prune_fn`).
        max_ratio: Largest ratio tried.
        tolerance: Stop once ``|achieved - target| / target`` is below this.
        max_evaluations: Cap on the pruned copies built.
        latency_batch_size: Batch size of the latency metric.
        latency_min_run_time: Seconds of timed runs per model per round (CPU timer).
        latency_rounds: Alternated dense / candidate timings per candidate (median ratio).
        progress: A tqdm bar over the candidates (ratio and achieved fraction as postfix).
        target: Deprecated spelling of ``keep_ratio``.
        **pruner_kwargs: Extra :class:`ViTPruner` arguments for the default factory
            (``prune_head_dims=True``, ``prune_embed_dim=True``, ``global_pruning=False``, ...).

    Returns:
        The :class:`BudgetResult` closest to the target.

    Raises:
        ValueError: Bad target, structure, metric, ratio bounds or latency settings.
    """
    if keep_ratio is None:
        raise TypeError("fit_budget needs keep_ratio, the share of the dense MACs (or latency) to keep, e.g. keep_ratio=0.6")
    target = keep_ratio
    latency = {"batch_size": latency_batch_size, "min_run_time": latency_min_run_time, "rounds": latency_rounds}
    _check_budget_args(target, structure, metric, max_ratio, max_evaluations, latency)
    if target >= 1.0:
        return BudgetResult(0.0, target, 1.0, metric, copy.deepcopy(model), 0)
    two_stage = prune_fn is None and structure == "both"
    if prune_fn is None:
        same, zero = (lambda r: r), (lambda r: 0.0)
        head = same if structure in ("heads", "both") else zero
        width = same if structure in ("width", "both") else zero
        prune_fn = vit_prune_fn(importance, model, head, width, **pruner_kwargs)
    search = _Search(model, example_inputs, target, metric, tolerance, latency)
    with tqdm(total=max_evaluations, desc=f"fit_budget ({metric})", disable=not progress, leave=False) as search.bar:
        lo = search.run(prune_fn, max_ratio, max(1, max_evaluations // 2) if two_stage else max_evaluations)
        if two_stage and not search.converged() and search.evaluations < max_evaluations:
            # heads move the cost in coarse steps: fix them at the last under-pruned ratio, refine the width alone
            refine = vit_prune_fn(importance, model, lambda r: lo, lambda r: r, **pruner_kwargs)
            search.run(refine, max_ratio, max_evaluations - search.evaluations)
    best = search.best
    best.evaluations = search.evaluations
    if metric == "latency":
        best.achieved = search.kept_fraction(best.model)  # unbiased: not the measurement that picked it
    return best
