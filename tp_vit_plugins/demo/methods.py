"""The method table: one recipe per method, shared by ``tp-vit prune`` and ``tp-vit bench``.

A recipe says how a method turns a dense model into a pruner, in three steps:

1. :meth:`Method.prepare` — calibrate (attention statistics, a gradient pass) and build the
   pruner (a :class:`~tp_vit_plugins.ViTPruner` or one of its subclasses) for given ratios;
2. :meth:`Method.hooks` — the sparse-training hooks (GOHSP's ADMM, VTP's gate L1) that run
   inside :func:`~tp_vit_plugins.finetune` for :meth:`Method.sparse_epochs` epochs;
3. :meth:`Method.finish` — what must happen after sparse training and before the pruner's
   importance ranks anything (VTP hands its gate values to its importance and removes the gates); returns a one-line report.

The pruner then either steps at its ratios or lends its importance to
:func:`~tp_vit_plugins.fit_budget` for a MACs / latency target. Token methods (CP-ViT)
instead attach a cascade (:meth:`Method.attach_tokens`); ``gohsp+cpvit`` and ``vtp+cpvit`` do both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ..core.calibration import accumulate_gradients
from ..core.criteria import TP_CRITERIA, tp_importance
from ..core.pruner import ViTPruner
from ..cpvit import Cascade, CascadeConfig, apply_cascade, fit_keep_ratio
from ..gohsp import GOHSPPruner, GraphHeadImportance
from ..vtp import GateImportance, VTPConfig, VTPPruner

__all__ = ["MethodSettings", "Method", "METHODS", "get_method", "RecipeRun", "run_recipe"]

Hook = Callable[..., Any]


@dataclass
class MethodSettings:
    """Everything a recipe may read (the CLI fills it from its flags, the bench from its protocol).

    ``preset`` names the method's option set (``"paper"`` / ``"recommended"``; ``None``: the
    library's defaults); ``config_options`` are fields of the method's options dataclass
    (``CascadeConfig``, ``VTPConfig``, ``GOHSPConfig``) that override the preset.
    """

    preset: str | None = None
    config_options: dict = field(default_factory=dict)
    head_pruning_ratio: float = 0.5
    pruning_ratio: float = 0.3
    global_pruning: bool = False
    prune_head_dims: bool = False
    prune_mlp: bool = True
    prune_embed_dim: bool = False
    calib_batches: int = 8
    progress: bool = True
    # GOHSP
    admm: bool = False
    params_pruning_ratio: float = 0.4
    admm_rounds: int | None = None  # dual updates over the sparse steps; None: 10
    fisher_labels: str | None = "data"  # calibrate_fisher's labels ("data" / "model"); None: no calibration
    graph_per_block: bool = True  # GraphHeadImportance(normalize_per_layer=...)
    seed: int = 0  # of the Fisher label draws with fisher_labels="model"
    # a parameter budget (the share of parameters removed) instead of the ratios: the zoo's pipeline
    # protocol (GOHSP's ADMM prunes to it; VTP closes gates up to it; the others are fitted to it)
    params_budget: float | None = None
    #: Extra GOHSPConfig / VTPConfig fields (the zoo's method variants), applied last.
    options: dict = field(default_factory=dict)
    # VTP
    gate_aggregation: str = "mean"  # GateImportance(aggregation=...) for embedding dims
    sparse_steps: int | None = None  # set by plan_sparse once the sparse epochs and loader are known
    planned_sparse_epochs: int = 0  # likewise

    def plan_sparse(self, epochs: int, loader: Iterable | None) -> None:
        """Record the sparse phase (VTP sets its gate step size, GOHSP its ADMM cadence from it).

        ``loader`` (sized) is read only when ``epochs > 0``; without sparse training it may be ``None``.
        """
        self.planned_sparse_epochs = epochs
        self.sparse_steps = max(1, epochs * len(loader)) if epochs else None

    def cascade_config(self) -> CascadeConfig:
        """The CP-ViT cascade's options: the preset's, with ``config_options`` applied."""
        return CascadeConfig.preset(self.preset or "recommended").replace(**self.config_options)

    def vtp_config(self) -> VTPConfig:
        """VTP's options: the preset's, with ``config_options`` applied."""
        return dataclasses.replace(VTPConfig.preset(self.preset or "recommended"), **self.config_options)

    def ratios(self) -> dict:
        """The :class:`ViTPruner` ratios."""
        return dict(pruning_ratio=self.pruning_ratio, head_pruning_ratio=self.head_pruning_ratio)

    def pruner_kwargs(self) -> dict:
        """The :class:`ViTPruner` structure switches."""
        return dict(
            global_pruning=self.global_pruning,
            prune_head_dims=self.prune_head_dims,
            prune_mlp=self.prune_mlp,
            prune_embed_dim=self.prune_embed_dim,
        )


class Method:
    """A recipe (see module docs). Subclasses override what they need."""

    name = ""
    summary = ""
    #: Changes the weights' structure (tp) / drops tokens at run time (CP-ViT cascade).
    prunes_structure = True
    drops_tokens = False

    def prepare(self, model: nn.Module, example: torch.Tensor, calib: Iterable | None, s: MethodSettings) -> ViTPruner | None:
        """Calibrate and build the pruner for ``s``'s ratios (``None`` for token-only methods)."""
        raise NotImplementedError

    def sparse_epochs(self, s: MethodSettings, requested: int, budget: int | None = None) -> int:
        """Epochs of sparse training: ``requested`` (CLI) or a share of the bench's epoch ``budget``."""
        return 0

    def hooks(self, pruner: ViTPruner) -> tuple[Hook | None, Hook | None]:
        """``(step_hook, epoch_hook)`` for :func:`~tp_vit_plugins.finetune` during sparse training."""
        return None, None

    def finish(self, pruner: ViTPruner) -> str | None:
        """Run after sparse training, before ranking; returns a report line (or ``None``)."""
        return None

    def stats(self, pruner: ViTPruner) -> dict[str, float]:
        """Numbers the method reports after its sparse phase (e.g. VTP's share of zero gates)."""
        return {}

    def plot(self, pruner: ViTPruner, path: str) -> str | None:
        """Write the method's diagnostic plot to ``path`` (VTP: the gate histogram); a report line, or ``None``."""
        return None

    def reaches_budget(self, pruner: ViTPruner) -> bool:
        """Whether ``pruner.step()`` itself removes a parameter budget (GOHSP's ADMM), instead of a fitted ratio."""
        return False

    def one_schedule(self, pruner: ViTPruner) -> bool:
        """Whether the sparse phase and the fine-tune share one learning-rate schedule.

        Only where the prune is exact (the run just continues); a prune that changes the function
        recovers better from a fine-tune restarted at the peak rate (measured on the zoo).
        """
        return False

    def attach_tokens(
        self,
        model: nn.Module,
        input_size: tuple[int, ...],
        s: MethodSettings,
        target: float | None,
        calib: Iterable | None = None,
    ) -> Cascade:
        """Attach the token cascade (token methods only; ``calib`` calibrates an attention-range adjustment, ``beta > 0``)."""
        raise TypeError(f"{self.name} drops no tokens")


class TPCriterion(Method):
    """tp's own criteria (random, l1, l2, taylor) through :class:`ViTPruner`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.summary = f"tp {name} importance"

    def prepare(self, model, example, calib, s):
        imp = tp_importance(self.name)
        if self.name == "taylor":
            accumulate_gradients(model, calib, max_batches=s.calib_batches, progress=s.progress)
        return ViTPruner(model, example, imp, **s.ratios(), **s.pruner_kwargs())


class GOHSP(Method):
    """GOHSP: graph-ranked heads; with ``admm`` the ADMM stage prunes to ``params_pruning_ratio``."""

    name, summary = "gohsp", "GOHSP graph head ranking + ADMM towards heterogeneous sparsity (--admm-epochs)"

    def prepare(self, model, example, calib, s):
        imp = GraphHeadImportance(progress=s.progress, base_importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  normalize_per_layer=s.graph_per_block, config=s.preset)  # fmt: skip
        imp.calibrate(model, calib, max_batches=s.calib_batches)
        if s.admm or s.params_budget is not None:
            # 10 dual updates over the sparse phase unless told otherwise, the Z-step's Fisher norm from
            # the calibration batches (GOHSPPruner's defaults otherwise)
            rounds = s.admm_rounds or 10
            interval = max(1, (s.sparse_steps or rounds) // rounds)
            budget = s.params_pruning_ratio if s.params_budget is None else s.params_budget
            pruner = GOHSPPruner(model, example, imp, pruning_ratio=budget, config=s.preset, admm_interval=interval,
                                 **{**s.config_options, **s.options})  # fmt: skip
            if pruner.metric == "fisher" and s.fisher_labels:
                pruner.calibrate_fisher(calib, max_batches=s.calib_batches, progress=s.progress, labels=s.fisher_labels,
                                        seed=s.seed)  # fmt: skip
            return pruner
        return ViTPruner(model, example, imp, **s.ratios(), **s.pruner_kwargs())

    def sparse_epochs(self, s, requested, budget=None):
        if s.params_budget is not None:  # the zoo: half of the epoch budget on ADMM
            return (budget or 0) // 2
        return requested if s.admm else 0

    def reaches_budget(self, pruner):
        return isinstance(pruner, GOHSPPruner)  # its step() removes Z's support: the parameter budget

    def stats(self, pruner):
        if isinstance(pruner, GOHSPPruner):
            return {"admm_rounds": pruner.rounds, "admm_primal": pruner.admm_residual(), "admm_converged": pruner.converged}
        return {}

    def hooks(self, pruner):
        if isinstance(pruner, GOHSPPruner):
            return pruner.regularize, None  # the dual updates run inside regularize, every admm_interval steps
        return None, None

    def finish(self, pruner):
        if isinstance(pruner, GOHSPPruner):
            last = pruner.history[-1] if pruner.history else {"primal": pruner.admm_residual(), "rho": pruner.rho}
            return (
                f"ADMM: {pruner.rounds} dual updates over {pruner.steps_done} steps, primal residual ||W - Z|| / ||W|| "
                f"{last['primal']:.4f} ({'converged' if pruner.converged else 'not converged'} at tol {pruner.tol:g}), "
                f"rho {last['rho']:.3g}; the hard prune removes Z's support"
            )
        return None


class VTP(Method):
    """VTP: gates + L1 sparse training, gate ranking (``|g * dL/dg|`` by default, ``|g|`` with magnitude)."""

    name, summary = "vtp", "VTP gates + L1 sparse training"

    def prepare(self, model, example, calib, s):
        cfg = s.vtp_config()
        if s.params_budget is not None:  # the zoo: gates close up to the parameter budget, then the ranking is fitted to it
            opts = dict(s.options)
            if opts.get("gate_lr") == "sparse":  # the gate step VTPPruner takes without closing
                reg, shrink = opts.get("reg", cfg.reg), opts.get("shrink", cfg.shrink)
                opts["gate_lr"] = shrink / (reg * max(1, s.sparse_steps or 1))
            close = None if opts.get("close", cfg.close) is False else s.params_budget
            return VTPPruner(model, example, pruning_ratio=0.0, config=cfg, prune_embed_dim=s.prune_embed_dim,
                             sparse_steps=s.sparse_steps or 1, importance=GateImportance(aggregation=s.gate_aggregation),
                             close_params=close, **opts)  # fmt: skip
        # one global ranking over MLP and head dims (VTP's own defaults)
        return VTPPruner(model, example, pruning_ratio=s.pruning_ratio, config=cfg, sparse_steps=s.sparse_steps,
                         head_pruning_ratio=s.head_pruning_ratio)  # fmt: skip

    def sparse_epochs(self, s, requested, budget=None):
        # the bench spends half of its epoch budget on sparse training, at least one (untrained gates rank
        # nothing); the bench refuses VTP with a budget of 0 epochs, so the totals stay equal
        if budget is not None and s.params_budget is not None:
            return budget // 2  # the zoo: half of the epoch budget
        return requested if budget is None else (max(1, budget // 2) if budget > 0 else 0)

    def stats(self, pruner):
        out = {"gate_zero_share": pruner.gate_zero_share()}
        if pruner.closing:
            out["closed_params"] = pruner.closed_share
        return out

    def plot(self, pruner, path):
        return f"gate histogram: {pruner.save_gate_histogram(path)}"

    def hooks(self, pruner):
        return pruner.regularize, None

    def one_schedule(self, pruner):
        return isinstance(pruner, VTPPruner) and pruner.closing  # closing: the prune removes closed gates only

    def finish(self, pruner):
        line = (
            f"VTP gates after {pruner.steps_done} sparse steps: {100 * pruner.gate_zero_share():.1f}% exactly 0, "
            f"{100 * pruner.gate_sparsity():.1f}% below 0.01 "
            + (
                "(unclosed gates held at 1: probes)"
                if pruner.gate_lr == 0
                else f"(reg {pruner.reg:g}, gate lr {pruner.gate_lr:.3g})"
            )
            + "; "
            + (
                f"gates closed in rounds: {100 * pruner.closed_share:.1f}% of the params"
                if pruner.closing
                else f"no gate closing: {pruner.closing_off_reason}"
            )
        )
        pruner.fold_gates()  # the trained gates become the importance; weights absorb them exactly
        return line


class CPViT(Method):
    """CP-ViT: the token cascade (no structural change)."""

    name, summary = "cpvit", "CP-ViT cascade token dropping"
    prunes_structure, drops_tokens = False, True

    def prepare(self, model, example, calib, s):
        return None

    def attach_tokens(self, model, input_size, s, target, calib=None):
        cfg = s.cascade_config()
        if target is None:
            return apply_cascade(model, cfg, calib=calib, calib_batches=s.calib_batches)
        if cfg.beta > 0:
            raise ValueError(
                "an attention-range adjustment (beta > 0) is calibrated on data, so no keep ratio can be fitted to a MACs "
                "budget beforehand: give keep_ratio, or set beta=0 to fit the plain schedule"
            )
        keep = fit_keep_ratio(model, input_size, target, cfg)  # beta 0: the schedule's MACs are exact
        return apply_cascade(model, cfg, keep_ratio=keep)


class GOHSPWithCascade(GOHSP):
    """GOHSP structure and the CP-ViT cascade together (the bench splits the MACs cut between them)."""

    name, summary = "gohsp+cpvit", "GOHSP structure + CP-ViT cascade"
    drops_tokens = True
    attach_tokens = CPViT.attach_tokens


class VTPWithCascade(VTP):
    """VTP structure (sparse phase, gate ranking) and the CP-ViT cascade together (the bench splits the MACs cut)."""

    name, summary = "vtp+cpvit", "VTP structure + CP-ViT cascade"
    drops_tokens = True
    attach_tokens = CPViT.attach_tokens


@dataclass
class RecipeRun:
    """What :func:`run_recipe` leaves: the pruner, ready to prune, and what to report.

    Attributes:
        pruner: The recipe's pruner (its importance ranks; ``step()`` prunes at its ratios).
        sparse_epochs: Epochs of the sparse phase that ran.
        one_schedule: The sparse phase and the fine-tune share one learning-rate schedule.
        notes: Report lines (sparse phase, plots).
        stats: The method's numbers (:meth:`Method.stats`).
        reaches_budget: ``pruner.step()`` removes the parameter budget itself (:meth:`Method.reaches_budget`).
    """

    pruner: ViTPruner
    sparse_epochs: int = 0
    one_schedule: bool = False
    notes: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    reaches_budget: bool = False


#: ``train(epochs, one_schedule, step_hook, epoch_hook)``: the caller's training loop for the sparse phase.
TrainFn = Callable[[int, bool, Hook | None, Hook | None], None]


def run_recipe(
    recipe: Method,
    model: nn.Module,
    example: torch.Tensor,
    calib: Iterable | None,
    train_loader: Iterable | None,
    s: MethodSettings,
    sparse_epochs: int,
    train: TrainFn,
    plot_path: str | None = None,
) -> RecipeRun:
    """The one engine behind ``tp-vit prune``, ``tp-vit bench`` and the zoo: prepare, sparse-train, finish.

    The caller then prunes: ``run.pruner.step()`` at the recipe's ratios (or to its parameter
    budget when ``run.reaches_budget``), or hands ``run.pruner.importance`` to a budget fitter.

    Args:
        recipe: The method (:func:`get_method`).
        model: Pruned in place by the caller afterwards; gated / regularised in place here.
        example: One input for tracing.
        calib: Calibration batches (attention statistics, gradients).
        train_loader: The training loader (its length sets the sparse phase's steps).
        s: The settings.
        sparse_epochs: Epochs of the sparse phase (0: none).
        train: Runs the sparse phase with the recipe's hooks.
        plot_path: Where the method's diagnostic plot goes (VTP's gate histogram), if anywhere.
    """
    s.plan_sparse(sparse_epochs, train_loader)
    pruner = recipe.prepare(model, example, calib, s)
    run = RecipeRun(pruner, sparse_epochs, reaches_budget=recipe.reaches_budget(pruner))
    if sparse_epochs:  # GOHSP's ADMM rounds or VTP's gated L1 training: the pruner regularises
        step_hook, epoch_hook = recipe.hooks(pruner)
        run.one_schedule = recipe.one_schedule(pruner)  # an exact prune: the fine-tune continues the run
        train(sparse_epochs, run.one_schedule, step_hook, epoch_hook)
    if plot_path:
        note = recipe.plot(pruner, plot_path)
        run.notes.extend([note] if note else [])
    line = recipe.finish(pruner)
    run.notes.extend([line] if line else [])
    run.stats = recipe.stats(pruner)
    return run


#: Every recipe by name, in the order the CLI and the bench list them.
METHODS: dict[str, Method] = {
    m.name: m for m in (*(TPCriterion(n) for n in TP_CRITERIA), GOHSP(), VTP(), CPViT(), GOHSPWithCascade(), VTPWithCascade())
}


def get_method(name: str) -> Method:
    """The recipe called ``name``.

    Raises:
        ValueError: Unknown name.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
