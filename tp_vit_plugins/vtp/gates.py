"""VTP gates: learnable per-dimension scales on the inputs (or outputs) of linear projections.

An **input gate** ``g`` (initialised to 1) on ``y = W x + b`` computes ``W (g * x) + b``; an
**output gate** computes ``g * (W x + b)``. Gates are registered as parameters of the gated
``nn.Linear`` (``vtp_gate`` / ``vtp_out_gate``), so any optimizer built from
``model.parameters()`` sees them, and applied by forward (pre-)hooks — no timm code is copied
or replaced. :meth:`GateSet.fold` turns them into weights (``W <- W * g`` on columns for input
gates, on rows and bias for output gates; exact) and :meth:`GateSet.remove` deletes parameters
and hooks, leaving no trace in ``state_dict``.

Sparsity: :meth:`GateSet.proximal_step` is the L1 term's proximal operator. The gates take
their own plain-SGD step ``g <- g - lr * dL/dg / s`` (``s`` a scalar gradient scale, the same
for every gate, so the step direction is SGD's) followed by the soft threshold
``g <- sign(g) * max(|g| - lr * reg, 0)``, and their gradients are cleared so the model's own
optimizer (AdamW, with its per-parameter step normalisation and weight decay) never moves
them. Gates therefore reach **exactly** zero, which an L1 subgradient fed through Adam does
not do (Adam rescales ``reg * sign(g)`` to a step of size ``lr`` whatever ``reg`` is).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["GateSet", "GATE_NAME", "OUT_GATE_NAME", "soft_threshold"]

#: Name of the input-gate parameter on every input-gated Linear.
GATE_NAME = "vtp_gate"
#: Name of the output-gate parameter on every output-gated Linear.
OUT_GATE_NAME = "vtp_out_gate"


def soft_threshold(g: torch.Tensor, tau: float) -> torch.Tensor:
    """The proximal operator of ``tau * |g|_1``: ``sign(g) * max(|g| - tau, 0)`` (any shape)."""
    return torch.sign(g) * (g.abs() - tau).clamp_min(0)


class _GateHook:
    """Forward pre-hook multiplying the input's last dimension by the module's input gate."""

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * getattr(module, GATE_NAME),) + tuple(args[1:])


class _OutGateHook:
    """Forward hook multiplying the output's last dimension by the module's output gate."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * getattr(module, OUT_GATE_NAME)


class GateSet:
    """Gates on a set of ``nn.Linear`` inputs and outputs.

    Args:
        layers: Linear layers whose **input** is gated (``[in_features]`` gates).
        out_layers: Linear layers whose **output** is gated (``[out_features]`` gates).

    Raises:
        TypeError: A layer is not ``nn.Linear``.
        ValueError: A layer is already gated.
    """

    def __init__(self, layers: Iterable[nn.Linear], out_layers: Iterable[nn.Linear] = ()) -> None:
        self.layers: list[nn.Linear] = list(layers)
        self.out_layers: list[nn.Linear] = list(out_layers)
        for lin in (*self.layers, *self.out_layers):
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"gates go on nn.Linear layers, got {type(lin).__name__}")
            if hasattr(lin, GATE_NAME) or hasattr(lin, OUT_GATE_NAME):
                raise ValueError("layer already carries a VTP gate; remove the other GateSet first")
        if len(set(map(id, self.layers))) < len(self.layers) or len(set(map(id, self.out_layers))) < len(self.out_layers):
            raise ValueError("a layer is listed twice")
        #: Input gates held at exactly 0 (:meth:`close`): ``{layer: bool mask [in_features]}``.
        self.closed: dict[nn.Linear, torch.Tensor] = {}
        for lin in self.layers:
            lin.register_parameter(GATE_NAME, nn.Parameter(lin.weight.new_ones(lin.in_features)))
            lin.register_forward_pre_hook(_GateHook())
        for lin in self.out_layers:
            lin.register_parameter(OUT_GATE_NAME, nn.Parameter(lin.weight.new_ones(lin.out_features)))
            lin.register_forward_hook(_OutGateHook())

    def pairs(self) -> list[tuple[nn.Linear, str]]:
        """Every gate as ``(layer, gate name)`` (``GATE_NAME`` / ``OUT_GATE_NAME``): the keys :meth:`proximal_step` scales by."""
        return [(lin, GATE_NAME) for lin in self.layers] + [(lin, OUT_GATE_NAME) for lin in self.out_layers]

    @property
    def active(self) -> bool:
        """Whether the gates are still attached."""
        return any(name in lin._parameters for lin, name in self.pairs())

    def parameters(self, pairs: Iterable[tuple[nn.Linear, str]] | None = None) -> list[nn.Parameter]:
        """The gate parameters of every gated layer (input gates first, then output gates), or of ``pairs`` (:meth:`pairs`)."""
        return [getattr(lin, name) for lin, name in (self.pairs() if pairs is None else pairs) if name in lin._parameters]

    def values(self) -> dict[nn.Linear, torch.Tensor]:
        """Detached copies of the input gates, keyed by layer."""
        return {lin: getattr(lin, GATE_NAME).detach().clone() for lin in self.layers if GATE_NAME in lin._parameters}

    def out_values(self) -> dict[nn.Linear, torch.Tensor]:
        """Detached copies of the output gates, keyed by layer."""
        return {lin: getattr(lin, OUT_GATE_NAME).detach().clone() for lin in self.out_layers if OUT_GATE_NAME in lin._parameters}

    def flat(self) -> torch.Tensor:
        """Every gate entry in one 1-D tensor (for histograms and sparsity shares)."""
        params = self.parameters()
        return torch.cat([p.detach().flatten().cpu() for p in params]) if params else torch.zeros(0)

    @torch.no_grad()
    def proximal_step(
        self, lr: float, strength: float, grad_scale: float | Mapping[tuple[nn.Linear, str], float | torch.Tensor] = 1.0
    ) -> None:
        """Proximal SGD on the gates, then their gradients are cleared.

        ``g <- soft_threshold(g - lr * grad / grad_scale, lr * strength)`` for every gate.
        Call after ``loss.backward()`` and before the model optimizer's step: with the
        gradients set to ``None`` that optimizer skips the gates (torch optimizers skip
        parameters without a gradient), so only this plain-SGD step moves them.

        Args:
            lr: Step size.
            strength: L1 strength (the threshold is ``lr * strength``).
            grad_scale: One scale for every gate, or one per ``(layer, gate name)``: a float or a
                tensor shaped like that gate (one scale per entry); missing pairs: 1.
        """
        for lin, name in self.pairs():
            if name not in lin._parameters:
                continue
            g = getattr(lin, name)
            scale = grad_scale if isinstance(grad_scale, (int, float)) else grad_scale.get((lin, name), 1.0)
            if g.grad is not None:
                g.sub_(g.grad / scale, alpha=lr)
            g.copy_(soft_threshold(g, lr * strength))
            g.grad = None
        self._hold_closed()

    @torch.no_grad()
    def close(self, layer: nn.Linear, idxs: Iterable[int]) -> None:
        """Set input gates ``idxs`` of ``layer`` to 0 and keep them there in every later :meth:`proximal_step`.

        Raises:
            KeyError: ``layer`` carries no input gate of this set.
        """
        if layer not in self.layers or GATE_NAME not in layer._parameters:
            raise KeyError("close() takes a layer whose input this GateSet gates")
        mask = self.closed.setdefault(layer, torch.zeros(layer.in_features, dtype=torch.bool))
        mask[torch.as_tensor(list(idxs), dtype=torch.long)] = True
        self._hold_closed()

    @torch.no_grad()
    def _hold_closed(self) -> None:
        for lin, mask in self.closed.items():
            g = lin._parameters.get(GATE_NAME)
            if g is not None:
                g.masked_fill_(mask.to(g.device), 0.0)

    def mean_abs_grad(self, layers: Iterable[tuple[nn.Linear, str]] | None = None) -> float:
        """Mean ``|dL/dg|`` over every gate entry that has a gradient (0 when none has).

        Args:
            layers: Only these ``(layer, gate name)`` pairs (``GATE_NAME`` / ``OUT_GATE_NAME``); ``None``: every gate.
        """
        grads = [p.grad.detach().abs().flatten() for p in self.parameters(layers) if p.grad is not None]
        return float(torch.cat(grads).mean()) if grads else 0.0

    @torch.no_grad()
    def fold(self) -> None:
        """Fold every gate into its layer's weights (new tensors), then set the gates to 1."""
        for lin in self.layers:
            g = getattr(lin, GATE_NAME, None)
            if g is None:
                continue
            lin.weight = nn.Parameter(lin.weight.detach() * g.detach()[None, :], requires_grad=lin.weight.requires_grad)
            setattr(lin, GATE_NAME, nn.Parameter(torch.ones_like(g), requires_grad=g.requires_grad))
        for lin in self.out_layers:
            g = getattr(lin, OUT_GATE_NAME, None)
            if g is None:
                continue
            lin.weight = nn.Parameter(lin.weight.detach() * g.detach()[:, None], requires_grad=lin.weight.requires_grad)
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.detach() * g.detach(), requires_grad=lin.bias.requires_grad)
            setattr(lin, OUT_GATE_NAME, nn.Parameter(torch.ones_like(g), requires_grad=g.requires_grad))

    def remove(self, fold: bool = True) -> None:
        """Detach the gates (folding them into the weights first unless ``fold=False``)."""
        if fold:
            self.fold()
        for lin, name in self.pairs():  # by type, not by handle: robust to snapshot rollbacks
            for hooks, kind in ((lin._forward_pre_hooks, _GateHook), (lin._forward_hooks, _OutGateHook)):
                for key in [k for k, hook in hooks.items() if isinstance(hook, kind)]:
                    del hooks[key]
            if name in lin._parameters:
                del lin._parameters[name]
