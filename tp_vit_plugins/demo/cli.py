"""``tp-vit`` command line: prune a timm ViT and print a before/after table, or run the bench.

Examples::

    tp-vit prune                                   # embedded MNIST ViT, tp Taylor
    tp-vit prune --method l2 --head-ratio 0.5 --width-ratio 0
    tp-vit prune --method l2 --target-macs 0.6     # ratios fitted to keep 60 % of the MACs
    tp-vit prune --method l2 --target-latency 0.7  # ... or 70 % of the measured bs-64 latency
    tp-vit prune --model deit_small_patch16_224 --pretrained --data-path /data/imagenet

This module parses and validates without importing torch (``--help`` and usage errors return
at once, exit code 2, one line saying what to change); the work is in :mod:`.prune` and
:mod:`.bench`, imported only once the arguments are known to be usable.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .names import BENCH_METHODS, PRUNE_METHODS, ZOO_PIPELINE_METHODS, ZOO_PROTOCOLS, ZOO_TOKEN_METHODS

__all__ = ["main", "build_parser", "validate_prune", "validate_bench", "budget_of"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    """Workload, data, threads and output flags shared by ``prune`` and ``bench``."""
    p.add_argument("--model", default=None, help="timm model name (default: the embedded MNIST ViT)")
    p.add_argument("--pretrained", action="store_true", help="load timm pretrained weights (needs network or a HF cache)")
    p.add_argument(
        "--checkpoint", default=None, help="local weights for --model (.safetensors / .pt state dict, or a save_pruned dir)"
    )
    p.add_argument("--data-path", default=None, help="ImageFolder root with train/ and val/ (real data for --model)")
    p.add_argument("--embedded-epochs", type=_positive_int, default=None, help="train the embedded model with this many epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, calibration subset and fine-tuning")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--calib-batches", type=_positive_int, default=8, help="calibration batches for data-driven criteria")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of sparse training and fine-tuning")
    p.add_argument("--quiet", action="store_true", help="no progress bars or phase lines")


def build_parser() -> argparse.ArgumentParser:
    """The ``tp-vit`` argument parser (no torch import)."""
    parser = argparse.ArgumentParser(prog="tp-vit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tp-vit (tp_vit_plugins) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="prune a model and print a before/after table")
    p.add_argument("--method", default="taylor", choices=PRUNE_METHODS, help="importance criterion / method")
    p.add_argument("--head-ratio", type=float, default=0.5, help="share of attention heads to remove")
    p.add_argument("--width-ratio", type=float, default=0.3, help="share of width channels to remove (MLP neurons by default)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-macs", type=float, default=None, help="keep this fraction of the dense MACs (ratios fitted)")
    budget.add_argument(
        "--target-latency", type=float, default=None, help="keep this fraction of the dense latency at the largest batch size"
    )
    p.add_argument(
        "--budget-structure", default="both", choices=["heads", "width", "both"], help="what a --target-* budget prunes"
    )
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank heads and channels across layers")
    p.add_argument("--prune-head-dims", action="store_true", help="the width ratio also removes dims inside heads")
    p.add_argument("--prune-embed-dim", action="store_true", help="the width ratio also removes embedding dims")
    p.add_argument("--no-mlp", dest="prune_mlp", action="store_false", help="leave MLP neurons alone")
    p.add_argument("--keep", type=float, default=0.5, help="cpvit: share of patch tokens left in the last block")
    p.add_argument("--head-keep", type=float, default=1.0, help="cpvit: share of heads each input keeps (1 = no skipping)")
    p.add_argument("--start-block", type=int, default=None, help="cpvit: first block whose scores drop tokens")
    p.add_argument(
        "--schedule-steps", type=_non_negative_int, default=3, help="cpvit: pruning stages of the stepped schedule (0: the ramp)"
    )
    p.add_argument(
        "--token-fold",
        default="merge",
        choices=["merge", "drop"],
        help="cpvit: merge pruned tokens into their most similar kept token, or drop them (the paper)",
    )
    p.add_argument("--sparse-epochs", type=_non_negative_int, default=3, help="vtp: epochs of gated L1 sparse training")
    p.add_argument("--reg", type=float, default=0.5, help="vtp: L1 strength, relative to the mean gate gradient")
    p.add_argument("--shrink", type=float, default=1.0, help="vtp: how far the L1 step alone moves a gate over sparse training")
    p.add_argument("--head-dim-gate", default="proj", choices=["proj", "qkv_out"], help="vtp: where head dims are gated")
    p.add_argument(
        "--gate-score",
        default="taylor",
        choices=["taylor", "magnitude"],
        help="vtp: rank dims by mean |g * dL/dg| over sparse training (default) or by |g| (the paper's rule)",
    )
    p.add_argument(
        "--no-gate-closing",
        dest="gate_closing",
        action="store_false",
        help="vtp: plain L1 sparse training (the paper) instead of closing the lowest-scoring gates in rounds",
    )
    p.add_argument(
        "--gate-threshold",
        type=float,
        default=None,
        help="vtp: prune every dim whose gate is <= this (0 = the zeroed gates) instead of --width-ratio",
    )
    p.add_argument(
        "--fold-gate-values",
        dest="fold_gate_values",
        action="store_true",
        default=None,
        help="vtp: fold the trained gate values into the weights (the paper) instead of ranking only",
    )
    p.add_argument(
        "--gates-rank-only",
        dest="fold_gate_values",
        action="store_false",
        help="vtp: the gates only choose what goes; kept dims keep their ungated scale",
    )
    p.add_argument("--gate-histogram", default=None, help="vtp: write a PNG histogram of the trained gates here")
    p.add_argument(
        "--admm-epochs", type=_non_negative_int, default=0, help="gohsp: ADMM epochs (>0: GOHSPPruner to --target-params)"
    )
    p.add_argument(
        "--admm-rounds",
        type=_positive_int,
        default=None,
        help="gohsp: ADMM dual updates, evenly over the ADMM steps (default: 10)",
    )
    p.add_argument("--target-params", type=float, default=0.4, help="gohsp with ADMM: share of parameters to remove")
    p.add_argument("--finetune-epochs", type=_non_negative_int, default=2, help="fine-tune epochs after pruning (0: one-shot)")
    p.add_argument("--eval-batches", type=_positive_int, default=None, help="limit evaluation batches (real data)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size for --data-path loaders")
    p.add_argument("--latency-batch-sizes", type=_positive_int, nargs="+", default=[1, 64], help="batch sizes to time")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip latency measurement")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--retrain", action="store_true", help="retrain the embedded model instead of using the shipped weights")
    p.add_argument("--out", default=None, help="save the pruned model in this directory (tpv.save_pruned)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON to this file")
    _add_common(p)
    p.set_defaults(subparser=p)

    b = sub.add_parser("bench", help="compare every method at the same MACs budgets")
    b.add_argument("--methods", default=",".join(BENCH_METHODS), help=f"comma list from {','.join(BENCH_METHODS)}")
    b.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6], help="fractions of the dense MACs to keep")
    b.add_argument("--seeds", type=_positive_int, default=None, help="seeds per (method, target); default 2, with --zoo 3")
    b.add_argument("--finetune-epochs", type=_non_negative_int, default=1, help="training epochs per method")
    b.add_argument("--latency-batch-sizes", type=_positive_int, nargs="*", default=[1, 64], help="batch sizes to time")
    b.add_argument("--out", default="bench_out", help="directory for RESULTS.md, results.json and the plots")
    b.add_argument("--zoo", action="store_true", help="run the zoo protocols on every zoo model (ZOO.md, zoo.json, PNG)")
    b.add_argument("--quick", action="store_true", help="with --zoo: two models, one seed, one setting per protocol")
    b.add_argument("--protocols", default=",".join(ZOO_PROTOCOLS), help=f"with --zoo: comma list from {','.join(ZOO_PROTOCOLS)}")
    b.add_argument(
        "--pipeline-methods",
        default=None,
        help=f"with --zoo: comma list from {','.join(ZOO_PIPELINE_METHODS)} (default: dense+E,l2,taylor,group_norm,gohsp,vtp)",
    )
    b.add_argument("--token-methods", default=None, help=f"with --zoo: comma list from {','.join(ZOO_TOKEN_METHODS)}")
    b.add_argument("--zoo-epochs", type=_positive_int, default=2, help="with --zoo: total training epochs per pipeline method")
    _add_common(b)
    b.set_defaults(subparser=b)
    return parser


def budget_of(args: argparse.Namespace) -> tuple[str, float] | None:
    """``("macs" | "latency", target)`` when ``--target-macs`` / ``--target-latency`` is given."""
    if args.target_macs is not None:
        return "macs", args.target_macs
    if args.target_latency is not None:
        return "latency", args.target_latency
    return None


def _check_ratio(name: str, value: float, low_open: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise ValueError(f"{name} must lie in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")


def check_writable_dir(path: str, flag: str) -> None:
    """``path`` can be created (or is) a writable directory; checked before any work."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; give a directory path")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{flag} {path!r}: {probe!r} is a file, so the directory cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: {probe!r} is not writable; choose another directory")


def check_data_path(root: str) -> None:
    """An ImageFolder root with non-empty ``train/`` and ``val/`` class folders."""
    if not os.path.isdir(root):
        raise ValueError(f"--data-path {root!r} does not exist or is not a directory")
    for sub in ("train", "val"):
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder) or not any(os.scandir(folder)):
            raise ValueError(f"--data-path {root!r} needs a non-empty {sub}/ folder of class sub-folders (ImageFolder layout)")


def check_model_name(name: str) -> None:
    """A timm model name, with close matches suggested for a typo (imports timm)."""
    import timm  # here, not at the top: --help and other usage errors must not wait for torch

    known = timm.list_models()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ValueError(f"--model {name!r} is not a timm model{hint}")


def _check_common(args: argparse.Namespace) -> None:
    if (args.pretrained or args.data_path or args.checkpoint) and not args.model:
        raise ValueError("--pretrained, --checkpoint and --data-path need a timm model name: add --model NAME")
    if args.model and args.embedded_epochs is not None:
        raise ValueError("--embedded-epochs trains the embedded model; drop it with --model")
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint!r} does not exist")
    if args.data_path:
        check_data_path(args.data_path)
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.model:  # last of the common checks: it imports timm
        check_model_name(args.model)


def validate_prune(args: argparse.Namespace) -> None:
    """Every ``tp-vit prune`` check that needs no model or data.

    Raises:
        ValueError: With one line that says what to change.
    """
    _check_common(args)
    _check_ratio("--head-ratio", args.head_ratio)
    _check_ratio("--width-ratio", args.width_ratio)
    _check_ratio("--target-params", args.target_params)
    _check_ratio("--keep", args.keep, low_open=True)
    _check_ratio("--head-keep", args.head_keep, low_open=True)
    budget = budget_of(args)
    if budget is not None:
        metric, target = budget
        _check_ratio(f"--target-{metric}", target, low_open=True)
        if args.method == "gohsp" and args.admm_epochs:
            raise ValueError("--admm-epochs prunes to --target-params; drop either it or --target-macs/--target-latency")
        if args.method == "cpvit" and metric == "latency":
            raise ValueError("--method cpvit takes --target-macs (the cascade's MACs are exact); use --keep otherwise")
        if metric == "latency" and not args.latency:
            raise ValueError("--target-latency measures latency: drop --no-latency")
    if args.reg < 0 or args.shrink <= 0:
        raise ValueError(f"--reg must be >= 0 and --shrink > 0, got {args.reg} and {args.shrink}")
    if args.gate_threshold is not None:
        if args.method != "vtp" or args.gate_threshold < 0:
            raise ValueError("--gate-threshold is VTP's selection rule: use it with --method vtp and a value >= 0")
        if budget is not None:
            raise ValueError("--gate-threshold decides how much goes; drop --target-macs/--target-latency (or the threshold)")
    if args.gate_histogram and args.method != "vtp":
        raise ValueError("--gate-histogram plots VTP gates: use it with --method vtp")
    needs_data = args.method in ("taylor", "gohsp", "vtp") or args.finetune_epochs > 0
    if args.model and not args.data_path and needs_data:
        raise ValueError(
            f"--method {args.method} / fine-tuning need calibration data: add --data-path "
            "(or use l1/l2/random with --finetune-epochs 0)"
        )
    dirs = [(args.out, "--out"), (os.path.dirname(args.json_path or "") or None, "--json")]
    dirs.append((os.path.dirname(args.gate_histogram or "") or None, "--gate-histogram"))
    for path, flag in dirs:
        if path:
            check_writable_dir(path, flag)


def validate_bench(args: argparse.Namespace) -> None:
    """Every ``tp-vit bench`` check that needs no model or data.

    Raises:
        ValueError: With one line that says what to change.
    """
    _check_common(args)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(BENCH_METHODS):
        raise ValueError(f"--methods must be a comma list from {','.join(BENCH_METHODS)}, got {args.methods!r}")
    if "vtp" in methods and args.finetune_epochs == 0 and not args.zoo:
        raise ValueError("vtp trains its gates within the epoch budget: give --finetune-epochs >= 1 (or drop vtp)")
    for t in args.targets:
        _check_ratio("--targets", t, low_open=True)
    if args.model and not args.data_path:
        raise ValueError("tp-vit bench --model needs --data-path (accuracy is part of the comparison)")
    if args.zoo and args.model:
        raise ValueError("--zoo benchmarks the project's own zoo of models; drop --model")
    if args.pipeline_methods is not None:
        chosen = [m for m in args.pipeline_methods.split(",") if m]
        if not chosen or set(chosen) - set(ZOO_PIPELINE_METHODS):
            raise ValueError(
                f"--pipeline-methods must be a comma list from {','.join(ZOO_PIPELINE_METHODS)}, got {args.pipeline_methods!r}"
            )
    if args.token_methods is not None:
        chosen = [m for m in args.token_methods.split(",") if m]
        if not chosen or set(chosen) - set(ZOO_TOKEN_METHODS):
            raise ValueError(
                f"--token-methods must be a comma list from {','.join(ZOO_TOKEN_METHODS)}, got {args.token_methods!r}"
            )
    protocols = [p for p in args.protocols.split(",") if p]
    if not protocols or set(protocols) - set(ZOO_PROTOCOLS):
        raise ValueError(f"--protocols must be a comma list from {','.join(ZOO_PROTOCOLS)}, got {args.protocols!r}")
    check_writable_dir(args.out, "--out")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tp-vit``: parse, validate (exit 2 on usage errors), then run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = vars(args).pop("subparser")  # the subcommand's parser, for its usage line
    try:
        (validate_prune if args.command == "prune" else validate_bench)(args)
    except ValueError as e:
        sub.error(str(e))  # prints usage + the one-line reason, exits 2
    # the heavy imports (torch, timm, tp) happen only now that the arguments are usable
    if args.command == "prune":
        from .prune import cmd_prune

        return cmd_prune(args)
    from .bench import cmd_bench

    return cmd_bench(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
