"""Gradual gate closing under a parameter budget (this library's extension of VTP; maths only).

The paper's VTP trains with an L1 penalty on the gates, then prunes the dims whose gates are
small and fine-tunes. At a fixed budget of training epochs that spends the sparse phase on a
network whose final shape is not yet known. **Closing** (``VTPPruner(close_params=...)``)
instead fixes gates at exactly 0 during sparse training, in a few rounds: at round ``k`` of
``K`` the lowest-scoring dims whose parameters add up to ``s_k`` of the budget are closed,
with the cubic share ``s_k = 1 - (1 - k / K)^3`` of gradual magnitude pruning (Zhu & Gupta,
"To prune, or not to prune", 2017), and stay closed. The rounds fall in the first
``until`` of the sparse phase; for the rest of it the network trains with its final set of
dims, so the later prune of the closed dims changes nothing and every epoch after the last
round already trains the pruned network.

What ranks is the pruner's gate score (see ``VTPPruner.gate_scores``) on the same raw scale
tp's global ranking uses: one score per MLP hidden dim, and per in-head index of a head
dim the mean over heads (tp removes the same index in every head). A dim's cost is the
parameters its removal takes (see :func:`~tp_vit_plugins.hosts.unit_param_costs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["closing_schedule", "closing_shares", "select_closed", "ClosedUnits"]


def closing_schedule(sparse_steps: int, rounds: int, until: float = 0.5, start: float = 0.0) -> list[tuple[int, float]]:
    """When to close and how much: ``[(step, share of the budget), ...]``, ascending.

    Round ``k`` (``1..rounds``) falls after step ``ceil((start + k / rounds * (until - start)) *
    sparse_steps)`` (at least step 1) and closes ``1 - (1 - k / rounds)^3`` of the budget in all.

    Args:
        sparse_steps: Steps of the sparse phase.
        rounds: Closing rounds (``>= 1``).
        until: Share of the sparse phase by which the last round has run, in ``(0, 1]``.
        start: Share of the sparse phase before the rounds begin (the scores gather
            evidence first), in ``[0, until)``.

    Raises:
        ValueError: ``sparse_steps`` or ``rounds`` below 1, not ``0 <= start < until <= 1``.
    """
    if sparse_steps < 1 or rounds < 1:
        raise ValueError(f"sparse_steps and rounds must be >= 1, got {sparse_steps} and {rounds}")
    if not 0 <= start < until <= 1:
        raise ValueError(f"closing needs 0 <= start < until <= 1, got start={start}, until={until}")
    out = []
    for k, share in enumerate(closing_shares(rounds), 1):
        step = max(1, math.ceil((start + k / rounds * (until - start)) * sparse_steps - 1e-9))
        out.append((step, share))
    return out


def closing_shares(rounds: int) -> list[float]:
    """The cubic share of the budget closed by each of ``rounds`` rounds: ``1 - (1 - k / rounds)^3``."""
    return [1.0 - (1.0 - k / rounds) ** 3 for k in range(1, rounds + 1)]


@dataclass
class ClosedUnits:
    """Per block: the MLP hidden dims and in-head indices chosen to close, and their parameters."""

    neurons: list[list[int]] = field(default_factory=list)
    head_dims: list[list[int]] = field(default_factory=list)
    params: int = 0


def select_closed(
    neuron_scores: Sequence[torch.Tensor | None],
    dim_scores: Sequence[torch.Tensor | None],
    neuron_costs: Sequence[int],
    dim_costs: Sequence[int],
    budget: float,
    min_dims: Sequence[int] | None = None,
) -> ClosedUnits:
    """The lowest-scoring units whose parameters reach ``budget``, at least one of each kind left per block.

    Units are taken in ascending score (ties: the order of blocks, neurons first) until the
    removed parameters reach ``budget``; a unit that would empty its block's MLP or heads is
    skipped. Scores of units already closed are 0 in practice, so they are chosen first and a
    growing budget only ever adds units.

    Args:
        neuron_scores: Per block, ``[M]`` MLP hidden-dim scores (``None``: not ranked).
        dim_scores: Per block, ``[d]`` in-head index scores (``None``: not ranked).
        neuron_costs: Per block, the parameters of one hidden dim.
        dim_costs: Per block, the parameters of one in-head index (all heads).
        budget: Parameters to remove.
        min_dims: Per block, the in-head indices that stay at least (the head-width floor;
            default 1).

    Returns:
        The chosen units, indices ascending, and the parameters they hold.

    Raises:
        ValueError: The per-block lists differ in length.
    """
    n = len(neuron_scores)
    if not len(dim_scores) == len(neuron_costs) == len(dim_costs) == n or (min_dims is not None and len(min_dims) != n):
        raise ValueError("neuron_scores, dim_scores, neuron_costs, dim_costs (and min_dims) need one entry per block")
    units: list[tuple[float, int, int, int]] = []  # (score, block, kind 0 = neuron / 1 = dim, index)
    left = [[0, 0] for _ in range(n)]
    for b in range(n):
        for kind, scores in enumerate((neuron_scores[b], dim_scores[b])):
            if scores is None:
                continue
            left[b][kind] = int(scores.numel())
            units.extend((float(v), b, kind, i) for i, v in enumerate(scores.flatten().tolist()))
    units.sort()
    out = ClosedUnits([[] for _ in range(n)], [[] for _ in range(n)])
    for _, b, kind, i in units:
        if out.params >= budget:
            break
        if left[b][kind] <= (min_dims[b] if kind == 1 and min_dims is not None else 1):
            continue
        left[b][kind] -= 1
        (out.neurons if kind == 0 else out.head_dims)[b].append(i)
        out.params += neuron_costs[b] if kind == 0 else dim_costs[b]
    out.neurons = [sorted(x) for x in out.neurons]
    out.head_dims = [sorted(x) for x in out.head_dims]
    return out
