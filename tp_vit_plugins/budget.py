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
still limits how close a latency target can be hit: see ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from .metrics import count_macs, measure_latency

__all__ = ["BudgetResult", "fit_budget", "fit_keep_ratio", "clone_with_grads", "remap_state", "vit_prune_fn", "STRUCTURES"]

#: Ratios tried by the fallback scan when ``max_ratio`` itself does not reach the target.
_SCAN_POINTS = 8

#: What the scalar ratio controls.
STRUCTURES = ("heads", "width", "both")


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
    from .vit import attention_modules

    heads = [int(a.num_heads) for _, a in attention_modules(model)]
    keep = int(kwargs.get("min_heads", 1))
    if kwargs.get("global_head_pruning", kwargs.get("global_pruning", False)):
        return (sum(heads) - keep * len(heads)) / sum(heads)
    return min((h - 1) / h for h in heads)


def vit_prune_fn(
    importance: tp.importance.Importance | None,
    source: nn.Module,
    head_ratio: Callable[[float], float],
    width_ratio: Callable[[float], float],
    **pruner_kwargs,
) -> Callable[[nn.Module, torch.Tensor, float], None]:
    """A ``prune_fn`` for :func:`fit_budget`: a :class:`ViTPruner` step on a copy of ``source``.

    The importance is remapped onto every copy (:func:`remap_state`), so calibrated,
    module-keyed criteria (graph / cumulative head scores, gate values) keep working.
    """
    from .pruners import ViTPruner

    def prune(model: nn.Module, example: torch.Tensor, r: float) -> None:
        kwargs = {"global_pruning": True, **pruner_kwargs}
        heads = min(head_ratio(r), _max_head_ratio(model, kwargs))
        imp = remap_state(importance, source, model) if importance is not None else None
        ViTPruner(model, example, imp, pruning_ratio=width_ratio(r), head_pruning_ratio=heads, **kwargs).step()

    return prune


def fit_budget(
    model: nn.Module,
    example_inputs: torch.Tensor,
    target: float,
    importance: tp.importance.Importance | None = None,
    structure: str = "both",
    metric: str = "macs",
    prune_fn: Callable[[nn.Module, torch.Tensor, float], None] | None = None,
    max_ratio: float = 0.95,
    tolerance: float = 0.01,
    max_evaluations: int = 16,
    latency_batch_size: int = 64,
    latency_min_run_time: float = 0.1,
    latency_rounds: int = 7,
    progress: bool = False,
    **pruner_kwargs,
) -> BudgetResult:
    """Find the pruning ratio whose result keeps ``target`` of the dense MACs (or latency).

    Args:
        model: A timm ViT (left untouched; copies are pruned).
        example_inputs: Input for tracing and for the MACs count, e.g. ``[1, C, H, W]``.
        target: Fraction of the dense cost to keep, in ``(0, 1]`` (0.6 = keep 60 % of MACs).
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
        **pruner_kwargs: Extra :class:`ViTPruner` arguments for the default factory
            (``prune_head_dims=True``, ``prune_embed_dim=True``, ``global_pruning=False``, ...).

    Returns:
        The :class:`BudgetResult` closest to the target.

    Raises:
        ValueError: Bad target, structure, metric, ratio bounds or latency settings.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if metric not in ("macs", "latency"):
        raise ValueError(f"metric must be 'macs' or 'latency', got {metric!r}")
    if not 0.0 < max_ratio < 1.0:
        raise ValueError(f"max_ratio must lie in (0, 1), got {max_ratio}")
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1, got {max_evaluations}")
    if metric == "latency" and (latency_batch_size < 1 or latency_min_run_time <= 0 or latency_rounds < 1):
        raise ValueError(
            "latency_batch_size and latency_rounds must be >= 1 and latency_min_run_time > 0, got "
            f"{latency_batch_size}, {latency_rounds} and {latency_min_run_time}"
        )
    if prune_fn is not None:
        first = prune_fn
    else:
        same, zero = (lambda r: r), (lambda r: 0.0)
        head = same if structure in ("heads", "both") else zero
        width = same if structure in ("width", "both") else zero
        first = vit_prune_fn(importance, model, head, width, **pruner_kwargs)

    def seconds(m: nn.Module, warmup: int) -> float:
        bs = latency_batch_size
        return measure_latency(m, example_inputs, (bs,), min_run_time=latency_min_run_time, warmup=warmup)[bs]

    if target >= 1.0:
        return BudgetResult(0.0, target, 1.0, metric, copy.deepcopy(model), 0)
    dense_macs = float(count_macs(model, example_inputs))

    def kept_fraction(m: nn.Module) -> float:
        if metric == "macs":
            return count_macs(m, example_inputs) / dense_macs
        # dense re-timed alternately with every candidate: drift cancels, the median tames the noise
        return statistics.median(seconds(m, 3 if i == 0 else 1) / seconds(model, 1) for i in range(latency_rounds))

    evaluations = 0

    def search(prune: Callable[[nn.Module, torch.Tensor, float], None], budget: int) -> tuple[BudgetResult, float]:
        """Bisect ``r``; return the closest result and the largest ``r`` seen still keeping > target.

        The cost is not always monotone in ``r`` (tp leaves a group alone rather than remove
        all of its channels, so at large ratios whole head-dim groups can survive): when the
        bound ``max_ratio`` does not reach the target, a coarse scan of ``r`` looks for a
        ratio that does before the target is declared out of reach.
        """
        nonlocal evaluations
        best: BudgetResult | None = None
        used = 0

        def evaluate(r: float) -> float:
            nonlocal best, used, evaluations
            candidate = clone_with_grads(model)
            prune(candidate, example_inputs, r)
            used += 1
            evaluations += 1
            kept = kept_fraction(candidate)
            macs = kept if metric == "macs" else count_macs(candidate, example_inputs) / dense_macs
            result = BudgetResult(r, target, kept, metric, candidate, evaluations, macs)
            bar.update()
            bar.set_postfix(ratio=f"{r:.3f}", kept=f"{kept:.3f}", target=f"{target:.3f}")
            if best is None or result.relative_error < best.relative_error:
                best = result
            return kept

        lo, hi = 0.0, max_ratio
        if evaluate(hi) > target:  # the bound does not reach the target: scan for a ratio that does
            hi = None
            for k in range(1, _SCAN_POINTS):
                if used >= budget or best.relative_error <= tolerance:
                    break
                r = max_ratio * k / _SCAN_POINTS
                if evaluate(r) <= target:
                    hi = r
                    break
                lo = r
            if hi is None:
                return best, lo
        while used < budget and best.relative_error > tolerance:
            r = (lo + hi) / 2
            lo, hi = (r, hi) if evaluate(r) > target else (lo, r)
        return best, lo

    two_stage = prune_fn is None and structure == "both"
    with tqdm(total=max_evaluations, desc=f"fit_budget ({metric})", disable=not progress, leave=False) as bar:
        best, lo = search(first, max(1, max_evaluations // 2) if two_stage else max_evaluations)
        if two_stage and best.relative_error > tolerance and evaluations < max_evaluations:
            # heads move the cost in coarse steps: fix them at the last under-pruned ratio, refine the width alone
            fixed = lo
            refine = vit_prune_fn(importance, model, lambda r: fixed, lambda r: r, **pruner_kwargs)
            second, _ = search(refine, max_evaluations - evaluations)
            if second.relative_error < best.relative_error:
                best = second
    best.evaluations = evaluations
    if metric == "latency":
        best.achieved = kept_fraction(best.model)  # unbiased: not the measurement that picked it
    return best


def fit_keep_ratio(model: nn.Module, input_size: Sequence[int], target: float, iterations: int = 30, **cascade_kwargs) -> float:
    """Largest CP-ViT keep ratio whose cascade keeps at most ``target`` of ``model``'s MACs.

    Bisects ``keep_ratio`` against :func:`~tp_vit_plugins.tokens.cascade_macs` (analytic,
    exact for ``beta = 0``; with ``beta > 0`` the per-batch counts move around it).

    Args:
        model: timm ViT (pruned or not; only shapes are read).
        input_size: ``(C, H, W)`` of one image.
        target: Fraction of the cascade-free MACs to keep, in ``(0, 1]``.
        iterations: Bisection steps.
        **cascade_kwargs: ``head_keep_ratio``, ``start_block``, ``head_start_block``,
            ``schedule_power`` as in :func:`~tp_vit_plugins.tokens.apply_cascade`.

    Returns:
        The keep ratio (1.0 when no token needs to go; ``1e-3``, the smallest ratio tried,
        when even that keeps more than ``target``: tokens alone cannot reach it).

    Raises:
        ValueError: ``target`` outside ``(0, 1]``.
    """
    from .tokens import cascade_macs

    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    dense = cascade_macs(model, input_size, keep_ratio=1.0)

    def kept(r: float) -> float:
        return cascade_macs(model, input_size, keep_ratio=r, **cascade_kwargs) / dense

    if kept(1.0) <= target:
        return 1.0
    lo, hi = 1e-3, 1.0  # invariant: kept(hi) > target
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kept(mid) > target else (mid, hi)
    return lo
