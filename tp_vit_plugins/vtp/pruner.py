"""VTP: Vision Transformer Pruning by learnable dimension gates (Zhu, Tang, Han, arXiv 2104.08500).

Pipeline: insert gates (init 1) on the inputs of every block's ``qkv``, ``proj``, ``fc1``,
``fc2``; train with ``loss + reg * sum |g|``; prune the dimensions whose gates are small
(MLP hidden dims, head dims, embedding dims — tp removes coupled channels); fold the
surviving gate values into the weights; fine-tune.

The L1 term is applied as a **subgradient**: :meth:`VTPPruner.regularize` adds
``reg * sign(g)`` to every gate's gradient after ``loss.backward()`` (so it works with any
optimizer; with plain SGD at learning rate ``lr`` a gate moves by ``-lr * reg * sign(g)``
per step from the regulariser).
"""

from __future__ import annotations

import typing
from collections.abc import Generator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..core.adapter import block_layers
from ..core.pruner import ViTPruner
from .gates import GateSet
from .importance import GateImportance

__all__ = ["VTPPruner", "GATED_LAYERS"]

#: Linear layers of a block that can carry gates.
GATED_LAYERS = ("qkv", "proj", "fc1", "fc2")


def _block_linears(model: nn.Module, names: Sequence[str]) -> list[nn.Linear]:
    layers = []
    for b in block_layers(model):
        layers.extend(getattr(b, n) for n in names if isinstance(getattr(b, n), nn.Linear))
    return layers


class VTPPruner(ViTPruner):
    """VTP as a ``tp.pruner.BasePruner``: gates + L1 sparse training + gate importance.

    Example::

        pruner = tpv.VTPPruner(model, example, pruning_ratio=0.4, reg=1e-4)
        train(model, loader, epochs, step_hook=pruner.regularize)   # gates are model parameters
        pruner.step()        # score by |gate|, fold gates, prune, sync attention
        train(model, loader, finetune_epochs)

    Args:
        model: A timm ViT-family model (gates are attached at construction).
        example_inputs: Input for tp's graph tracing.
        pruning_ratio: Share of dimensions to remove, in ``[0, 1)``.
        reg: L1 strength ``lambda``.
        importance: Defaults to :class:`~tp_vit_plugins.GateImportance`.
        global_pruning: One threshold across all layers and structure types (heterogeneous)
            instead of per-layer thresholds.
        prune_mlp, prune_head_dims, prune_embed_dim: Which dimensions may go.
        gated_layers: Which block linears carry gates (subset of :data:`GATED_LAYERS`).
        **kwargs: Passed to :class:`ViTPruner` (``head_pruning_ratio``, ``round_to``, ...).

    Raises:
        ValueError: Bad ratio, negative ``reg`` or unknown gated layer names.
        TypeError: The model is not a timm ViT.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        pruning_ratio: float = 0.4,
        reg: float = 1e-4,
        importance: tp.importance.Importance | None = None,
        global_pruning: bool = True,
        prune_mlp: bool = True,
        prune_head_dims: bool = True,
        prune_embed_dim: bool = True,
        gated_layers: Sequence[str] = GATED_LAYERS,
        **kwargs: typing.Any,
    ) -> None:
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        bad = set(gated_layers) - set(GATED_LAYERS)
        if bad or not gated_layers:
            raise ValueError(f"gated_layers must be a non-empty subset of {GATED_LAYERS}, got {list(gated_layers)}")
        super().__init__(
            model,
            example_inputs,
            importance if importance is not None else GateImportance(),
            pruning_ratio=pruning_ratio,
            global_pruning=global_pruning,
            prune_mlp=prune_mlp,
            prune_head_dims=prune_head_dims,
            prune_embed_dim=prune_embed_dim,
            **kwargs,
        )
        self.reg = float(reg)
        self.gates = GateSet(_block_linears(model, gated_layers))  # after tracing: tp never sees the gates

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gate vectors (already in ``model.parameters()`` while attached)."""
        return self.gates.parameters()

    def regularize(self, model: nn.Module | None = None, loss: torch.Tensor | None = None) -> None:
        """Add the L1 subgradient ``reg * sign(g)`` to every gate gradient (after ``backward``)."""
        self.gates.l1_subgradient(self.reg)

    def gate_sparsity(self, threshold: float = 1e-2) -> float:
        """Share of gate entries with ``|g| < threshold``."""
        values = [g.detach().abs().flatten() for g in self.gates.parameters()]
        if not values:
            return 0.0
        flat = torch.cat(values)
        return float((flat < threshold).float().mean())

    def remove_gates(self, fold: bool = True) -> None:
        """Fold (by default) and detach the gates without pruning."""
        self.gates.remove(fold=fold)

    def fold_gates(self) -> None:
        """Hand the trained gate values to the :class:`GateImportance` and fold the gates away.

        :meth:`step` does this itself; call it directly to rank by the gates elsewhere, e.g. on
        copies of the model in :func:`~tp_vit_plugins.fit_budget`. No-op once folded.
        """
        if self.gates.active:
            if isinstance(self.importance, GateImportance):
                self.importance.set_gates(self.gates.values())
            self.gates.remove(fold=True)  # exact: W <- W * g, before tp changes any shape

    def _prune(self) -> Generator[tp.Group, None, None]:
        self.fold_gates()
        yield from super()._prune()
