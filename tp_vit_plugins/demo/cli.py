"""``tp-vit`` command line: prune a timm ViT and print a before/after table.

Examples::

    tp-vit prune                                   # embedded MNIST ViT, tp Taylor
    tp-vit prune --method l2 --head-ratio 0.5 --width-ratio 0
    tp-vit prune --method l2 --target-macs 0.6     # ratios fitted to keep 60 % of the MACs
    tp-vit prune --method l2 --target-latency 0.7  # ... or 70 % of the measured bs-64 latency
    tp-vit prune --model deit_small_patch16_224 --pretrained --data-path /data/imagenet

Every method comes from the recipe table in :mod:`.methods`; :func:`run_prune` returns a
:class:`PruneResult` and :func:`format_report` renders it, so scripts and tests read the
object, not the printed text.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..budget import BudgetResult, fit_budget
from ..core.adapter import heads_per_block
from ..core.io import save_pruned
from ..core.metrics import count_macs, count_params, measure_latency
from ..core.pruner import check_ratio
from ..core.training import evaluate, finetune
from .bench import BENCH_METHODS, run_bench
from .methods import METHODS, MethodSettings, get_method
from .workload import Workload, load_workload

__all__ = ["main", "build_parser", "run_prune", "format_report", "PruneResult", "Measurement"]

#: Methods ``tp-vit prune`` knows (``gohsp+cpvit`` is a bench combination).
PRUNE_METHODS = [name for name in METHODS if name != "gohsp+cpvit"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tp-vit`` argument parser."""
    parser = argparse.ArgumentParser(prog="tp-vit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="prune a model and print a before/after table")
    p.add_argument("--method", default="taylor", choices=PRUNE_METHODS, help="importance criterion / method")
    p.add_argument("--head-ratio", type=float, default=0.5, help="share of attention heads to remove")
    p.add_argument("--width-ratio", type=float, default=0.3, help="share of width channels to remove (MLP neurons by default)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--target-macs", type=float, default=None, help="keep this fraction of the dense MACs (ratios are fitted; tpv.fit_budget)"
    )
    budget.add_argument(
        "--target-latency",
        type=float,
        default=None,
        help="keep this fraction of the dense latency measured at the largest --latency-batch-sizes",
    )
    p.add_argument(
        "--budget-structure",
        default="both",
        choices=["heads", "width", "both"],
        help="what a --target-* budget prunes: heads, width (see --prune-head-dims/--prune-embed-dim/--no-mlp) or both",
    )
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank heads and channels across layers")
    p.add_argument("--prune-head-dims", action="store_true", help="the width ratio also removes dims inside heads")
    p.add_argument("--prune-embed-dim", action="store_true", help="the width ratio also removes embedding dims")
    p.add_argument("--no-mlp", dest="prune_mlp", action="store_false", help="leave MLP neurons alone")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches for data-driven criteria")
    p.add_argument("--keep", type=float, default=0.5, help="cpvit: share of patch tokens left in the last block")
    p.add_argument("--head-keep", type=float, default=1.0, help="cpvit: share of heads each input keeps (1 = no skipping)")
    p.add_argument("--start-block", type=int, default=None, help="cpvit: first block whose scores drop tokens")
    p.add_argument("--schedule-power", type=float, default=1.0, help="cpvit: keep-schedule ramp exponent (<1 drops early)")
    p.add_argument("--sparse-epochs", type=int, default=3, help="vtp: epochs of gated L1 sparse training before pruning")
    p.add_argument("--reg", type=float, default=1e-4, help="vtp: L1 strength on the gates")
    p.add_argument("--admm-epochs", type=int, default=0, help="gohsp: ADMM epochs (>0 runs GOHSPPruner to --target-params)")
    p.add_argument("--target-params", type=float, default=0.4, help="gohsp with ADMM: share of parameters to remove")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tune epochs after pruning (0: one-shot)")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tune learning rate")
    p.add_argument("--model", default=None, help="timm model name (default: the embedded MNIST ViT)")
    p.add_argument("--pretrained", action="store_true", help="load timm pretrained weights (needs network or a HF cache)")
    p.add_argument("--data-path", default=None, help="ImageFolder root with train/ and val/ (real data for --model)")
    p.add_argument("--eval-batches", type=int, default=None, help="limit evaluation batches (real data)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size for --data-path loaders")
    p.add_argument("--latency-batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes to time")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip latency measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--retrain", action="store_true", help="retrain the embedded model instead of using the cache")
    p.add_argument("--embedded-epochs", type=int, default=None, help="training epochs of the embedded model (default recipe)")
    p.add_argument("--out", default=None, help="save the pruned model here (tpv.save_pruned)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="compare every method at the same MACs budgets")
    b.add_argument("--methods", default=",".join(BENCH_METHODS), help=f"comma list from {','.join(BENCH_METHODS)}")
    b.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6], help="fractions of the dense MACs to keep")
    b.add_argument("--seeds", type=int, default=2)
    b.add_argument("--finetune-epochs", type=int, default=1, help="training epochs per method")
    b.add_argument("--calib-batches", type=int, default=8)
    b.add_argument("--lr", type=float, default=5e-4)
    b.add_argument("--latency-batch-sizes", type=int, nargs="*", default=[1, 64])
    b.add_argument("--out", default="bench_out", help="directory for RESULTS.md, results.json and the plots")
    b.add_argument("--model", default=None, help="timm model name (default: the embedded MNIST ViT)")
    b.add_argument("--pretrained", action="store_true")
    b.add_argument("--data-path", default=None, help="ImageFolder root with train/ and val/")
    b.add_argument("--embedded-epochs", type=int, default=None, help="training epochs of the embedded model")
    b.add_argument("--quiet", action="store_true")
    return parser


def _workload(args: argparse.Namespace) -> Workload:
    try:
        return load_workload(
            args.model,
            args.pretrained,
            args.data_path,
            batch_size=getattr(args, "batch_size", 64),
            eval_batches=getattr(args, "eval_batches", None),
            embedded_epochs=args.embedded_epochs,
            retrain=getattr(args, "retrain", False),
            seed=getattr(args, "seed", 0),
            progress=not args.quiet,
        )
    except ValueError as e:
        raise SystemExit(f"{e} (add --model)") from e


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
        heads_before: Heads per block of the dense model.
        heads_after: Heads per block after pruning.
        one_shot_accuracy: Accuracy right after pruning, before fine-tuning (``None`` if no fine-tune).
        finetune_epochs: Fine-tuning epochs run.
        notes: One line per event worth reporting (sparse training, budget, cascade).
        budget: The :class:`~tp_vit_plugins.BudgetResult` of a ``--target-*`` run.
        token_schedule: Patch tokens per block of a CP-ViT cascade.
        saved_to: Where the pruned model was saved.
    """

    model_name: str
    method: str
    dense: Measurement
    pruned: Measurement
    model: nn.Module
    heads_before: list[int]
    heads_after: list[int]
    one_shot_accuracy: float | None = None
    finetune_epochs: int = 0
    notes: list[str] = field(default_factory=list)
    budget: BudgetResult | None = None
    token_schedule: list[int] | None = None
    saved_to: str | None = None

    @property
    def macs_ratio(self) -> float:
        """Dense MACs / pruned MACs."""
        return self.dense.macs / self.pruned.macs

    def speedup(self, batch_size: int) -> float:
        """Measured dense / pruned latency at ``batch_size``."""
        return self.dense.latency[batch_size] / self.pruned.latency[batch_size]


def _measure(model: nn.Module, w: Workload, args: argparse.Namespace, label: str, latency: bool = True) -> Measurement:
    acc = evaluate(model, w.test_loader, desc=f"eval {label}", progress=not args.quiet) if w.test_loader else None
    lat = measure_latency(model, w.example, args.latency_batch_sizes) if (latency and args.latency) else {}
    return Measurement(count_params(model), count_macs(model, w.example), acc, lat)


def _settings(args: argparse.Namespace) -> MethodSettings:
    return MethodSettings(
        head_ratio=args.head_ratio,
        width_ratio=args.width_ratio,
        global_pruning=args.global_pruning,
        prune_head_dims=args.prune_head_dims,
        prune_mlp=args.prune_mlp,
        prune_embed_dim=args.prune_embed_dim,
        calib_batches=args.calib_batches,
        progress=not args.quiet,
        admm=args.admm_epochs > 0,
        target_params=args.target_params,
        reg=args.reg,
        keep=args.keep,
        head_keep=args.head_keep,
        start_block=args.start_block,
        schedule_power=args.schedule_power,
    )


def _budget(args: argparse.Namespace) -> tuple[str, float] | None:
    """``("macs" | "latency", target)`` when a budget flag is given."""
    if args.target_macs is not None:
        return "macs", args.target_macs
    if args.target_latency is not None:
        return "latency", args.target_latency
    return None


def _validate(args: argparse.Namespace) -> None:
    """Every argument check that needs no model; ``SystemExit`` with one line that says what to change."""
    try:
        check_ratio("--head-ratio", args.head_ratio)
        check_ratio("--width-ratio", args.width_ratio)
        check_ratio("--target-params", args.target_params)
        if not 0.0 < args.keep <= 1.0 or not 0.0 < args.head_keep <= 1.0:
            raise ValueError(f"--keep and --head-keep must lie in (0, 1], got {args.keep} and {args.head_keep}")
        budget = _budget(args)
        if budget is not None:
            metric, target = budget
            if not 0.0 < target <= 1.0:
                raise ValueError(f"--target-{metric} must lie in (0, 1] (fraction of the dense {metric} to keep), got {target}")
            if args.method == "gohsp" and args.admm_epochs:
                raise ValueError("--admm-epochs prunes to --target-params; drop either it or --target-macs/--target-latency")
            if args.method == "cpvit" and metric == "latency":
                raise ValueError("--method cpvit takes --target-macs (the cascade's MACs are exact); use --keep otherwise")
            if metric == "latency" and not args.latency:
                raise ValueError("--target-latency measures latency: drop --no-latency")
    except ValueError as e:
        raise SystemExit(str(e)) from e


def _fit_structure(args: argparse.Namespace, model: nn.Module, w: Workload, importance, result: PruneResult) -> nn.Module:
    """Prune a copy of ``model`` to the ``--target-*`` budget with ``importance``; return it."""
    metric, target = _budget(args)
    res = fit_budget(
        model,
        w.example,
        target,
        importance=importance,
        structure=args.budget_structure,
        metric=metric,
        latency_batch_size=max(args.latency_batch_sizes),
        progress=not args.quiet,
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
    pruner = recipe.prepare(model, w.example, w.train_loader, s)
    epochs = recipe.sparse_epochs(s, args.admm_epochs if args.method == "gohsp" else args.sparse_epochs)
    if epochs:  # GOHSP's ADMM rounds or VTP's gated L1 training: the pruner regularises
        step_hook, epoch_hook = recipe.hooks(pruner)
        desc = f"{args.method} sparse training"
        finetune(
            model,
            w.train_loader,
            epochs=epochs,
            lr=args.lr,
            warmup_epochs=1.0,
            seed=args.seed,
            step_hook=step_hook,
            epoch_hook=epoch_hook,
            desc=desc,
            progress=not args.quiet,
        )
    line = recipe.finish(pruner)
    if line:
        result.notes.append(line)
    if _budget(args) is not None:
        model = _fit_structure(args, model, w, pruner.importance, result)
    else:
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def _attach_tokens(args: argparse.Namespace, model: nn.Module, w: Workload, result: PruneResult) -> None:
    budget = _budget(args)
    input_size = tuple(w.example.shape[1:])
    cascade = get_method(args.method).attach_tokens(model, input_size, _settings(args), budget[1] if budget else None)
    result.token_schedule = list(cascade.schedule)
    if budget is not None:
        result.notes.append(
            f"budget: keep ratio {cascade.keep_ratio:.4f} for {budget[1]:.3f} of the dense MACs (beta 0: the schedule is exact)"
        )
    adjust = "fixed" if budget is not None else "adjusted per batch by attention range"
    result.notes.append(
        f"CP-ViT cascade: patch tokens per block {cascade.schedule} (schedule power {args.schedule_power}, {adjust}); "
        "structure unchanged, --head-ratio/--width-ratio are not used"
    )


def run_prune(args: argparse.Namespace) -> PruneResult:
    """Run ``tp-vit prune`` for parsed ``args``; nothing is printed but progress bars."""
    _validate(args)
    torch.manual_seed(args.seed)
    w = _workload(args)
    recipe = get_method(args.method)
    if w.train_loader is None and (recipe.needs_data or args.finetune_epochs):
        raise SystemExit(f"--method {args.method} / fine-tuning need calibration data: add --data-path")
    w.model.to(args.device).eval()
    w.example = w.example.to(args.device)
    dense = _measure(w.model, w, args, "dense")
    model = copy.deepcopy(w.model)
    result = PruneResult(w.name, args.method, dense, dense, model, heads_per_block(model), [])
    if recipe.prunes_structure:
        model = _prune_structure(args, model, w, result)
    if recipe.drops_tokens:
        _attach_tokens(args, model, w, result)
    if args.finetune_epochs and w.train_loader is not None:
        result.one_shot_accuracy = _measure(model, w, args, "one-shot", latency=False).accuracy
        finetune(
            model,
            w.train_loader,
            epochs=args.finetune_epochs,
            lr=args.lr,
            warmup_epochs=1.0,
            seed=args.seed,
            desc="fine-tune",
            progress=not args.quiet,
        )
        result.finetune_epochs = args.finetune_epochs
    model.eval()
    result.model, result.pruned, result.heads_after = model, _measure(model, w, args, "pruned"), heads_per_block(model)
    if args.out:
        result.saved_to = save_pruned(model, args.out)
        if recipe.drops_tokens:
            result.notes.append(
                "the cascade is a runtime setting: save_pruned stores the weights only; "
                "call tpv.tokens.apply_cascade again after loading"
            )
    return result


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_report(r: PruneResult) -> str:
    """The before/after table and notes of a :class:`PruneResult`, as printed by ``tp-vit prune``."""
    bss = sorted(r.dense.latency)
    head = f"{'':<16}{'params':>10}{'MACs':>10}{'test acc':>10}" + "".join(f"{f'ms @bs{b}':>12}" for b in bss)
    lines = [f"model: {r.model_name} | method: {r.method}", *r.notes, head, "-" * len(head)]
    for name, m in (("dense", r.dense), ("pruned", r.pruned)):
        acc = f"{100 * m.accuracy:.2f}%" if m.accuracy is not None else "-"
        lat = "".join(f"{1e3 * m.latency[b]:>12.2f}" for b in bss)
        lines.append(f"{name:<16}{_fmt_count(m.params):>10}{_fmt_count(m.macs):>10}{acc:>10}{lat}")
    both = r.dense.accuracy is not None and r.pruned.accuracy is not None
    dacc = f"{100 * (r.pruned.accuracy - r.dense.accuracy):+.2f}pt" if both else "-"
    lat = "".join(f"{r.speedup(b):>11.2f}x" for b in bss)
    lines.append(f"{'dense/pruned':<16}{r.dense.params / r.pruned.params:>9.2f}x{r.macs_ratio:>9.2f}x{dacc:>10}{lat}")
    lines.append("")
    if r.one_shot_accuracy is not None:
        lines.append(f"one-shot accuracy (before {r.finetune_epochs} fine-tune epochs): {100 * r.one_shot_accuracy:.2f}%")
    lines.append(f"heads per block: {r.heads_before} -> {r.heads_after}")
    for b in bss:
        speed = r.speedup(b)
        lines.append(
            f"bs {b}: measured speed-up {speed:.2f}x vs MACs ratio {r.macs_ratio:.2f}x "
            f"(speed-up / MACs ratio = {speed / r.macs_ratio:.2f})"
        )
    if r.saved_to:
        lines.append(f"saved pruned model to {r.saved_to}")
    return "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``tp-vit prune`` and print its report."""
    print(format_report(run_prune(args)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``tp-vit bench``."""
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(BENCH_METHODS) or not methods:
        raise SystemExit(f"--methods must be a comma list from {','.join(BENCH_METHODS)}")
    if any(not 0.0 < t <= 1.0 for t in args.targets):
        raise SystemExit("--targets must lie in (0, 1]")
    w = _workload(args)
    if w.train_set is None:
        raise SystemExit("tp-vit bench --model needs --data-path (accuracy is part of the comparison)")
    run_bench(
        w.model,
        w.train_set,
        w.test_loader,
        w.example,
        targets=args.targets,
        methods=methods,
        seeds=list(range(args.seeds)),
        finetune_epochs=args.finetune_epochs,
        calib_batches=args.calib_batches,
        lr=args.lr,
        latency_batch_sizes=args.latency_batch_sizes,
        out_dir=args.out,
        progress=not args.quiet,
    )
    with open(f"{args.out}/RESULTS.md") as f:
        print(f.read())
    print(f"wrote {args.out}/RESULTS.md, {args.out}/results.json and the plots (with matplotlib installed)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tp-vit``."""
    args = build_parser().parse_args(argv)
    if args.command == "prune":
        return cmd_prune(args)
    if args.command == "bench":
        return cmd_bench(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
