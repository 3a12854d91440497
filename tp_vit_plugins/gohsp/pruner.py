"""GOHSP optimisation stage: ADMM towards a heterogeneous structured-sparse ViT.

Yin et al., AAAI 2023 (arXiv 2301.05345). With ``W`` the prunable weights (qkv rows and
proj columns of every head and head dim, fc1 rows and fc2 columns of every MLP neuron):

* ``regularize(model)`` (after ``loss.backward()``, before ``optimizer.step()``) pulls ``W``
  towards ``Z``: by default an exact proximal step ``W <- (W + c (Z - U)) / (1 + c)`` outside
  the optimizer (``proximal=c``), or the ADMM gradient ``rho * (W - Z + U)``
  (``proximal=None``); it also runs the dual updates, every ``admm_interval`` optimizer
  steps, or by default on a cadence set by the epoch length it sees (so tp's loop, which
  calls ``update_regularizer()`` once per epoch, needs no extra call);
* ``update_regularizer()`` sets ``Z = project(W + U)``, ``U = U + W - Z``, then balances
  ``rho`` (Boyd et al. 2011, §3.4.1: ``rho *= tau`` when the primal residual ``||W - Z||``
  exceeds ``mu`` times the dual residual ``rho ||Z - Z_prev||``, ``rho /= tau`` in the opposite
  case), rescaling the scaled dual ``U`` so ``rho * U`` is unchanged, and multiplies ``rho`` by
  ``rho_growth``; :attr:`converged` turns True once ``||W - Z|| / ||W||`` is below ``tol``;
* ``step()`` hard-prunes through tp (heads, head dims, MLP neurons) exactly the units outside
  ``Z``'s support (without any ADMM round, the projection of ``W``), then syncs attention.
  :attr:`history` records every round's residuals and ``rho``.

``project`` keeps the structured pattern with the highest scores under a parameter budget:
every unit (head, head dim shared by a block's heads, MLP neuron) is scored by its energy per
parameter — ``sum F (W + U)^2`` with the diagonal empirical Fisher ``F`` (``metric="fisher"``:
units ranked by the second-order estimate of the loss change of zeroing them) or
``sum (W + U)^2`` (``metric="euclidean"``) — divided by the mean score of its kind: heads by
the heads of their block (each block keeps its attention in proportion), head dims and MLP
neurons by their kind over the model (widths compete across blocks). Heads are additionally
multiplied by ``head_score ** graph_bias`` from a calibrated
:class:`~tp_vit_plugins.GraphHeadImportance` — the graph ranking is a soft guideline that
weights can overrule, not a fixed mask. Units are removed greedily, lowest score first,
across all blocks (so blocks end with different head / neuron counts) until the removed
parameters reach ``pruning_ratio`` of the model's parameters; each block keeps at least
``min_heads`` heads, one head dim and one MLP neuron.

What is the paper's and what is this library's is listed in the README; the measurements
behind the defaults are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from ..core.calibration import accumulate_gradients
from ..core.distributed import all_reduce_sum, is_distributed
from ..core.options import check_pruner_kwargs, split_options
from ..core.pruner import ViTPruner, check_ratio
from ..core.snapshot import ModuleSnapshot
from ..core.training import add_to_grad
from ..hosts import BlockLayers, host_for, split_qkv, unit_param_costs
from .config import METRICS, UNIT_TYPES, GOHSPConfig

__all__ = ["GOHSPPruner", "GOHSPConfig", "StructurePlan", "UNIT_TYPES", "METRICS"]


@dataclass
class StructurePlan:
    """Removed units per block (indices in the current, unpruned layout)."""

    heads: list[list[int]] = field(default_factory=list)
    head_dims: list[list[int]] = field(default_factory=list)
    neurons: list[list[int]] = field(default_factory=list)
    removed_params: int = 0


class GOHSPPruner(ViTPruner):
    """GOHSP: graph-guided ADMM structured pruning of a timm ViT, a ``tp.pruner.BasePruner``.

    Example (tp's sparse-training loop; nothing else is needed)::

        imp = tpv.GraphHeadImportance().calibrate(model, calib_loader, max_batches=8)
        pruner = tpv.GOHSPPruner(model, example, imp, pruning_ratio=0.4)  # 40 % of the parameters go
        for epoch in range(sparse_epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(); loss.backward()
                pruner.regularize(model)     # Fisher estimate, pull towards Z, dual updates
                optimizer.step()
            pruner.update_regularizer()      # epoch end: a dual update; sets the cadence
        print(pruner.admm_residual(), pruner.converged)
        pruner.step()        # hard prune to Z's support, attention synced
        train(model, loader, epochs=finetune_epochs)

    ``pruner.calibrate_fisher(calib_loader)`` before training and ``admm_interval=`` fix the
    Fisher estimate and the cadence yourself (the CLI's recipe).

    Args:
        model: A timm ViT-family model.
        example_inputs: Input for tp's graph tracing.
        importance: A calibrated :class:`~tp_vit_plugins.GraphHeadImportance` (or any head
            importance with ``head_scores``); ``None`` means no graph bias.
        pruning_ratio: Share of the model's **parameters** to remove, in ``[0, 1)``: GOHSP
            decides which heads, head dims and neurons go (tp's per-layer channel ratios are not used).
        config: The method's options (:class:`~tp_vit_plugins.gohsp.GOHSPConfig`), or a preset's
            name (``"paper"``, ``"recommended"``: :meth:`~tp_vit_plugins.gohsp.GOHSPConfig.preset`).
        **kwargs: :class:`~tp_vit_plugins.gohsp.GOHSPConfig` fields (override ``config``), then
            :class:`ViTPruner` / ``tp.pruner.BasePruner`` arguments.

    Raises:
        ValueError: Bad ratio or options, an uncalibrated importance, or a budget the
            structures cannot reach. The model is untouched then.
        TypeError: A removed option with a value other than its old default, or tp head ratios.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        importance: tp.importance.Importance | None = None,
        pruning_ratio: float = 0.4,
        config: GOHSPConfig | str | None = None,
        **kwargs: typing.Any,
    ) -> None:
        cfg, kwargs = split_options(GOHSPConfig, config, kwargs, "GOHSPPruner")
        check_pruner_kwargs("GOHSPPruner", kwargs, ViTPruner.__init__, tp.pruner.BasePruner.__init__, config_cls=GOHSPConfig)
        self.config = cfg
        self.params_pruning_ratio = check_ratio("pruning_ratio", pruning_ratio)
        for key in ("head_pruning_ratio", "pruning_ratio_dict", "head_pruning_ratio_dict"):
            if key in kwargs:
                raise TypeError(f"GOHSPPruner decides the structure from pruning_ratio (parameters removed); do not pass {key}")
        if importance is not None and hasattr(importance, "head_scores") and not importance.head_scores and cfg.graph_bias:
            raise ValueError("calibrate the head importance first: importance.calibrate(model, loader)")
        self.metric, self.proximal, self.structures = cfg.metric, cfg.proximal, cfg.structures
        self._fisher: dict[nn.Parameter, torch.Tensor] = {}
        self._fisher_count = 0
        self.rho, self.rho_growth, self.graph_bias = float(cfg.rho), float(cfg.rho_growth), float(cfg.graph_bias)
        self.admm_interval, self.balance, self.mu, self.tau, self.tol = cfg.admm_interval, cfg.balance, cfg.mu, cfg.tau, cfg.tol
        self.steps_done, self.rounds = 0, 0
        #: Steps between construction and the first ``update_regularizer()`` call (the epoch
        #: length of tp's loop; ``None`` before it). Sets the automatic dual-update cadence.
        self.epoch_steps: int | None = None
        self._since_update = 0
        self._auto_gap = 2 * cfg.fisher_warmup
        # training steps left that only estimate the Fisher norm (calibrate_fisher sets it to 0)
        self._warmup_left = cfg.fisher_warmup if cfg.metric == "fisher" else 0
        #: One entry per dual update: ``{"step", "primal", "dual", "rho"}`` (relative residuals).
        self.history: list[dict] = []
        self._z_plan: StructurePlan | None = None
        if "head_dims" in cfg.structures and host_for(model).has_rope(model):
            raise ValueError(
                f"{type(model).__name__} applies a rotary embedding computed for the full head width; use "
                "structures=('heads', 'mlp')"
            )
        before = ModuleSnapshot(model)  # EVA / BEiT / CaiT attention is converted by ViTPruner: undone on errors
        try:
            self._init_plan(model, example_inputs, importance, cfg.min_heads, kwargs)
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
        self._set_z(plan)
        self.U = {p: torch.zeros_like(p.detach()) for p in self.Z}

    # ------------------------------------------------------------------ structure
    @property
    def target_params_ratio(self) -> float:
        """The share of parameters removed (``pruning_ratio``; the old attribute name)."""
        return self.params_pruning_ratio

    @staticmethod
    def _prunable_blocks(model: nn.Module) -> list[BlockLayers]:
        blocks = host_for(model).block_layers(model)
        if any(b.fc1 is None for b in blocks):
            raise TypeError("GOHSPPruner expects blocks with an MLP of two nn.Linear layers (fc1 / fc2)")
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
            H, d = self.host.head_layout(b.attn)
            qkv_w = torch.zeros(H, d, device=b.proj.weight.device, dtype=b.proj.weight.dtype)
            for lin in b.in_projs:  # the fused qkv, or q, k and v
                qkv_w = qkv_w + split_qkv(sq(lin.weight, use_dual), H, d).sum((0, 3))  # [H, d]
                if lin.bias is not None:
                    qkv_w = qkv_w + split_qkv(sq(lin.bias, use_dual), H, d).sum(0)
            proj_w = sq(b.proj.weight, use_dual).sum(0).view(H, d)
            per = qkv_w + proj_w  # [H, d]
            neuron = sq(fc1.weight, use_dual).sum(1) + sq(fc2.weight, use_dual).sum(0)
            if fc1.bias is not None:
                neuron = neuron + sq(fc1.bias, use_dual)
            out.append({"head": per.sum(1), "dim": per.sum(0), "neuron": neuron})
        return out

    def _guide(self, scores: torch.Tensor, idx: int) -> float:
        """The graph's factor on head ``idx``'s Z-step score (``graph_guide``; ``scores``: the block's ``[H]``)."""
        if self.config.graph_guide == "zscore":  # the ranking's order, whatever the spread of PageRank mass
            s = scores.double()
            spread = s.std(unbiased=False)
            if spread <= 1e-9 * s.abs().mean():  # a flat ranking: no guidance
                return 1.0
            return float(torch.exp(self.graph_bias * (s[idx] - s.mean()) / spread))
        return float(scores[idx]) ** self.graph_bias

    @torch.no_grad()
    def project(self, use_dual: bool = True, budget: int | None = None) -> StructurePlan:
        """Choose the structured support of ``W (+ U)`` under the parameter budget.

        Args:
            use_dual: Project ``W + U`` (the Z-step) instead of ``W``.
            budget: Parameters to remove; default the pruner's budget.

        Returns:
            The removed units per block (indices in the current layout).
        """
        budget = self.budget if budget is None else budget
        energies = self._unit_energies(use_dual)
        graph = getattr(self.importance, "head_scores", {}) or {}
        units: list[tuple[float, int, str, int]] = []  # (score, block, kind, index)
        raw: dict[str, list[tuple[float, int, int]]] = {"head": [], "dim": [], "neuron": []}
        for li, (b, e) in enumerate(zip(self._blocks, energies)):
            H, d = self.host.head_layout(b.attn)
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
            return kind, (li if kind == "head" else None)

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
                    qkv = self._blocks[li].key
                    if qkv in graph and len(graph[qkv]) == self.host.head_layout(self._blocks[li].attn)[0]:
                        score *= self._guide(graph[qkv], idx)
                units.append((score, li, kind, idx))
        units.sort()
        plan = StructurePlan(
            heads=[[] for _ in self._blocks], head_dims=[[] for _ in self._blocks], neurons=[[] for _ in self._blocks]
        )
        heads_left = [self.host.head_layout(b.attn)[0] for b in self._blocks]
        dims_left = [self.host.head_layout(b.attn)[1] for b in self._blocks]
        floors = [self.head_dim_floors.get(b.key, 1) for b in self._blocks]
        neurons_left = [b.fc1.out_features for b in self._blocks]
        head_order: list[list[int]] = [[] for _ in self._blocks]  # per block, heads from the lowest score
        for _, li, kind, idx in units:
            if kind == "head":
                head_order[li].append(idx)
        removed = 0
        for _, li, kind, idx in units:
            if removed >= budget:
                break
            cell, ncost = unit_param_costs(self._blocks[li])
            if kind == "dim" and dims_left[li] <= floors[li]:  # at the floor: the block's next head goes instead
                kind = "head"
                idx = next((h for h in head_order[li] if h not in plan.heads[li]), -1)
                if idx < 0:
                    continue
            if kind == "head" and heads_left[li] > self.min_heads and idx not in plan.heads[li]:
                plan.heads[li].append(idx)
                heads_left[li] -= 1
                removed += dims_left[li] * cell
            elif kind == "dim":
                plan.head_dims[li].append(idx)
                dims_left[li] -= 1
                removed += heads_left[li] * cell
            elif kind == "neuron" and neurons_left[li] > 1:
                plan.neurons[li].append(idx)
                neurons_left[li] -= 1
                removed += ncost
        if self.round_to:  # tp's round_to: kept widths rounded down to a multiple, by the same ranking
            r = int(self.round_to)
            for li in range(len(self._blocks)):
                cell, ncost = unit_param_costs(self._blocks[li])
                for kind, left, chosen, floor in (
                    ("neuron", neurons_left, plan.neurons[li], 1),
                    ("dim", dims_left, plan.head_dims[li], floors[li]),
                ):
                    extra = left[li] % r
                    if not extra or left[li] - extra < max(r, floor):
                        continue
                    more = [idx for _, lj, k, idx in units if lj == li and k == kind and idx not in chosen][:extra]
                    chosen.extend(more)
                    left[li] -= len(more)
                    removed += len(more) * (ncost if kind == "neuron" else heads_left[li] * cell)
        plan.removed_params = removed
        return plan

    @torch.no_grad()
    def _set_z(self, plan: StructurePlan, use_dual: bool = True) -> None:
        """``Z`` = ``W (+ U)`` with every removed unit zeroed."""
        for li, b in enumerate(self._blocks):
            fc1, fc2 = b.fc1, b.fc2
            H, d = self.host.head_layout(b.attn)
            ins = [p for lin in b.in_projs for p in (lin.weight, lin.bias)]
            for p in (*ins, b.proj.weight, fc1.weight, fc1.bias, fc2.weight):
                if p is not None:
                    self.Z[p] = self._value(p, use_dual).clone()
            keep = torch.ones(H, d, dtype=torch.bool)
            keep[plan.heads[li]] = False
            keep[:, plan.head_dims[li]] = False
            for lin in b.in_projs:
                split_qkv(self.Z[lin.weight], H, d)[:, ~keep] = 0
                if lin.bias is not None:
                    split_qkv(self.Z[lin.bias], H, d)[:, ~keep] = 0
            self.Z[b.proj.weight][:, ~keep.flatten()] = 0
            n = plan.neurons[li]
            self.Z[fc1.weight][n] = 0
            if fc1.bias is not None:
                self.Z[fc1.bias][n] = 0
            self.Z[fc2.weight][:, n] = 0

    # ------------------------------------------------------------------ ADMM hooks
    def regularize(self, model: nn.Module | None = None, loss: torch.Tensor | None = None) -> None:
        """Pull ``W`` towards ``Z`` (after backward, before the optimizer step); dual updates on the pruner's cadence.

        With ``proximal=c`` the weights move: ``W <- (W + c (Z - U)) / (1 + c)``; with
        ``proximal=None`` ``rho * (W - Z + U)`` is added to every prunable weight's gradient.
        ``metric="fisher"`` folds this step's ``(dL/dW)^2`` into the Fisher estimate first;
        without :meth:`calibrate_fisher` the first ``fisher_warmup`` steps only estimate it.
        Dual updates run every ``admm_interval`` steps, or on the cadence ``admm_interval=None``
        derives from the steps seen (see :class:`~tp_vit_plugins.gohsp.GOHSPConfig`).
        """
        with torch.no_grad():
            if self.metric == "fisher":  # the loss gradient, before the ADMM term touches it
                self._update_fisher()
            if self._warmup_left:  # estimating the Fisher norm from training steps: no pull yet
                self._warmup_left -= 1
                if not self._warmup_left:
                    self._end_warmup()
            else:
                for p, z in self.Z.items():
                    if self.proximal is None:
                        add_to_grad(p, self.rho * (p.detach() - z + self.U[p]))
                    else:
                        c = self.proximal
                        p.mul_(1.0 / (1.0 + c)).add_(z - self.U[p], alpha=c / (1.0 + c))
        self.steps_done += 1
        self._since_update += 1
        if self.admm_interval:
            if self.steps_done % self.admm_interval == 0:
                self._dual_update()
        elif not self._warmup_left and self._since_update >= self._auto_gap:
            self._dual_update()
            self._auto_gap = self._next_gap(2 * self._auto_gap)

    def _next_gap(self, gap: int) -> int:
        """The automatic cadence's next gap: ``gap``, at most half the epoch once its length is known.

        An epoch of one step (``update_regularizer()`` after every step) leaves the cadence to those calls.
        """
        if self.epoch_steps is None:
            return gap
        return min(gap, self.epoch_steps // 2) if self.epoch_steps > 1 else sys.maxsize

    @torch.no_grad()
    def _end_warmup(self) -> None:
        """The Fisher estimate from the warm-up steps chooses ``Z`` (as :meth:`calibrate_fisher` does)."""
        self._warmup_left = 0
        if not self.rounds:
            self._set_z(self.project(use_dual=False), use_dual=False)

    @torch.no_grad()
    def _update_fisher(self) -> None:
        """Fold the current ``(dL/dW)^2`` into the Fisher estimate (the cumulative mean over every batch and step)."""
        n = self._fisher_count
        for p in self.Z:
            if p.grad is None:
                continue
            g2 = p.grad.detach().pow(2)
            if p not in self._fisher:
                self._fisher[p] = g2.clone()
            else:
                self._fisher[p].mul_(n / (n + 1)).add_(g2, alpha=1.0 / (n + 1))
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
        it the first ``fisher_warmup`` training steps estimate it (``regularize`` does not pull
        during them).

        Args:
            loader: Yields ``(images [B, C, H, W], targets [B])``.
            max_batches: Batches to use (``None``: all).
            loss_fn: ``loss_fn(logits, targets)``.
            progress: tqdm bar.
            labels: ``"data"``: the loader's targets (the empirical Fisher); ``"model"``: targets
                drawn from the model's own softmax (the true Fisher, which does not vanish on
                images the model already fits), with a generator seeded by ``seed``.
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
        try:
            accumulate_gradients(self.model, loader, max_batches, loss, "fisher", progress, after_backward=fold_batch,
                                 allow_empty=is_distributed())  # fmt: skip
        except Exception:
            self._fisher, self._fisher_count = {}, 0  # no half-calibrated estimate
            self.model.zero_grad(set_to_none=True)
            raise
        # every rank holds the same Z: the mean over all ranks' batches (no-op in one process; a rank
        # without batches adds zeros, and only an empty total is an error)
        count = all_reduce_sum(torch.tensor([float(self._fisher_count)], dtype=torch.float64)).item()
        if not count:
            raise ValueError("calibrate_fisher got an empty loader")
        for p in self.Z:
            f = self._fisher.get(p, torch.zeros_like(p.detach())) * self._fisher_count
            self._fisher[p] = all_reduce_sum(f.contiguous()) / count
        self._fisher_count = int(count)
        self._warmup_left = 0
        self._set_z(self.project(use_dual=False), use_dual=False)
        return self

    @property
    def converged(self) -> bool:
        """Whether the last dual update left the relative primal residual below ``tol``."""
        return bool(self.history) and self.history[-1]["primal"] < self.tol

    def update_regularizer(self) -> None:
        """ADMM dual step: ``Z = project(W + U)``, ``U += W - Z``, then ``rho`` balancing (see module docs).

        Call it once per epoch, as tp's loop does. With ``admm_interval=None`` the first call
        also records the epoch length (the steps ``regularize`` saw so far), which sets the
        cadence of the dual updates ``regularize`` runs itself; a call with no training step
        since the last dual update changes nothing.
        """
        if self.admm_interval is None:
            if self.epoch_steps is None and self.steps_done:
                self.epoch_steps = self.steps_done
                self._auto_gap = self._next_gap(self._auto_gap)
            if self._warmup_left:  # an epoch shorter than the warm-up: the estimate so far decides
                self._end_warmup()
            if self.rounds and not self._since_update:
                return
        self._dual_update()

    @torch.no_grad()
    def _dual_update(self) -> None:
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
        self._since_update = 0
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
        self.host.sync(self.model, self.num_heads)
        for li, b in enumerate(self._blocks):  # 2) head dims, same dims in every kept head
            dims = sorted(plan.head_dims[li])
            if dims:
                H, d = self.host.head_layout(b.attn)
                idxs = [h * d + j for h in range(H) for j in dims]
                yield self.DG.get_pruning_group(b.proj, tp.prune_linear_in_channels, idxs)
        self.host.sync(self.model, self.num_heads)
        for li, b in enumerate(self._blocks):  # 3) MLP neurons
            if plan.neurons[li]:
                yield self.DG.get_pruning_group(b.fc1, tp.prune_linear_out_channels, sorted(plan.neurons[li]))
        self.host.sync(self.model, self.num_heads)
        self.Z, self.U = {}, {}
