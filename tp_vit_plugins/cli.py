"""``tp-vit`` command line: prune a timm ViT and print a before/after table.

Examples::

    tp-vit prune                                   # embedded MNIST ViT, tp Taylor
    tp-vit prune --method l2 --head-ratio 0.5 --width-ratio 0
    tp-vit prune --method l2 --target-macs 0.6     # ratios fitted to keep 60 % of the MACs
    tp-vit prune --method l2 --target-latency 0.7  # ... or 70 % of the measured bs-64 latency
    tp-vit prune --model deit_small_patch16_224 --pretrained --data-path /data/imagenet
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence

import torch
from torch import nn

from .bench import BENCH_METHODS
from .calibration import accumulate_gradients
from .importance import TP_CRITERIA, needs_gradients, tp_importance
from .metrics import count_macs, count_params, measure_latency
from .pruners import ViTPruner
from .pruners.vit import check_ratio
from .workload import Workload, load_workload

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tp-vit`` argument parser."""
    parser = argparse.ArgumentParser(prog="tp-vit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="prune a model and print a before/after table")
    p.add_argument(
        "--method", default="taylor", choices=[*TP_CRITERIA, "gohsp", "vtp", "cpvit"], help="importance criterion / method"
    )
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
        w = load_workload(
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
    return w


def _needs_data(args: argparse.Namespace) -> bool:
    return needs_gradients(args.method) or bool(args.finetune_epochs) or args.method in ("gohsp", "vtp")


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _measure(model: nn.Module, w: Workload, args: argparse.Namespace, label: str) -> dict:
    from .train import evaluate

    row = {"params": count_params(model), "macs": count_macs(model, w.example)}
    row["acc"] = evaluate(model, w.test_loader, desc=f"eval {label}", progress=not args.quiet) if w.test_loader else None
    row["lat"] = measure_latency(model, w.example, args.latency_batch_sizes) if args.latency else {}
    return row


def _table(dense: dict, pruned: dict, args: argparse.Namespace, heads: list[int], dense_heads: list[int]) -> str:
    bss = args.latency_batch_sizes if args.latency else []
    head = f"{'':<16}{'params':>10}{'MACs':>10}{'test acc':>10}" + "".join(f"{f'ms @bs{b}':>12}" for b in bss)
    lines = [head, "-" * len(head)]
    for name, r in (("dense", dense), ("pruned", pruned)):
        acc = f"{100 * r['acc']:.2f}%" if r["acc"] is not None else "-"
        lat = "".join(f"{1e3 * r['lat'][b]:>12.2f}" for b in bss)
        lines.append(f"{name:<16}{_fmt_count(r['params']):>10}{_fmt_count(r['macs']):>10}{acc:>10}{lat}")
    dacc = f"{100 * (pruned['acc'] - dense['acc']):+.2f}pt" if dense["acc"] is not None and pruned["acc"] is not None else "-"
    lat = "".join(f"{dense['lat'][b] / pruned['lat'][b]:>11.2f}x" for b in bss)
    lines.append(
        f"{'dense/pruned':<16}{dense['params'] / pruned['params']:>9.2f}x{dense['macs'] / pruned['macs']:>9.2f}x{dacc:>10}{lat}"
    )
    lines.append("")
    lines.append(f"heads per block: {dense_heads} -> {heads}")
    macs_ratio = dense["macs"] / pruned["macs"]
    for b in bss:
        speed = dense["lat"][b] / pruned["lat"][b]
        lines.append(
            f"bs {b}: measured speed-up {speed:.2f}x vs MACs ratio {macs_ratio:.2f}x "
            f"(speed-up / MACs ratio = {speed / macs_ratio:.2f})"
        )
    return "\n".join(lines)


def dense_heads_of(model: nn.Module) -> list[int]:
    """Head count of every attention block."""
    from .vit import attention_modules

    return [int(a.num_heads) for _, a in attention_modules(model)]


def _make_pruner(args: argparse.Namespace, model: nn.Module, w: Workload) -> ViTPruner:
    if args.method == "vtp":
        from .pruners import VTPPruner

        return VTPPruner(model, w.example, pruning_ratio=args.width_ratio, reg=args.reg, head_pruning_ratio=args.head_ratio)
    if args.method == "gohsp":
        from .importance import GraphHeadImportance
        from .pruners import GOHSPPruner

        imp = GraphHeadImportance(progress=not args.quiet).calibrate(model, w.train_loader, max_batches=args.calib_batches)
        if args.admm_epochs:
            return GOHSPPruner(model, w.example, imp, target_params_ratio=args.target_params)
    else:
        imp = tp_importance(args.method)
    return ViTPruner(
        model,
        w.example,
        imp,
        pruning_ratio=args.width_ratio,
        head_pruning_ratio=args.head_ratio,
        global_pruning=args.global_pruning,
        prune_head_dims=args.prune_head_dims,
        prune_mlp=args.prune_mlp,
        prune_embed_dim=args.prune_embed_dim,
    )


def _budget(args: argparse.Namespace) -> tuple[str, float] | None:
    """``("macs" | "latency", target)`` when a budget flag is given."""
    if args.target_macs is not None:
        return "macs", args.target_macs
    if args.target_latency is not None:
        return "latency", args.target_latency
    return None


def _check_budget(args: argparse.Namespace) -> None:
    budget = _budget(args)
    if budget is None:
        return
    metric, target = budget
    if not 0.0 < target <= 1.0:
        raise ValueError(f"--target-{metric} must lie in (0, 1] (fraction of the dense {metric} to keep), got {target}")
    if args.method == "gohsp" and args.admm_epochs:
        raise ValueError("--admm-epochs prunes to --target-params; drop either it or --target-macs/--target-latency")
    if args.method == "cpvit" and metric == "latency":
        raise ValueError("--method cpvit takes --target-macs (the cascade's MACs are exact); use --keep otherwise")
    if metric == "latency" and not args.latency:
        raise ValueError("--target-latency measures latency: drop --no-latency")


def _fit_structure(args: argparse.Namespace, model: nn.Module, w: Workload, pruner: ViTPruner) -> nn.Module:
    """Prune a copy of ``model`` to the ``--target-*`` budget with ``pruner``'s criterion; return it."""
    from .budget import fit_budget

    metric, target = _budget(args)
    if args.method == "vtp":  # the trained gates are the importance: fold them, then rank by them
        pruner.fold_gates()
    res = fit_budget(
        model,
        w.example,
        target,
        importance=pruner.importance,
        structure=args.budget_structure,
        metric=metric,
        latency_batch_size=max(args.latency_batch_sizes),
        progress=not args.quiet,
        global_pruning=args.global_pruning,
        prune_head_dims=args.prune_head_dims,
        prune_mlp=args.prune_mlp,
        prune_embed_dim=args.prune_embed_dim,
    )
    print(
        f"budget: keep {target:.3f} of the dense {metric} -> achieved {res.achieved:.3f} "
        f"({100 * res.relative_error:.1f} % off; MACs kept {res.macs_kept:.3f}; scalar ratio {res.ratio:.3f}, "
        f"{res.evaluations} candidates)"
    )
    if res.relative_error > 0.02:
        print(
            f"warning: {target:.3f} of the {metric} is out of reach for --budget-structure {args.budget_structure} "
            "(or too noisy); the closest candidate is kept. Prune more structure (both, --prune-head-dims) or relax it."
        )
    return res.model


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``tp-vit prune``."""
    try:
        check_ratio("--head-ratio", args.head_ratio)
        check_ratio("--width-ratio", args.width_ratio)
        check_ratio("--target-params", args.target_params)
        if not 0.0 < args.keep <= 1.0 or not 0.0 < args.head_keep <= 1.0:
            raise ValueError(f"--keep and --head-keep must lie in (0, 1], got {args.keep} and {args.head_keep}")
        _check_budget(args)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    torch.manual_seed(args.seed)
    w = _workload(args)
    if w.train_loader is None and _needs_data(args):
        raise SystemExit(f"--method {args.method} / fine-tuning need calibration data: add --data-path")
    w.model.to(args.device).eval()
    w.example = w.example.to(args.device)
    progress = not args.quiet
    budget = _budget(args)
    setting = (
        f"target {budget[0]} {budget[1]} ({args.budget_structure})"
        if budget
        else f"head ratio {args.head_ratio} | width ratio {args.width_ratio}"
    )
    print(f"model: {w.name} | method: {args.method} | {setting}")
    dense = _measure(w.model, w, args, "dense")
    model = copy.deepcopy(w.model)
    dense_heads = dense_heads_of(model)
    if args.method == "cpvit":
        from .tokens import apply_cascade

        keep = args.keep
        if budget is not None:  # --target-macs: the keep ratio whose (beta = 0) schedule hits it
            from .budget import fit_keep_ratio

            kwargs = dict(head_keep_ratio=args.head_keep, start_block=args.start_block, schedule_power=args.schedule_power)
            keep = fit_keep_ratio(model, tuple(w.example.shape[1:]), budget[1], **kwargs)
            print(f"budget: keep ratio {keep:.4f} for {budget[1]:.3f} of the dense MACs (beta 0: the schedule is exact)")
        cascade = apply_cascade(
            model,
            keep_ratio=keep,
            beta=0.0 if budget is not None else 0.5,
            head_keep_ratio=args.head_keep,
            start_block=args.start_block,
            schedule_power=args.schedule_power,
        )
        adjust = "fixed" if budget is not None else "adjusted per batch by attention range"
        print(
            f"CP-ViT cascade: patch tokens per block {cascade.schedule} (schedule power {args.schedule_power}, {adjust}); "
            "structure unchanged, --head-ratio/--width-ratio are not used"
        )
        return _finish(
            args,
            w,
            dense,
            model,
            dense_heads,
            note="the cascade is a runtime setting: save_pruned stores "
            "the weights only; call tpv.tokens.apply_cascade again after loading",
        )
    pruner = _make_pruner(args, model, w)
    if needs_gradients(args.method):
        accumulate_gradients(model, w.train_loader, max_batches=args.calib_batches, progress=progress)
    sparse_epochs = {"gohsp": args.admm_epochs, "vtp": args.sparse_epochs}.get(args.method, 0)
    if sparse_epochs:  # GOHSP's ADMM rounds or VTP's gated L1 training: the pruner regularises
        from .train import train

        train(
            model,
            w.train_loader,
            sparse_epochs,
            lr=args.lr,
            seed=args.seed,
            step_hook=pruner.regularize,
            epoch_hook=lambda _: pruner.update_regularizer(),
            desc=f"{args.method} sparse training",
            progress=progress,
        )
        if args.method == "gohsp":
            print(f"ADMM residual ||W - Z|| / ||W|| = {pruner.admm_residual():.4f}")
        else:
            print(f"gates below 0.01 after sparse training: {100 * pruner.gate_sparsity():.1f}%")
    if budget is not None:
        model = _fit_structure(args, model, w, pruner)
    else:
        pruner.step()
    model.zero_grad(set_to_none=True)
    return _finish(args, w, dense, model, dense_heads)


def _finish(
    args: argparse.Namespace, w: Workload, dense: dict, model: nn.Module, dense_heads: list[int], note: str | None = None
) -> int:
    progress = not args.quiet
    if args.finetune_epochs and w.train_loader is not None:
        from .train import train

        one_shot = _measure(model, w, argparse.Namespace(**{**vars(args), "latency": False}), "one-shot")
        print(f"one-shot accuracy (before fine-tune): {100 * one_shot['acc']:.2f}%")
        train(model, w.train_loader, args.finetune_epochs, lr=args.lr, seed=args.seed, desc="fine-tune", progress=progress)
    model.eval()
    pruned = _measure(model, w, args, "pruned")
    print(_table(dense, pruned, args, dense_heads_of(model), dense_heads))
    if args.out:
        from .io import save_pruned

        print(f"saved pruned model to {save_pruned(model, args.out)}")
        if note:
            print(f"note: {note}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``tp-vit bench``."""
    from .bench import run_bench

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
    print(open(f"{args.out}/RESULTS.md").read())
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
