"""``tp-vit prune``: the work behind the command (arguments parsed and validated in :mod:`.cli`).

Every method comes from the recipe table in :mod:`.methods`; :func:`run_prune` returns a
:class:`PruneResult` and :func:`format_report` renders it, so scripts and tests read the
object, not the printed text; ``--json`` writes :meth:`PruneResult.to_dict`.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..budget import BudgetResult, fit_budget
from ..core.io import save_pruned
from ..core.metrics import alternated_speedup, count_macs, count_params
from ..core.training import evaluate, finetune
from ..export import alternated_onnx_speedup, export_onnx
from .common import Structure, load_options_workload, phase, show_bars, usage_error
from .methods import MethodSettings, get_method, run_recipe
from .names import REGISTRY
from .options import PruneOptions
from .workload import Workload

__all__ = ["run_prune", "format_report", "cmd_prune", "PruneResult", "Measurement"]


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
        onnx: With ``--export``: ``{"path", "max_abs_diff", "latency": {bs: [dense_s, pruned_s, speedup, spread]}}``.
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
    onnx: dict | None = None

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


def _measure(model: nn.Module, w: Workload, opts: PruneOptions, label: str) -> Measurement:
    """Params, MACs and test accuracy (latency: :func:`_time_both`)."""
    phase(opts, f"measuring the {label} model")
    acc = evaluate(model, w.test_loader, desc=f"eval {label}", progress=show_bars(opts)) if w.test_loader else None
    return Measurement(count_params(model), count_macs(model, w.example), acc)


def _time_both(opts: PruneOptions, w: Workload, model: nn.Module, result: PruneResult) -> None:
    """Dense and pruned latency, timed one after the other in every round (drift cancels; medians kept)."""
    if not opts.latency:
        return
    phase(opts, f"timing dense and pruned alternately at batch sizes {list(opts.latency_batch_sizes)}")
    timing = alternated_speedup(w.model, model, w.example, opts.latency_batch_sizes, rounds=5, min_run_time=0.2)
    result.dense.latency = {b: t.dense for b, t in timing.items()}
    result.pruned.latency = {b: t.reduced for b, t in timing.items()}
    result.latency_spread = {b: t.spread for b, t in timing.items()}


def _export(opts: PruneOptions, w: Workload, model: nn.Module, result: PruneResult) -> None:
    """Export the pruned model (its cascade included) to ONNX; time dense and pruned in onnxruntime, alternated."""
    phase(opts, f"exporting to {opts.export_path}" + (" and timing dense and pruned in onnxruntime" if opts.latency else ""))
    report = export_onnx(model, w.example, opts.export_path)
    result.onnx = {"path": report.path, "max_abs_diff": report.max_abs_diff, "latency": {}}
    if opts.latency:
        with tempfile.TemporaryDirectory() as tmp:
            dense = export_onnx(w.model, w.example, os.path.join(tmp, "dense.onnx"))
            timing = alternated_onnx_speedup(dense.path, report.path, w.example, opts.latency_batch_sizes, rounds=5)
        result.onnx["latency"] = {b: list(v) for b, v in timing.items()}


def _settings(opts: PruneOptions) -> MethodSettings:
    return MethodSettings(
        preset=opts.preset,
        config_options=dict(opts.method_options),
        head_pruning_ratio=opts.head_pruning_ratio,
        pruning_ratio=opts.pruning_ratio,
        global_pruning=opts.global_pruning,
        prune_head_dims=opts.prune_head_dims,
        prune_mlp=opts.prune_mlp,
        prune_embed_dim=opts.prune_embed_dim,
        calib_batches=opts.calib_batches,
        progress=show_bars(opts),
        admm=opts.admm_epochs > 0,
        admm_rounds=opts.admm_rounds,
        params_pruning_ratio=opts.params_pruning_ratio,
    )


def _fit_structure(opts: PruneOptions, model: nn.Module, w: Workload, importance, result: PruneResult) -> nn.Module:
    """Prune a copy of ``model`` to the ``--macs-keep-ratio`` / ``--latency-keep-ratio`` budget with ``importance``; return it."""
    metric, target = opts.budget
    res = fit_budget(
        model,
        w.example,
        target,
        importance=importance,
        structure=opts.budget_structure,
        metric=metric,
        latency_batch_size=max(opts.latency_batch_sizes),
        progress=show_bars(opts),
        global_pruning=opts.global_pruning,
        prune_head_dims=opts.prune_head_dims,
        prune_mlp=opts.prune_mlp,
        prune_embed_dim=opts.prune_embed_dim,
    )
    result.budget = res
    result.notes.append(
        f"budget: keep {target:.3f} of the dense {metric} -> achieved {res.achieved:.3f} "
        f"({100 * res.relative_error:.1f} % off; MACs kept {res.macs_kept:.3f}; scalar ratio {res.ratio:.3f}, "
        f"{res.evaluations} candidates)"
    )
    if res.relative_error > 0.02:
        result.notes.append(
            f"warning: {target:.3f} of the {metric} is out of reach for --budget-structure {opts.budget_structure} "
            "(or too noisy); the closest candidate is kept. Prune more structure (both, --prune-head-dims) or relax it."
        )
    return res.model


def _prune_structure(opts: PruneOptions, model: nn.Module, w: Workload, result: PruneResult) -> nn.Module:
    """Prepare, sparse-train and prune ``model`` with the method's recipe; returns the pruned model."""
    recipe, s = get_method(opts.method), _settings(opts)
    epochs = recipe.sparse_epochs(s, opts.admm_epochs if opts.method == "gohsp" else opts.sparse_epochs)

    def train(n: int, one_schedule: bool, step_hook, epoch_hook) -> None:
        phase(opts, f"{opts.method} sparse training for {n} epochs")
        result.sparse_epochs = n if one_schedule else 0
        span = (0, n + opts.finetune_epochs) if one_schedule else None
        _train(opts, model, w, n, f"{opts.method} sparse training", span, step_hook=step_hook, epoch_hook=epoch_hook)

    run = run_recipe(recipe, model, w.example, w.train_loader, w.train_loader, s, epochs, train, opts.gate_histogram)
    result.notes.extend(run.notes)
    result.gate_zero_share = run.stats.get("gate_zero_share")
    if opts.budget is not None:
        model = _fit_structure(opts, model, w, run.pruner.importance, result)
    else:
        run.pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def _attach_tokens(opts: PruneOptions, model: nn.Module, w: Workload, result: PruneResult) -> None:
    budget = opts.budget
    input_size = tuple(w.example.shape[1:])
    target = budget[1] if budget else None
    cascade = get_method(opts.method).attach_tokens(model, input_size, _settings(opts), target, calib=w.train_loader)
    result.token_schedule = list(cascade.counts)
    if budget is not None:
        result.notes.append(
            f"budget: keep ratio {cascade.keep_ratio:.4f} for {budget[1]:.3f} of the dense MACs (the plain schedule: exact MACs)"
        )
    result.notes.append(
        f"CP-ViT cascade: patch tokens per block {cascade.counts} (the same for every image); "
        "structure unchanged, --head-pruning-ratio/--pruning-ratio are not used"
    )


def _train(
    opts: PruneOptions, model: nn.Module, w: Workload, epochs: int, desc: str, span: tuple[int, int] | None, **hooks
) -> None:
    """The CLI's training runs (sparse phase, fine-tune): AdamW, 1 warm-up epoch, cosine (over both: ``span``)."""
    finetune(model, w.train_loader, epochs=epochs, lr=opts.lr, warmup_epochs=1.0, seed=opts.seed, desc=desc,
             schedule_span=span, progress=show_bars(opts), **hooks)  # fmt: skip


def _finetune(opts: PruneOptions, model: nn.Module, w: Workload, result: PruneResult) -> None:
    result.one_shot_accuracy = _measure(model, w, opts, "one-shot").accuracy
    phase(opts, f"fine-tuning for {opts.finetune_epochs} epochs")
    done = result.sparse_epochs
    _train(opts, model, w, opts.finetune_epochs, "fine-tune", (done, done + opts.finetune_epochs) if done else None)
    result.finetune_epochs = opts.finetune_epochs


def run_prune(opts: PruneOptions) -> PruneResult:
    """Run ``tp-vit prune`` for parsed and validated ``opts`` (see :func:`tp_vit_plugins.demo.cli.validate_prune`).

    Nothing is printed but progress bars and phase lines (stderr).
    """
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    w = load_options_workload(opts)
    recipe = get_method(opts.method)
    if w.train_loader is None and (REGISTRY[opts.method].needs_data or opts.finetune_epochs):
        usage_error(f"--method {opts.method} / fine-tuning need calibration data: add --data-path")
    w.model.to(opts.device).eval()
    w.example = w.example.to(opts.device)
    dense = _measure(w.model, w, opts, "dense")
    model = copy.deepcopy(w.model)
    result = PruneResult(w.name, opts.method, dense, dense, model, Structure.of(model), Structure.of(model), notes=list(w.notes))
    phase(opts, f"pruning with {recipe.summary}")
    if recipe.prunes_structure:
        model = _prune_structure(opts, model, w, result)
    if recipe.drops_tokens:
        _attach_tokens(opts, model, w, result)
    if opts.finetune_epochs and w.train_loader is not None:
        _finetune(opts, model, w, result)
    model.eval()
    result.model, result.pruned, result.after = model, _measure(model, w, opts, "pruned"), Structure.of(model)
    _time_both(opts, w, model, result)
    if opts.export_path:
        _export(opts, w, model, result)
    if opts.out:
        result.saved_to = save_pruned(model, opts.out)  # the cascade included: load_pruned applies it again
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
    if r.after.inputs != r.before.inputs:  # VTP's paper preset: each block's own input dims
        lines.append(f"attention / MLP input dims per block: {r.before.inputs} -> {r.after.inputs}")
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
                "small; see 'Deployment speed' in benchmarks/RESULTS.md)"
                if r.token_schedule is not None
                else ""
            )
        lines.append(
            f"bs {b}: dense {1e3 * r.dense.latency[b]:.2f} ms, pruned {1e3 * r.pruned.latency[b]:.2f} ms: measured "
            f"speed-up {speed:.2f}x (spread {100 * spread:.0f}%) vs MACs ratio {r.macs_ratio:.2f}x "
            f"(speed-up / MACs ratio = {speed / r.macs_ratio:.2f}){flag}"
        )
    if r.onnx is not None:
        lines.append(f"ONNX: {r.onnx['path']} (onnxruntime vs PyTorch max |diff| {r.onnx['max_abs_diff']:.1e})")
        for b, (dense_s, pruned_s, speed, spread) in sorted(r.onnx["latency"].items()):
            noisy = " -- timing spread too large to trust" if spread > NOISY_SPREAD else ""
            lines.append(
                f"onnxruntime bs {b}: dense {1e3 * dense_s:.2f} ms, pruned {1e3 * pruned_s:.2f} ms: speed-up {speed:.2f}x "
                f"(spread {100 * spread:.0f}%) vs MACs ratio {r.macs_ratio:.2f}x (speed-up / MACs ratio = "
                f"{speed / r.macs_ratio:.2f}){noisy}"
            )
    if r.saved_to:
        lines.append(f"saved to {r.saved_to}; load it with: tp_vit_plugins.load_pruned({r.saved_to!r})")
    return "\n".join(lines)


def cmd_prune(opts: PruneOptions) -> int:
    """Run ``tp-vit prune``, print its report and write ``--json``."""
    result = run_prune(opts)
    print(format_report(result))
    if opts.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(opts.json_path)), exist_ok=True)
        with open(opts.json_path, "w") as f:
            json.dump(result.to_dict(), f, indent=1)
        print(f"report written to {opts.json_path}")
    return 0
