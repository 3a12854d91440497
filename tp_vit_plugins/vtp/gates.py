"""VTP gates: learnable per-dimension scales on the inputs of linear projections.

A gate ``g`` (initialised to 1) on the input of ``y = W x + b`` computes ``W (g * x) + b``.
Gates are registered as parameters of the gated ``nn.Linear`` (``vtp_gate``), so any
optimizer built from ``model.parameters()`` trains them, and applied by a forward pre-hook
— no timm code is copied or replaced. :meth:`GateSet.fold` turns them into weights
(``W <- W * g``, exact) and :meth:`GateSet.remove` deletes parameters and hooks, leaving no
trace in ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..core.training import add_to_grad

__all__ = ["GateSet", "GATE_NAME"]

#: Name of the gate parameter on every gated Linear.
GATE_NAME = "vtp_gate"


class _GateHook:
    """Forward pre-hook multiplying the input's last dimension by the module's gate."""

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * getattr(module, GATE_NAME),) + tuple(args[1:])


class GateSet:
    """Gates on a set of ``nn.Linear`` inputs.

    Args:
        layers: The linear layers to gate (each at most once).

    Raises:
        TypeError: A layer is not ``nn.Linear``.
        ValueError: A layer is already gated.
    """

    def __init__(self, layers: Iterable[nn.Linear]) -> None:
        self.layers: list[nn.Linear] = []
        self._handles = []
        for lin in layers:
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"gates go on nn.Linear inputs, got {type(lin).__name__}")
            if hasattr(lin, GATE_NAME):
                raise ValueError("layer already carries a VTP gate; remove the other GateSet first")
            self.layers.append(lin)
        for lin in self.layers:
            gate = nn.Parameter(torch.ones(lin.in_features, dtype=lin.weight.dtype, device=lin.weight.device))
            lin.register_parameter(GATE_NAME, gate)
            self._handles.append(lin.register_forward_pre_hook(_GateHook()))

    @property
    def active(self) -> bool:
        """Whether the gates are still attached."""
        return any(GATE_NAME in lin._parameters for lin in self.layers)

    def parameters(self) -> list[nn.Parameter]:
        """The gate parameters ``[in_features]`` of every gated layer."""
        return [getattr(lin, GATE_NAME) for lin in self.layers if hasattr(lin, GATE_NAME)]

    def values(self) -> dict[nn.Linear, torch.Tensor]:
        """Detached copies of the gates, keyed by layer."""
        return {lin: getattr(lin, GATE_NAME).detach().clone() for lin in self.layers if hasattr(lin, GATE_NAME)}

    @torch.no_grad()
    def l1_subgradient(self, strength: float) -> None:
        """Add ``strength * sign(g)`` to every gate gradient (the L1 term's subgradient)."""
        for g in self.parameters():
            add_to_grad(g, strength * torch.sign(g))

    @torch.no_grad()
    def fold(self) -> None:
        """``W <- W * g`` for every gated layer (new tensors), then set every gate to 1."""
        for lin in self.layers:
            g = getattr(lin, GATE_NAME, None)
            if g is None:
                continue
            lin.weight = nn.Parameter(lin.weight.detach() * g.detach()[None, :], requires_grad=lin.weight.requires_grad)
            setattr(lin, GATE_NAME, nn.Parameter(torch.ones_like(g), requires_grad=g.requires_grad))

    def remove(self, fold: bool = True) -> None:
        """Detach the gates (folding them into the weights first unless ``fold=False``)."""
        if fold:
            self.fold()
        self._handles.clear()
        for lin in self.layers:  # by type, not by handle: robust to snapshot rollbacks
            for key in [k for k, hook in lin._forward_pre_hooks.items() if isinstance(hook, _GateHook)]:
                del lin._forward_pre_hooks[key]
            if GATE_NAME in lin._parameters:
                del lin._parameters[GATE_NAME]
