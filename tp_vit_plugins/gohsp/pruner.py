"""GOHSP optimisation stage: ADMM towards a heterogeneous structured-sparse ViT.

Yin et al., AAAI 2023 (arXiv 2301.05345). With ``W`` the prunable weights (qkv rows and
proj columns of every head and head dim, fc1 rows and fc2 columns of every MLP neuron):

* ``regularize(model)`` (after ``loss.backward()``, before ``optimizer.step()``) adds the
  ADMM proximal gradient ``rho * (W - Z + U)`` and, with ``admm_interval``, runs the dual
  update itself every ``admm_interval`` optimizer steps — the unit is steps, not epochs, so a
  small dataset gets as many ADMM rounds as a large one for the same number of steps;
* ``update_regularizer()`` sets ``Z = project(W + U)``, ``U = U + W - Z``, then balances
  ``rho`` (Boyd et al. 2011, §3.4.1: ``rho *= tau`` when the primal residual ``||W - Z||``
  exceeds ``mu`` times the dual residual ``rho ||Z - Z_prev||``, ``rho /= tau`` in the opposite
  case), rescaling the scaled dual ``U`` by the inverse factor so ``rho * U`` is unchanged, and
  multiplies ``rho`` by ``rho_growth`` (1 = balancing only); :attr:`converged` turns True once
  the relative primal residual ``||W - Z|| / ||W||`` is below ``tol``;
* ``step()`` hard-prunes through tp (heads, head dims, MLP neurons) exactly the units outside
  ``Z``'s support (the last projection; without any ADMM round, the projection of ``W``), then
  syncs attention. :attr:`history` records every round's residuals and ``rho``.

The residual balancing, the step-based schedule and the stopping rule are this library's
choices (standard ADMM practice); the paper's own schedule is not available here.

**The pull towards Z.** Through the gradient (``proximal=None``) the term ``rho (W - Z + U)``
is normalised per parameter by Adam, so ``rho`` barely matters: measured on the zoo
(``benchmarks/zoo_gohsp``), one AdamW epoch left the relative primal residual at 0.8 / 1.8
(-40 / -70 % parameters, 10 dual updates). By default (``proximal=0.2``) the weights take the
exact proximal step of the ADMM term after each backward, outside the optimizer, and ADMM
converges (mean relative residual 3e-5 to 4e-5 over the zoo with 10 dual updates); chosen on the zoo over the
gradient form, +0.72 pt [+0.27, +1.10] / +3.94 [+3.24, +4.63] at -40 / -70 % params
(``benchmarks/zoo_gohsp4``; the pull strength ``c`` of 0.2 or 1.0 and the graph bias change
it by less than 0.3 pt there). The CLI / bench recipes run 10 dual updates over the sparse phase.

``project`` keeps the structured pattern with the highest scores under a parameter budget:
every unit (head, head dim shared by a block's heads, MLP neuron) is scored by its energy per
parameter — ``sum F (W + U)^2`` with the diagonal empirical Fisher ``F`` by default
(``metric="fisher"``: the projection in the Fisher-weighted norm, i.e. units ranked by the
second-order estimate of the loss change of zeroing them), ``sum (W + U)^2`` with
``metric="euclidean"`` — divided by the mean score of its unit type: for heads in their block,
for head dims and MLP neurons over the model (``normalize="heads-block"``, the default), all
in their block (``normalize="block"``, as tp's mean normaliser does per group) or all over the
model (``normalize="type"``); heads are additionally
multiplied by ``head_score ** graph_bias`` from a calibrated
:class:`~tp_vit_plugins.GraphHeadImportance` — the graph ranking is a soft guideline that
weights can overrule, not a fixed mask. Units are removed greedily, lowest score first,
across all blocks (so blocks end with different head / neuron counts) until the removed
parameters reach ``pruning_ratio`` of the model's parameters; each block keeps at
least ``min_heads`` heads, one head dim and one MLP neuron.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from ..core.calibration import accumulate_gradients
from ..core.distributed import all_reduce_sum, is_distributed
from ..core.pruner import ViTPruner, check_ratio
from ..core.snapshot import ModuleSnapshot
from ..core.training import add_to_grad
from ..hosts.timm.families import has_rope
from ..hosts.timm.structure import BlockLayers, block_layers, head_layout, split_qkv, unit_param_costs
from ..hosts.timm.sync import sync_attention

__all__ = ["GOHSPPruner", "StructurePlan", "UNIT_TYPES", "METRICS", "NORMALIZE"]

#: Unit types GOHSP can remove.
UNIT_TYPES = ("heads", "head_dims", "mlp")
#: The norm of the Z-step projection: ``"euclidean"`` (nearest point, textbook ADMM) or
#: ``"fisher"`` (squared distance weighted by the mean of ``(dL/dW)^2``: units scored by
#: ``sum F W^2``, the second-order loss change of zeroing them; this library's extension and
#: default).
METRICS = ("euclidean", "fisher")
#: How unit scores are normalised before they compete across types and blocks: by the mean of
#: their unit type over the model (``"type"``), within their block (``"block"``), or heads within
#: their block and the other units over the model (``"heads-block"``, the default).
NORMALIZE = ("type", "block", "heads-block")


@dataclass
class StructurePlan:
    """Removed units per block (indices in the current, unpruned layout)."""

    heads: list[list[int]] = field(default_factory=list)
    head_dims: list[list[int]] = field(default_factory=list)
    neurons: list[list[int]] = field(default_factory=list)
    removed_params: int = 0


class GOHSPPruner(ViTPruner):
    """GOHSP: graph-guided ADMM structured pruning of a timm ViT, a ``tp.pruner.BasePruner``.

    Example::

        imp = tpv.GraphHeadImportance().calibrate(model, calib_loader, max_batches=8)
        pruner = tpv.GOHSPPruner(model, example, imp, pruning_ratio=0.4, admm_interval=50)
        pruner.calibrate_fisher(calib_loader, max_batches=8)  # the Z-step's Fisher norm
        train(model, loader, epochs=sparse_epochs, step_hook=pruner.regularize)  # dual updates every 50 steps
        print(pruner.admm_residual(), pruner.converged)
        pruner.step()        # hard prune to Z's support, attention synced
        train(model, loader, epochs=finetune_epochs)

    Args:
        model: A timm ViT-family model.
        example_inputs: Input for tp's graph tracing.
        importance: A calibrated :class:`~tp_vit_plugins.GraphHeadImportance` (or any head
            importance with ``head_scores``); ``None`` means no graph bias.
        pruning_ratio: Share of the model's **parameters** to remove, in ``[0, 1)`` (GOHSP decides
            which heads, head dims and neurons go; tp's per-layer channel ratios are not used).
        structures: Unit types to prune, a subset of :data:`UNIT_TYPES`.
        rho: Initial ADMM penalty.
        rho_growth: Extra factor applied to ``rho`` by every :meth:`update_regularizer`
            (after balancing; 1 = balancing only).
        admm_interval: Optimizer steps between dual updates run by :meth:`regularize`
            (``None``: call :meth:`update_regularizer` yourself).
        balance: Residual balancing of ``rho`` (see module docs).
        mu, tau: Balancing threshold and factor.
        tol: Relative primal residual below which :attr:`converged` is True.
        graph_bias: Exponent of the graph head score in the projection (0 ignores it).
        min_heads: Heads every block keeps.
        metric: The Z-step projection's norm, one of :data:`METRICS`. ``"fisher"`` (default)
            weights it by ``F``, estimated by :meth:`calibrate_fisher` on calibration batches
            (call it before training) and updated by every sparse-training step; without
            calibration the estimate starts at the first step, and before any gradient the
            projection is Euclidean. Measured on the zoo (``benchmarks/zoo_gohsp5``, RESULTS
            "Zoo: session 8"): the calibrated Fisher norm with per-block normalisation beat
            session 7's Euclidean, per-type projection by +0.99 pt [+0.49, +1.50] / +2.88 [+1.96,
            +3.79] at -40 / -70 % params; Fisher estimated from the training steps alone was
            erratic per model. (This library's extension; the paper's projection is Euclidean.)
        fisher_decay: How each training step updates the Fisher estimate with ``metric="fisher"``:
            ``F <- (1 - a) F + a g^2`` with ``a = fisher_decay`` (0 keeps the calibrated estimate
            fixed); ``None``: the cumulative mean over calibration batches and training steps.
        normalize: What a unit's score is divided by before all units compete for the budget,
            one of :data:`NORMALIZE`: ``"type"``, the mean of its unit type over the model;
            ``"block"``, the mean of its unit type in its block (as tp's ``normalizer="mean"``
            does per group under global pruning); ``"heads-block"`` (default), heads by the
            mean of the heads in their block, head dims and MLP neurons over the model. With
            the Fisher norm, ``"type"`` let the (much larger) first-block scores strip the later
            blocks' attention at -70 % (digits32: 86.2 % vs 94.6 %; ``"block"`` was -0.67 /
            +2.07 pt against it at -40 / -70 %), while ``"block"`` spreads the MLP cut evenly
            over blocks. ``"heads-block"`` keeps each block's attention but lets neurons and
            dims compete across blocks: vs ``"block"`` +0.58 pt [+0.18, +0.99] / -0.42 [-1.32,
            +0.44] (2 epochs) and +0.19 [-0.15, +0.54] / +0.13 [-0.44, +0.78] (4 epochs) at
            -40 / -70 % params (zoo, RESULTS "Zoo: session 9 (GOHSP heads per block)"; this
            library's choice).
        proximal: Apply the ADMM term as a proximal step on the weights, decoupled from the
            optimizer (as AdamW decouples weight decay): every :meth:`regularize` sets
            ``W <- (W + c (Z - U)) / (1 + c)`` with ``c = proximal``, the exact minimiser of
            ``||W' - W||^2 / 2 + c ||W' - Z + U||^2 / 2``, so the pull towards ``Z`` is not
            rescaled by Adam; residual balancing scales ``c`` with ``rho``. ``None``:
            ``rho (W - Z + U)`` is added to the gradient. (This library's choice, not the
            paper's; the default chosen on the zoo, see the module docs.)
        budget_ramp: Dual updates over which the Z-step's budget grows to the target
            (:meth:`current_budget`: the cubic gradual-pruning schedule; progressive ADMM
            pruning, this library's option, not the paper's); 0 (default): the full budget from
            the first projection. The hard prune always removes the full budget. Measured on the
            zoo (RESULTS "Zoo: session 9 (GOHSP budget ramp)", ``budget_ramp=5`` of 10 dual
            updates): +0.05 pt [-0.48, +0.54] / -0.61 [-1.50, +0.23] at -40 / -70 % params vs no
            ramp, so it is not the default.
        **kwargs: Passed to :class:`ViTPruner` / ``tp.pruner.BasePruner``.

    Raises:
        ValueError: Bad ratio / structures / rho, an uncalibrated importance, or a budget the
            structures cannot reach. The model is untouched then.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        importance: tp.importance.Importance | None = None,
        pruning_ratio: float = 0.4,
        structures: Sequence[str] = UNIT_TYPES,
        rho: float = 1e-2,
        rho_growth: float = 1.0,
        graph_bias: float = 1.0,
        admm_interval: int | None = None,
        balance: bool = True,
        mu: float = 10.0,
        tau: float = 2.0,
        tol: float = 1e-2,
        min_heads: int = 1,
        proximal: float | None = 0.2,
        metric: str = "fisher",
        fisher_decay: float | None = None,
        normalize: str = "heads-block",
        budget_ramp: int = 0,
        target_params_ratio: float | None = None,
        **kwargs: typing.Any,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        if fisher_decay is not None and not 0.0 <= fisher_decay <= 1.0:
            raise ValueError(f"fisher_decay must be in [0, 1] (or None: the cumulative mean), got {fisher_decay}")
        self.metric, self.fisher_decay = metric, fisher_decay
        self._fisher: dict[nn.Parameter, torch.Tensor] = {}
        self._fisher_count = 0
        if proximal is not None and proximal <= 0:
            raise ValueError(f"proximal must be > 0 (or None: the ADMM term goes through the gradient), got {proximal}")
        self.proximal = proximal
        if not isinstance(budget_ramp, int) or budget_ramp < 0:
            raise ValueError(f"budget_ramp must be an int >= 0 (dual updates; 0: the full budget at once), got {budget_ramp!r}")
        self.budget_ramp = budget_ramp
        if target_params_ratio is not None:
            warnings.warn(
                "GOHSPPruner(pruning_ratio=) is now GOHSPPruner(pruning_ratio=) (the share of parameters removed)",
                DeprecationWarning,
                stacklevel=2,
            )
            pruning_ratio = target_params_ratio
        self.params_pruning_ratio = check_ratio("pruning_ratio", pruning_ratio)
        bad = set(structures) - set(UNIT_TYPES)
        if bad or not structures:
            raise ValueError(f"structures must be a non-empty subset of {UNIT_TYPES}, got {list(structures)}")
        if rho <= 0 or rho_growth < 1:
            raise ValueError(f"need rho > 0 and rho_growth >= 1, got rho={rho}, rho_growth={rho_growth}")
        if admm_interval is not None and (not isinstance(admm_interval, int) or admm_interval < 1):
            raise ValueError(f"admm_interval must be a positive int (optimizer steps), got {admm_interval!r}")
        if mu <= 1 or tau <= 1 or tol <= 0:
            raise ValueError(f"need mu > 1, tau > 1 and tol > 0, got mu={mu}, tau={tau}, tol={tol}")
        if importance is not None and hasattr(importance, "head_scores") and not importance.head_scores and graph_bias:
            raise ValueError("calibrate the head importance first: importance.calibrate(model, loader)")
        for key in ("head_pruning_ratio", "pruning_ratio_dict", "head_pruning_ratio_dict"):
            if key in kwargs:
                raise TypeError(f"GOHSPPruner decides the structure from pruning_ratio (parameters removed); do not pass {key}")
        self.structures = tuple(structures)
        self.rho, self.rho_growth, self.graph_bias = float(rho), float(rho_growth), float(graph_bias)
        self.admm_interval, self.balance, self.mu, self.tau, self.tol = admm_interval, balance, mu, tau, tol
        self.steps_done, self.rounds = 0, 0
        #: One entry per dual update: ``{"step", "primal", "dual", "rho"}`` (relative residuals).
        self.history: list[dict] = []
        self._z_plan: StructurePlan | None = None
        if "head_dims" in structures and has_rope(model):
            raise ValueError(
                f"{type(model).__name__} applies a rotary embedding computed for the full head width; use "
                "structures=('heads', 'mlp')"
            )
        before = ModuleSnapshot(model)  # EVA / BEiT / CaiT attention is converted by ViTPruner: undone on errors
        try:
            self._init_plan(model, example_inputs, importance, min_heads, kwargs)
        except Exception:
            before.restore()
            raise

    def _init_plan(self, model, example_inputs, importance, min_heads, kwargs) -> None:
        super().__init__(model, example_inputs, importance, min_heads=min_heads, **kwargs)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.budget = int(round(self.params_pruning_ratio * self.total_params))
        self._blocks = self._prunable_blocks(model)
        self.Z: dict[nn.Parameter, torch.Tensor] = {}
        self.U: dict[nn.Parameter, torch.Tensor] = {}
        self.final_plan: StructurePlan | None = None  # the support hard-pruned by step()
        plan = self.project(use_dual=False, budget=self.budget)
        if plan.removed_params < self.budget:
            raise ValueError(
                f"pruning_ratio={self.params_pruning_ratio} asks for {self.budget} parameters but the "
                f"structures {self.structures} can remove at most {plan.removed_params}; lower the ratio"
            )
        if self.budget_ramp:
            plan = self.project(use_dual=False)  # the ramp's first support (nothing removed yet)
        self._set_z(plan)
        self.U = {p: torch.zeros_like(p.detach()) for p in self.Z}

    # ------------------------------------------------------------------ structure
    @property
    def target_params_ratio(self) -> float:
        """The share of parameters removed (``pruning_ratio``; the old attribute name)."""
        return self.params_pruning_ratio

    @staticmethod
    def _prunable_blocks(model: nn.Module) -> list[BlockLayers]:
        blocks = block_layers(model)
        if any(b.fc1 is None for b in blocks):
            raise TypeError("GOHSPPruner expects timm blocks with an MLP of two nn.Linear layers (mlp.fc1 / mlp.fc2)")
        return blocks

    def _squared(self, p: nn.Parameter, use_dual: bool) -> torch.Tensor:
        """``(W + U)^2`` per entry, weighted by the running mean of ``(dL/dW)^2`` with ``metric="fisher"``."""
        v = self._value(p, use_dual).pow(2)
        f = self._fisher.get(p) if self.metric == "fisher" else None
        return v * f if f is not None else v

    def _value(self, p: nn.Parameter, use_dual: bool) -> torch.Tensor:
        v = p.detach()
        return v + self.U[p] if use_dual and p in self.U else v

    @torch.no_grad()
    def _unit_energies(self, use_dual: bool) -> list[dict[str, torch.Tensor]]:
        """Per block: squared weight norm of every head [H], head dim [d], neuron [M]."""
        out, sq = [], self._squared
        for b in self._blocks:
            fc1, fc2 = b.fc1, b.fc2
            H, d = head_layout(b.attn)
            qkv_w = split_qkv(sq(b.qkv.weight, use_dual), H, d).sum((0, 3))  # [H, d]
            if b.qkv.bias is not None:
                qkv_w = qkv_w + split_qkv(sq(b.qkv.bias, use_dual), H, d).sum(0)
            proj_w = sq(b.proj.weight, use_dual).sum(0).view(H, d)
            per = qkv_w + proj_w  # [H, d]
            neuron = sq(fc1.weight, use_dual).sum(1) + sq(fc2.weight, use_dual).sum(0)
            if fc1.bias is not None:
                neuron = neuron + sq(fc1.bias, use_dual)
            out.append({"head": per.sum(1), "dim": per.sum(0), "neuron": neuron})
        return out

    def current_budget(self) -> int:
        """Parameters the Z-step removes now: the full budget, or its share on the ramp.

        With ``budget_ramp = R``, after ``k`` dual updates the share is ``1 - (1 - min(1, k / R)) ** 3``
        (the cubic schedule of gradual pruning, Zhu & Gupta 2017): nothing at first, the full
        budget from the ``R``-th dual update on.
        """
        if not self.budget_ramp:
            return self.budget
        t = min(1.0, self.rounds / self.budget_ramp)
        return int(round(self.budget * (1.0 - (1.0 - t) ** 3)))

    @torch.no_grad()
    def project(self, use_dual: bool = True, budget: int | None = None) -> StructurePlan:
        """Choose the structured support of ``W (+ U)`` under the parameter budget.

        Args:
            use_dual: Project ``W + U`` (the Z-step) instead of ``W``.
            budget: Parameters to remove; default :meth:`current_budget`.

        Returns:
            The removed units per block (indices in the current layout).
        """
        budget = self.current_budget() if budget is None else budget
        energies = self._unit_energies(use_dual)
        graph = getattr(self.importance, "head_scores", {}) or {}
        units: list[tuple[float, int, str, int]] = []  # (score, block, kind, index)
        raw: dict[str, list[tuple[float, int, int]]] = {"head": [], "dim": [], "neuron": []}
        for li, (b, e) in enumerate(zip(self._blocks, energies)):
            H, d = head_layout(b.attn)
            cell, ncost = unit_param_costs(b)
            if "heads" in self.structures:
                for h, v in enumerate(e["head"].tolist()):
                    raw["head"].append((v / (d * cell), li, h))
            if "head_dims" in self.structures:
                for j, v in enumerate(e["dim"].tolist()):
                    raw["dim"].append((v / (H * cell), li, j))
            if "mlp" in self.structures:
                for n, v in enumerate(e["neuron"].tolist()):
                    raw["neuron"].append((v / ncost, li, n))

        def group(kind: str, li: int) -> tuple[str, int | None]:  # the units a score is normalised over
            per_block = self.normalize == "block" or (self.normalize == "heads-block" and kind == "head")
            return kind, (li if per_block else None)

        means: dict[tuple[str, int | None], tuple[float, int]] = {}
        for kind, items in raw.items():
            for v, li, _ in items:
                total, n = means.get(group(kind, li), (0.0, 0))
                means[group(kind, li)] = (total + v, n + 1)
        for kind, items in raw.items():
            for v, li, idx in items:
                total, n = means[group(kind, li)]
                score = v / ((total / n) or 1.0)
                if kind == "head" and self.graph_bias and graph:
                    qkv = self._blocks[li].qkv
                    if qkv in graph and len(graph[qkv]) == head_layout(self._blocks[li].attn)[0]:
                        score *= float(graph[qkv][idx]) ** self.graph_bias
                units.append((score, li, kind, idx))
        units.sort()
        plan = StructurePlan(
            heads=[[] for _ in self._blocks], head_dims=[[] for _ in self._blocks], neurons=[[] for _ in self._blocks]
        )
        heads_left = [head_layout(b.attn)[0] for b in self._blocks]
        dims_left = [head_layout(b.attn)[1] for b in self._blocks]
        neurons_left = [b.fc1.out_features for b in self._blocks]
        removed = 0
        for _, li, kind, idx in units:
            if removed >= budget:
                break
            cell, ncost = unit_param_costs(self._blocks[li])
            if kind == "head" and heads_left[li] > self.min_heads:
                plan.heads[li].append(idx)
                heads_left[li] -= 1
                removed += dims_left[li] * cell
            elif kind == "dim" and dims_left[li] > 1:
                plan.head_dims[li].append(idx)
                dims_left[li] -= 1
                removed += heads_left[li] * cell
            elif kind == "neuron" and neurons_left[li] > 1:
                plan.neurons[li].append(idx)
                neurons_left[li] -= 1
                removed += ncost
        plan.removed_params = removed
        return plan

    @torch.no_grad()
    def _set_z(self, plan: StructurePlan, use_dual: bool = True) -> None:
        """``Z`` = ``W (+ U)`` with every removed unit zeroed."""
        for li, b in enumerate(self._blocks):
            fc1, fc2 = b.fc1, b.fc2
            H, d = head_layout(b.attn)
            for p in (b.qkv.weight, b.qkv.bias, b.proj.weight, fc1.weight, fc1.bias, fc2.weight):
                if p is not None:
                    self.Z[p] = self._value(p, use_dual).clone()
            keep = torch.ones(H, d, dtype=torch.bool)
            keep[plan.heads[li]] = False
            keep[:, plan.head_dims[li]] = False
            split_qkv(self.Z[b.qkv.weight], H, d)[:, ~keep] = 0
            if b.qkv.bias is not None:
                split_qkv(self.Z[b.qkv.bias], H, d)[:, ~keep] = 0
            self.Z[b.proj.weight][:, ~keep.flatten()] = 0
            n = plan.neurons[li]
            self.Z[fc1.weight][n] = 0
            if fc1.bias is not None:
                self.Z[fc1.bias][n] = 0
            self.Z[fc2.weight][:, n] = 0

    # ------------------------------------------------------------------ ADMM hooks
    def regularize(self, model: nn.Module | None = None, loss: torch.Tensor | None = None) -> None:
        """Add ``rho * (W - Z + U)`` to every prunable weight's gradient (after backward); dual updates every ``admm_interval`` steps.

        With ``proximal=c`` the weights themselves move instead: ``W <- (W + c (Z - U)) / (1 + c)``.
        """  # noqa: E501
        if self.metric == "fisher" and not self._fisher_count:
            warnings.warn(
                "GOHSPPruner(metric='fisher') starts its Fisher estimate from this training step (one batch); "
                "call pruner.calibrate_fisher(calib_loader) before training (the default recipe), or pass "
                "metric='euclidean'",
                stacklevel=2,
            )
        with torch.no_grad():
            if self.metric == "fisher":  # the loss gradient, before the ADMM term touches it
                self._update_fisher()
            for p, z in self.Z.items():
                if self.proximal is None:
                    add_to_grad(p, self.rho * (p.detach() - z + self.U[p]))
                else:
                    c = self.proximal
                    p.mul_(1.0 / (1.0 + c)).add_(z - self.U[p], alpha=c / (1.0 + c))
        self.steps_done += 1
        if self.admm_interval and self.steps_done % self.admm_interval == 0:
            self.update_regularizer()

    @torch.no_grad()
    def _update_fisher(self) -> None:
        """Fold the current ``(dL/dW)^2`` into the Fisher estimate (see ``fisher_decay``)."""
        n, a = self._fisher_count, self.fisher_decay
        for p in self.Z:
            if p.grad is None:
                continue
            g2 = p.grad.detach().pow(2)
            if p not in self._fisher:
                self._fisher[p] = g2.clone()
            elif a is None:
                self._fisher[p].mul_(n / (n + 1)).add_(g2, alpha=1.0 / (n + 1))
            else:
                self._fisher[p].lerp_(g2, a)
        self._fisher_count = n + 1

    def calibrate_fisher(
        self,
        loader: Iterable,
        max_batches: int | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        progress: bool = True,
        labels: str = "data",
        seed: int = 0,
    ) -> GOHSPPruner:
        """Start the ``metric="fisher"`` estimate from calibration batches, then re-project ``Z``.

        ``F`` is the mean over batches of the squared mini-batch gradient (the model in eval
        mode, restored afterwards; gradients cleared). Call before the sparse training; without
        it the estimate starts at the first training step's gradient, one noisy batch.

        Args:
            loader: Yields ``(images [B, C, H, W], targets [B])``.
            max_batches: Batches to use (``None``: all).
            loss_fn: ``loss_fn(logits, targets)``.
            progress: tqdm bar.
            labels: ``"data"``: the loader's targets (the empirical Fisher); ``"model"``: targets
                drawn from the model's own softmax (the true Fisher, which does not vanish on
                images the model already fits), with a generator seeded by ``seed``. Level with
                ``"data"`` on the zoo (-0.05 / +0.30 pt at -40 / -70 % params,
                ``benchmarks/zoo_gohsp5``), so the default stays ``"data"``.
            seed: Seed of the label draws with ``labels="model"``.

        Returns:
            ``self``.

        Raises:
            ValueError: ``metric`` is not ``"fisher"``, ADMM has already run a dual update, or the
                loader is empty.
        """
        if self.metric != "fisher":
            raise ValueError(f"calibrate_fisher needs metric='fisher', this pruner uses {self.metric!r}")
        if self.rounds:
            raise ValueError("calibrate_fisher must run before the first dual update")
        if labels not in ("data", "model"):
            raise ValueError(f"labels must be 'data' or 'model', got {labels!r}")
        gen = torch.Generator().manual_seed(seed)

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if labels == "model":  # the true Fisher: targets drawn from the model's own softmax
                probs = logits.detach().float().softmax(-1).cpu()
                targets = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)
            return loss_fn(logits, targets)

        def fold_batch() -> None:  # this batch's squared gradient into F, then a clean slate
            self._update_fisher()
            self.model.zero_grad(set_to_none=True)

        self._fisher, self._fisher_count = {}, 0
        decay, self.fisher_decay = self.fisher_decay, None  # calibration batches weigh equally
        try:
            accumulate_gradients(self.model, loader, max_batches, loss, "fisher", progress, after_backward=fold_batch,
                                 allow_empty=is_distributed())  # fmt: skip
        except Exception:
            self._fisher, self._fisher_count = {}, 0  # no half-calibrated estimate
            self.model.zero_grad(set_to_none=True)
            raise
        finally:
            self.fisher_decay = decay
        # every rank holds the same Z: the mean over all ranks' batches (no-op in one process; a rank
        # without batches adds zeros, and only an empty total is an error)
        count = all_reduce_sum(torch.tensor([float(self._fisher_count)], dtype=torch.float64)).item()
        if not count:
            raise ValueError("calibrate_fisher got an empty loader")
        for p in self.Z:
            f = self._fisher.get(p, torch.zeros_like(p.detach())) * self._fisher_count
            self._fisher[p] = all_reduce_sum(f.contiguous()) / count
        self._fisher_count = int(count)
        self._set_z(self.project(use_dual=False), use_dual=False)
        return self

    @property
    def converged(self) -> bool:
        """Whether the last dual update left the relative primal residual below ``tol``."""
        return bool(self.history) and self.history[-1]["primal"] < self.tol

    @torch.no_grad()
    def update_regularizer(self) -> None:
        """ADMM dual step: ``Z = project(W + U)``, ``U += W - Z``, then ``rho`` balancing (see module docs)."""
        z_prev = {p: z.clone() for p, z in self.Z.items()}
        self.rounds += 1  # this update's share of the budget on the ramp
        plan = self.project(use_dual=True)
        self._set_z(plan, use_dual=True)
        self._z_plan = plan
        for p, z in self.Z.items():
            self.U[p] += p.detach() - z
        w_norm = sum(float(p.detach().pow(2).sum()) for p in self.Z) ** 0.5
        primal = sum(float((p.detach() - z).pow(2).sum()) for p, z in self.Z.items()) ** 0.5
        dual = self.rho * sum(float((z - z_prev[p]).pow(2).sum()) for p, z in self.Z.items()) ** 0.5
        factor = 1.0
        if self.balance and primal > self.mu * dual:
            factor = self.tau
        elif self.balance and dual > self.mu * primal:
            factor = 1.0 / self.tau
        factor *= self.rho_growth
        if factor != 1.0:  # the scaled dual U = y / rho: keep y = rho * U when rho changes
            self.rho *= factor
            if self.proximal is not None:  # the proximal pull is this mode's rho: it moves with it
                self.proximal *= factor
            for p in self.U:
                self.U[p] /= factor
        scale = max(w_norm, 1e-30)
        self.history.append({"step": self.steps_done, "primal": primal / scale, "dual": dual / scale, "rho": self.rho})

    def admm_residual(self) -> float:
        """Primal residual ``||W - Z|| / ||W||`` over the prunable weights (0 = on the pattern)."""
        num = sum(float((p.detach() - z).pow(2).sum()) for p, z in self.Z.items())
        den = sum(float(p.detach().pow(2).sum()) for p in self.Z)
        return (num / max(den, 1e-30)) ** 0.5

    # ------------------------------------------------------------------ hard prune
    def _prune(self) -> Generator[tp.Group, None, None]:
        if self.current_step > self.iterative_steps:
            yield from super()._prune()
            return
        plan = self._z_plan if self._z_plan is not None else self.project(use_dual=False)  # Z's support
        if plan.removed_params < self.budget:  # the ramp had not reached the full budget: project once more
            plan = self.project(use_dual=False, budget=self.budget)
        self.final_plan = plan
        for li, b in enumerate(self._blocks):  # 1) whole heads
            if plan.heads[li]:
                yield from self.head_removal(b.attn, plan.heads[li])
        sync_attention(self.model, self.num_heads)
        for li, b in enumerate(self._blocks):  # 2) head dims, same dims in every kept head
            dims = sorted(plan.head_dims[li])
            if dims:
                H, d = head_layout(b.attn)
                idxs = [h * d + j for h in range(H) for j in dims]
                yield self.DG.get_pruning_group(b.proj, tp.prune_linear_in_channels, idxs)
        sync_attention(self.model, self.num_heads)
        for li, b in enumerate(self._blocks):  # 3) MLP neurons
            if plan.neurons[li]:
                yield self.DG.get_pruning_group(b.fc1, tp.prune_linear_out_channels, sorted(plan.neurons[li]))
        sync_attention(self.model, self.num_heads)
        self.Z, self.U = {}, {}
