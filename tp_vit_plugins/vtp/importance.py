"""VTP gate importance: gate magnitudes as the score of the tp groups they touch.

Every ``prune_linear_in_channels`` dependency of a group whose layer carries a VTP gate
contributes ``|g[i]|`` for its input channels; contributions are averaged onto the group's
root channels (the same scatter tp's own importances use). MLP hidden dims are scored by the
``fc2`` input gates, attention channels (head dims) by the ``proj`` input gates, embedding
dims by the ``qkv`` and ``fc1`` input gates of every block. Maths only: no timm import.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .gates import GATE_NAME

__all__ = ["GateImportance"]


class GateImportance(tp.importance.Importance):
    """``|gate|`` scores for tp groups (see module docs).

    Gate values are read live from the gated layers, or from a snapshot installed with
    :meth:`set_gates` (``VTPPruner`` installs one right before folding the gates away).

    Args:
        p: Norm exponent applied to gate magnitudes (1 = ``|g|``).
    """

    def __init__(self, p: float = 1.0) -> None:
        self.p = p
        self.gates: dict[nn.Module, torch.Tensor] = {}

    def set_gates(self, gates: dict[nn.Module, torch.Tensor]) -> None:
        """Use these gate values ``{linear: [in_features]}`` instead of live ones."""
        self.gates = {k: v.detach().clone() for k, v in gates.items()}

    def _gate_of(self, layer: nn.Module) -> torch.Tensor | None:
        if layer in self.gates:
            return self.gates[layer]
        g = getattr(layer, GATE_NAME, None)
        return g.detach() if g is not None else None

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        position = {int(ch): j for j, ch in enumerate(group[0][1])}  # root channel -> output slot
        n_root = len(position)
        total = torch.zeros(n_root, dtype=torch.float64)
        count = torch.zeros(n_root, dtype=torch.float64)
        for i, (dep, idxs) in enumerate(group):
            if dep.handler != tp.prune_linear_in_channels:
                continue
            g = self._gate_of(dep.target.module)
            if g is None:
                continue
            root = torch.as_tensor([position[int(r)] for r in group[i].root_idxs])
            local = g.abs().double().cpu()[torch.as_tensor(idxs)].pow(self.p)
            total.scatter_add_(0, root, local)
            count.scatter_add_(0, root, torch.ones_like(local))
        if not bool((count > 0).any()):
            return None
        return (total / count.clamp_min(1)).float()
