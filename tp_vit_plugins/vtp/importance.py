"""VTP gate importance: gate magnitudes as the score of the tp groups they touch.

Every dependency of a group that touches a gated dimension contributes ``|g[i]|^p`` for it:
``prune_linear_in_channels`` of a layer with an input gate, ``prune_linear_out_channels`` of a
layer with an output gate. Contributions are **averaged** onto the group's root channels (the
scatter tp's own importances use). In a timm ViT that means:

* MLP hidden dims: the ``fc2`` input gate (one gate per removed dim);
* head dims: with ``qkv_out`` gates, the mean of the q, k and v gates of that dim — exactly
  the three dims tp removes together; with ``proj`` input gates only the v side is gated
  (the q/k dims removed with it are not scored);
* embedding dims (the residual stream, one group across all blocks): the ``qkv`` and
  ``fc1`` input gates of every block, aggregated by ``aggregation`` — ``"mean"`` (default: a
  dimension goes when the blocks read it little on average) or ``"max"`` (it goes only when
  no block still reads it). This aggregation is a reconstruction (the paper gates each
  block's inputs and does not say how a shared residual dimension is decided).

Maths only: no timm import.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .gates import GATE_NAME, OUT_GATE_NAME

__all__ = ["GateImportance", "NoGateError"]


class NoGateError(RuntimeError):
    """:class:`GateImportance` was asked to score a group that carries no VTP gate."""


class GateImportance(tp.importance.Importance):
    """``|gate|^p`` scores for tp groups (see module docs).

    Gate values are read live from the gated layers, or from a snapshot installed with
    :meth:`set_gates` (``VTPPruner`` installs one right before folding the gates away).

    Args:
        p: Norm exponent applied to gate magnitudes (1 = ``|g|``).
        aggregation: How several gates on one root channel combine: ``"mean"`` or ``"max"``.
        skip_ungated: Return ``None`` (tp then leaves the group alone) for a group without
            any gate instead of raising. :class:`VTPPruner` installs a snapshot, and with a
            snapshot ungated groups are always skipped (they are the layers left ungated).

    Raises (on call):
        NoGateError: No snapshot is installed, the group touches no gated layer and
            ``skip_ungated`` is False — e.g. a stock tp pruner given this importance before
            any gate was attached, which would otherwise prune nothing, silently.
    """

    def __init__(self, p: float = 1.0, skip_ungated: bool = False, aggregation: str = "mean") -> None:
        if aggregation not in ("mean", "max"):
            raise ValueError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
        self.p = p
        self.aggregation = aggregation
        self.skip_ungated = skip_ungated
        self.gates: dict[nn.Module, torch.Tensor] = {}
        self.out_gates: dict[nn.Module, torch.Tensor] = {}

    def set_gates(self, gates: dict[nn.Module, torch.Tensor], out_gates: dict[nn.Module, torch.Tensor] | None = None) -> None:
        """Use these gate values (``{linear: [in_features]}``, ``{linear: [out_features]}``) instead of live ones."""
        self.gates = {k: v.detach().clone() for k, v in gates.items()}
        self.out_gates = {k: v.detach().clone() for k, v in (out_gates or {}).items()}

    @property
    def has_snapshot(self) -> bool:
        """Whether gate values were installed with :meth:`set_gates`."""
        return bool(self.gates or self.out_gates)

    def _gate_of(self, layer: nn.Module, handler) -> torch.Tensor | None:
        if handler == tp.prune_linear_in_channels:
            table, name = self.gates, GATE_NAME
        elif handler == tp.prune_linear_out_channels:
            table, name = self.out_gates, OUT_GATE_NAME
        else:
            return None
        if self.has_snapshot:
            return table.get(layer)
        g = layer._parameters.get(name) if isinstance(layer, nn.Module) else None
        return g.detach() if g is not None else None

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        position = {int(ch): j for j, ch in enumerate(group[0][1])}  # root channel -> output slot
        n_root = len(position)
        total = torch.zeros(n_root, dtype=torch.float64)
        count = torch.zeros(n_root, dtype=torch.float64)
        for i, (dep, idxs) in enumerate(group):
            g = self._gate_of(dep.target.module, dep.handler)
            if g is None:
                continue
            root = torch.as_tensor([position[int(r)] for r in group[i].root_idxs])
            local = g.abs().double().cpu()[torch.as_tensor(idxs)].pow(self.p)
            if self.aggregation == "max":
                total.scatter_reduce_(0, root, local, reduce="amax")
            else:
                total.scatter_add_(0, root, local)
            count.scatter_add_(0, root, torch.ones_like(local))
        if not bool((count > 0).any()):
            if self.has_snapshot or self.skip_ungated:
                return None
            raise NoGateError(
                f"GateImportance found no VTP gate on the group rooted at {group[0][0].target.name}; attach "
                "gates first (tpv.VTPPruner, or tpv.vtp.GateSet on the layers), install trained values with "
                "set_gates(...), or pass skip_ungated=True to leave ungated groups alone"
            )
        return (total if self.aggregation == "max" else total / count.clamp_min(1)).float()
