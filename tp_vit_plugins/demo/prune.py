"""``tp-vit prune``: the work behind the command (arguments parsed and validated in :mod:`.cli`).

Every method comes from the recipe table in :mod:`.methods`; :func:`run_prune` returns a
:class:`PruneResult` and :func:`format_report` renders it, so scripts and tests read the
object, not the printed text; ``--json`` writes :meth:`PruneResult.to_dict`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..budget import BudgetResult, fit_budget
from ..core.io import save_pruned
from ..core.metrics import alternated_speedup, count_macs, count_params
from ..core.training import evaluate, finetune
from ..hosts.timm.structure import block_layers, head_layout
from ..vtp import VTPPruner
from .cli import budget_of
from .methods import MethodSettings, get_method
from .workload import Workload, load_workload

__all__ = ["run_prune", "format_report", "cmd_prune", "PruneResult", "Measurement", "Structure", "usage_error", "phase"]


def usage_error(message: str) -> None:
    """Report a usage problem found after parsing (one line, exit code 2) and stop."""
    print(f"tp-vit: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def phase(args: argparse.Namespace, message: str) -> None:
    """One line per phase on stderr (what progress bars become when output is piped), unless ``--quiet``."""
    if not args.quiet:
        print(f"[tp-vit] {message}", file=sys.stderr, flush=True)


def show_bars(args: argparse.Namespace) -> bool:
    """Tqdm bars only on a terminal: piped output gets the phase lines instead of one huge line."""
    return not args.quiet and sys.stderr.isatty()


def load_args_workload(args: argparse.Namespace) -> Workload:
    """The workload of parsed CLI ``args``; a checkpoint or data problem is a usage error (exit 2)."""
    phase(args, "loading the model" + (" and data" if args.data_path or not args.model else ""))
    try:
        return load_workload(
            args.model,
            args.pretrained,
            args.data_path,
            batch_size=getattr(args, "batch_size", 64),
            eval_batches=getattr(args, "eval_batches", None),
            embedded_epochs=args.embedded_epochs,
            retrain=getattr(args, "retrain", False),
            seed=args.seed,
            progress=show_bars(args),
            checkpoint=args.checkpoint,
        )
    except (ValueError, FileNotFoundError) as e:
        usage_error(str(e))


@dataclass
class Structure:
    """What is left per block: heads, head width and MLP hidden width."""

    heads: list[int]
    head_dims: list[int]
    mlp: list[int]

    @classmethod
    def of(cls, model: nn.Module) -> Structure:
        blocks = block_layers(model)
        layouts = [head_layout(b.attn) for b in blocks]
        mlp = [b.fc2.in_features if b.fc2 is not None else 0 for b in blocks]  # hidden width (MLP or SwiGLU)
        return cls([h for h, _ in layouts], [d for _, d in layouts], mlp)


@dataclass
class Measurement:
    """Params, MACs, test accuracy (``None`` without data) and latency ``{batch size: s}`` of one model."""

    params: int
    macs: int
    accuracy: float | None
    latency: dict[int, float] = field(default_factory=dict)


@dataclass
class PruneResult:
    """What ``tp-vit prune`` did (see :func:`run_prune`).

    Attributes:
        model_name: The workload.
        method: The recipe name.
        dense: The dense model's measurement.
        pruned: The pruned model's measurement (after fine-tuning, if any).
        model: The pruned model.
        before: Heads, head dims and MLP width per block of the dense model.
        after: The same after pruning.
        one_shot_accuracy: Accuracy right after pruning, before fine-tuning (``None`` if no fine-tune).
        finetune_epochs: Fine-tuning epochs run.
        sparse_epochs: VTP with gate closing: the sparse-training epochs, which share one
            learning-rate schedule with the fine-tune (its prune is exact, so the run just
            continues); 0 otherwise (the fine-tune starts its own schedule).
        notes: One line per event worth reporting (sparse training, budget, cascade).
        budget: The :class:`~tp_vit_plugins.BudgetResult` of a ``--target-*`` run.
        token_schedule: Patch tokens per block of a CP-ViT cascade.
        saved_to: Where the pruned model was saved.
        gate_zero_share: VTP: share of gates exactly 0 after sparse training.
        latency_spread: Per batch size, ``(max - min) / median`` of the per-round speed-ups.
    """

    model_name: str
    method: str
    dense: Measurement
    pruned: Measurement
    model: nn.Module
    before: Structure
    after: Structure
    one_shot_accuracy: float | None = None
    finetune_epochs: int = 0
    sparse_epochs: int = 0
    notes: list[str] = field(default_factory=list)
    budget: BudgetResult | None = None
    token_schedule: list[int] | None = None
    gate_zero_share: float | None = None
    saved_to: str | None = None
    latency_spread: dict[int, float] = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        """Dense MACs / pruned MACs."""
        return self.dense.macs / self.pruned.macs

    def speedup(self, batch_size: int) -> float:
        """Measured dense / pruned latency at ``batch_size``."""
        return self.dense.latency[batch_size] / self.pruned.latency[batch_size]

    def to_dict(self) -> dict:
        """Everything but the model, JSON-ready (what ``--json`` writes)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("model", "budget")}
        out["macs_ratio"] = self.macs_ratio
        out["speedup"] = {b: self.speedup(b) for b in self.dense.latency}
        if self.budget is not None:
            b = self.budget
            out["budget"] = {
                "metric": b.metric,
                "target": b.target,
                "achieved": b.achieved,
                "ratio": b.ratio,
                "macs_kept": b.macs_kept,
            }
        return out


def _measure(model: nn.Module, w: Workload, args: argparse.Namespace, label: str) -> Measurement:
    """Params, MACs and test accuracy (latency: :func:`_time_both`)."""
    phase(args, f"measuring the {label} model")
    acc = evaluate(model, w.test_loader, desc=f"eval {label}", progress=show_bars(args)) if w.test_loader else None
    return Measurement(count_params(model), count_macs(model, w.example), acc)


def _time_both(args: argparse.Namespace, w: Workload, model: nn.Module, result: PruneResult) -> None:
    """Dense and pruned latency, timed one after the other in every round (drift cancels; medians kept)."""
    if not args.latency:
        return
    phase(args, f"timing dense and pruned alternately at batch sizes {list(args.latency_batch_sizes)}")
    timing = alternated_speedup(w.model, model, w.example, args.latency_batch_sizes, rounds=5, min_run_time=0.2)
    result.dense.latency = {b: t.dense for b, t in timing.items()}
    result.pruned.latency = {b: t.reduced for b, t in timing.items()}
    result.latency_spread = {b: t.spread for b, t in timing.items()}


def _settings(args: argparse.Namespace) -> MethodSettings:
    return MethodSettings(
        head_ratio=args.head_pruning_ratio,
        width_ratio=args.pruning_ratio,
        global_pruning=args.global_pruning,
        prune_head_dims=args.prune_head_dims,
        prune_mlp=args.prune_mlp,
        prune_embed_dim=args.prune_embed_dim,
        calib_batches=args.calib_batches,
        progress=show_bars(args),
        admm=args.admm_epochs > 0,
        admm_rounds=args.admm_rounds,
        target_params=args.params_pruning_ratio,
        reg=args.reg,
        shrink=args.shrink,
        gate_score=args.gate_score,
        gate_threshold=args.gate_threshold,
        gate_closing=args.gate_closing,
        **({} if args.fold_gate_values is None else {"fold_gate_values": args.fold_gate_values}),
        keep=args.keep_ratio,
        head_keep=args.head_keep_ratio,
        start_block=args.start_block,
        schedule_steps=args.schedule_steps or None,
        token_fold=args.token_fold,
    )


def _fit_structure(args: argparse.Namespace, model: nn.Module, w: Workload, importance, result: PruneResult) -> nn.Module:
    """Prune a copy of ``model`` to the ``--target-*`` budget with ``importance``; return it."""
    metric, target = budget_of(args)
    res = fit_budget(
        model,
        w.example,
        target,
        importance=importance,
        structure=args.budget_structure,
        metric=metric,
        latency_batch_size=max(args.latency_batch_sizes),
        progress=show_bars(args),
        global_pruning=args.global_pruning,
        prune_head_dims=args.prune_head_dims,
        prune_mlp=args.prune_mlp,
        prune_embed_dim=args.prune_embed_dim,
    )
    result.budget = res
    result.notes.append(
        f"budget: keep {target:.3f} of the dense {metric} -> achieved {res.achieved:.3f} "
        f"({100 * res.relative_error:.1f} % off; MACs kept {res.macs_kept:.3f}; scalar ratio {res.ratio:.3f}, "
        f"{res.evaluations} candidates)"
    )
    if res.relative_error > 0.02:
        result.notes.append(
            f"warning: {target:.3f} of the {metric} is out of reach for --budget-structure {args.budget_structure} "
            "(or too noisy); the closest candidate is kept. Prune more structure (both, --prune-head-dims) or relax it."
        )
    return res.model


def _prune_structure(args: argparse.Namespace, model: nn.Module, w: Workload, result: PruneResult) -> nn.Module:
    """Prepare, sparse-train and prune ``model`` with the method's recipe; returns the pruned model."""
    recipe, s = get_method(args.method), _settings(args)
    epochs = recipe.sparse_epochs(s, args.admm_epochs if args.method == "gohsp" else args.sparse_epochs)
    s.plan_sparse(epochs, w.train_loader)
    pruner = recipe.prepare(model, w.example, w.train_loader, s)
    if epochs:  # GOHSP's ADMM rounds or VTP's gated L1 training: the pruner regularises
        step_hook, epoch_hook = recipe.hooks(pruner)
        phase(args, f"{args.method} sparse training for {epochs} epochs")
        if recipe.one_schedule(pruner):  # exact prune: the fine-tune continues the run
            result.sparse_epochs = epochs
        span = (0, epochs + args.finetune_epochs) if result.sparse_epochs else None
        _train(args, model, w, epochs, f"{args.method} sparse training", span, step_hook=step_hook, epoch_hook=epoch_hook)
    if getattr(args, "gate_histogram", None) and isinstance(pruner, VTPPruner):
        result.notes.append(f"gate histogram: {pruner.save_gate_histogram(args.gate_histogram)}")
    line = recipe.finish(pruner)
    if line:
        result.notes.append(line)
    if isinstance(pruner, VTPPruner):
        result.gate_zero_share = pruner.gate_zero_share()
    if budget_of(args) is not None:
        model = _fit_structure(args, model, w, pruner.importance, result)
    else:
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def _attach_tokens(args: argparse.Namespace, model: nn.Module, w: Workload, result: PruneResult) -> None:
    budget = budget_of(args)
    input_size = tuple(w.example.shape[1:])
    target = budget[1] if budget else None
    cascade = get_method(args.method).attach_tokens(model, input_size, _settings(args), target, calib=w.train_loader)
    result.token_schedule = list(cascade.counts)
    if budget is not None:
        result.notes.append(
            f"budget: keep ratio {cascade.keep_ratio:.4f} for {budget[1]:.3f} of the dense MACs (beta 0: the schedule is exact)"
        )
    result.notes.append(
        f"CP-ViT cascade: patch tokens per block {cascade.counts} (the same for every image); "
        "structure unchanged, --head-pruning-ratio/--pruning-ratio are not used"
    )


def _train(
    args: argparse.Namespace, model: nn.Module, w: Workload, epochs: int, desc: str, span: tuple[int, int] | None, **hooks
) -> None:
    """The CLI's training runs (sparse phase, fine-tune): AdamW, 1 warm-up epoch, cosine (over both: ``span``)."""
    finetune(model, w.train_loader, epochs=epochs, lr=args.lr, warmup_epochs=1.0, seed=args.seed, desc=desc,
             schedule_span=span, progress=show_bars(args), **hooks)  # fmt: skip


def _finetune(args: argparse.Namespace, model: nn.Module, w: Workload, result: PruneResult) -> None:
    result.one_shot_accuracy = _measure(model, w, args, "one-shot").accuracy
    phase(args, f"fine-tuning for {args.finetune_epochs} epochs")
    done = result.sparse_epochs
    _train(args, model, w, args.finetune_epochs, "fine-tune", (done, done + args.finetune_epochs) if done else None)
    result.finetune_epochs = args.finetune_epochs


def run_prune(args: argparse.Namespace) -> PruneResult:
    """Run ``tp-vit prune`` for parsed and validated ``args`` (see :func:`tp_vit_plugins.demo.cli.validate_prune`).

    Nothing is printed but progress bars and phase lines (stderr).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    w = load_args_workload(args)
    recipe = get_method(args.method)
    if w.train_loader is None and (recipe.needs_data or args.finetune_epochs):
        usage_error(f"--method {args.method} / fine-tuning need calibration data: add --data-path")
    w.model.to(args.device).eval()
    w.example = w.example.to(args.device)
    dense = _measure(w.model, w, args, "dense")
    model = copy.deepcopy(w.model)
    result = PruneResult(w.name, args.method, dense, dense, model, Structure.of(model), Structure.of(model), notes=list(w.notes))
    phase(args, f"pruning with {recipe.summary}")
    if recipe.prunes_structure:
        model = _prune_structure(args, model, w, result)
    if recipe.drops_tokens:
        _attach_tokens(args, model, w, result)
    if args.finetune_epochs and w.train_loader is not None:
        _finetune(args, model, w, result)
    model.eval()
    result.model, result.pruned, result.after = model, _measure(model, w, args, "pruned"), Structure.of(model)
    _time_both(args, w, model, result)
    if args.out:
        result.saved_to = save_pruned(model, args.out)
        if recipe.drops_tokens:
            result.notes.append(
                "the cascade is a runtime setting: save_pruned stores the weights only; "
                "call tpv.apply_cascade again after loading"
            )
    return result


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _table(r: PruneResult) -> list[str]:
    bss = sorted(r.dense.latency)
    head = f"{'':<16}{'params':>10}{'MACs':>10}{'test acc':>10}" + "".join(f"{f'ms @bs{b}':>12}" for b in bss)
    lines = [head, "-" * len(head)]
    for name, m in (("dense", r.dense), ("pruned", r.pruned)):
        acc = f"{100 * m.accuracy:.2f}%" if m.accuracy is not None else "-"
        lat = "".join(f"{1e3 * m.latency[b]:>12.2f}" for b in bss)
        lines.append(f"{name:<16}{_fmt_count(m.params):>10}{_fmt_count(m.macs):>10}{acc:>10}{lat}")
    both = r.dense.accuracy is not None and r.pruned.accuracy is not None
    dacc = f"{100 * (r.pruned.accuracy - r.dense.accuracy):+.2f}pt" if both else "-"
    lat = "".join(f"{r.speedup(b):>11.2f}x" for b in bss)
    lines.append(f"{'dense/pruned':<16}{r.dense.params / r.pruned.params:>9.2f}x{r.macs_ratio:>9.2f}x{dacc:>10}{lat}")
    return lines


#: A spread of the per-round speed-ups above this makes the report call the timing unreliable.
NOISY_SPREAD = 0.25


def format_report(r: PruneResult) -> str:
    """The before/after table and notes of a :class:`PruneResult`, as printed by ``tp-vit prune``."""
    lines = [f"model: {r.model_name} | method: {r.method}", *r.notes, "", *_table(r), ""]
    if r.one_shot_accuracy is not None:
        lines.append(
            f"accuracy: dense {100 * r.dense.accuracy:.2f}% -> one-shot {100 * r.one_shot_accuracy:.2f}% "
            f"-> after {r.finetune_epochs} fine-tune epochs {100 * r.pruned.accuracy:.2f}%"
        )
    lines.append(f"heads per block:     {r.before.heads} -> {r.after.heads}")
    lines.append(f"head dims per block: {r.before.head_dims} -> {r.after.head_dims}")
    lines.append(f"MLP width per block: {r.before.mlp} -> {r.after.mlp}")
    if r.token_schedule is not None:
        lines.append(f"patch tokens per block (CP-ViT cascade): {r.token_schedule}")
    for b in sorted(r.dense.latency):
        speed, spread = r.speedup(b), r.latency_spread.get(b, 0.0)
        flag = ""
        if spread > NOISY_SPREAD:
            flag = (
                f" -- timing spread {100 * spread:.0f}% between rounds: the machine was busy or threads are "
                "oversubscribed, so this speed-up is not reliable (rerun on a quiet machine, or set --threads)"
            )
        elif speed < 1.0:
            flag = " -- SLOWER than dense at this batch size" + (
                " (the cascade's scoring and merging cost more per op than the dropped tokens save on a model this "
                "small; see 'Cascade speed' in benchmarks/RESULTS.md)"
                if r.token_schedule is not None
                else ""
            )
        lines.append(
            f"bs {b}: dense {1e3 * r.dense.latency[b]:.2f} ms, pruned {1e3 * r.pruned.latency[b]:.2f} ms: measured "
            f"speed-up {speed:.2f}x (spread {100 * spread:.0f}%) vs MACs ratio {r.macs_ratio:.2f}x "
            f"(speed-up / MACs ratio = {speed / r.macs_ratio:.2f}){flag}"
        )
    if r.saved_to:
        lines.append(f"saved to {r.saved_to}; load it with: tp_vit_plugins.load_pruned({r.saved_to!r})")
    return "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``tp-vit prune``, print its report and write ``--json``."""
    result = run_prune(args)
    print(format_report(result))
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
        print(f"report written to {args.json_path}")
    return 0
