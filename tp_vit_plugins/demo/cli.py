"""``tp-vit`` command line: prune a ViT (timm or transformers) and print a before/after table, or run the bench.

Examples::

    tp-vit prune                                   # embedded MNIST ViT, tp Taylor
    tp-vit prune --method l2 --head-pruning-ratio 0.5 --pruning-ratio 0
    tp-vit prune --method l2 --macs-keep-ratio 0.6     # ratios fitted to keep 60 % of the MACs
    tp-vit prune --method l2 --latency-keep-ratio 0.7  # ... or 70 % of the measured bs-64 latency

Every ``*-pruning-ratio`` counts what is removed, every ``*-keep-ratio`` what is kept.
    tp-vit prune --model deit_small_patch16_224 --pretrained --data-path /data/imagenet

This module parses and validates without importing torch (``--help`` and usage errors return
at once, exit code 2, one line saying what to change); the work is in :mod:`.prune` and
:mod:`.bench`, imported only once the arguments are known to be usable.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import tempfile
import typing
from collections.abc import Sequence

from .. import __version__
from ..core.extras import install_hint
from ..core.options import Flag, flags_of
from .names import (
    BENCH_METHODS,
    REGISTRY,
    STRUCTURE_FLAGS,
    ZOO_PIPELINE_METHODS,
    ZOO_PROTOCOLS,
    ZOO_TOKEN_METHODS,
)
from .options import BenchOptions, PruneOptions, from_namespace

__all__ = ["main", "build_parser", "validate_prune", "validate_bench", "budget_of", "prune_options", "bench_options"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (what to change), exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is ``None`` (the help then says what applies) or a switch's implied value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)


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
    p.add_argument(
        "--model", default=None,
        help="timm model name, or a local transformers save_pretrained directory (default: the embedded MNIST ViT)",
    )  # fmt: skip
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


def _per_method(dest: str, fallback: object) -> str:
    """``(default: 0.5; vtp: 0)``: a shared flag's default and the methods (or presets) that change it."""
    parts = [f"default: {fallback}"]
    for e in REGISTRY.values():
        if dest in e.defaults and e.defaults[dest] != fallback:
            parts.append(
                f"{e.name}: {e.defaults[dest]:g}" if isinstance(e.defaults[dest], float) else f"{e.name}: {e.defaults[dest]}"
            )
        for preset, values in e.preset_defaults.items():
            if dest in values:
                parts.append(f"{e.name} --preset {preset}: {values[dest]}")
    return "(" + "; ".join(parts) + ")"


def _type_of(annotation: str) -> type:
    for name, kind in (("float", float), ("int", int), ("str", str)):
        if name in annotation.split(" | "):
            return kind
    raise TypeError(f"no command-line type for an option annotated {annotation!r}")


def _preset_values(cls: type, name: str, flag: Flag) -> str:
    """``(preset: X, paper Y)`` from the options dataclass's presets (a switch: which preset sets it)."""
    recommended, paper = getattr(cls.preset("recommended"), name), getattr(cls.preset("paper"), name)
    if flag.is_switch:
        if recommended == flag.value:
            return " (the default)"
        return " (the paper preset's)" if paper == flag.value else ""
    if recommended is None and paper is None:
        return ""  # off unless given
    shown = flag.to_text(recommended)
    return f" (preset: {shown})" if paper == recommended else f" (preset: {shown}, paper {flag.to_text(paper)})"


def method_dest(method: str, name: str) -> str:
    """The parser destination of option ``name`` of ``method``'s options dataclass."""
    return f"{method}.{name}"


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option field that declares one, for every registered method with an options dataclass."""
    for entry in REGISTRY.values():
        if entry.config is None or not flags_of(entry.config):
            continue
        group = p.add_argument_group(f"{entry.name} options ({entry.config.__name__}; they override --preset)")
        for name, flag, annotation in flags_of(entry.config):
            help_text = f"{entry.name}: {flag.help}{_preset_values(entry.config, name, flag)}"
            dest = method_dest(entry.name, name)
            if flag.is_switch:
                group.add_argument(flag.name, dest=dest, action="store_const", const=flag.value, default=None, help=help_text)
            else:
                group.add_argument(flag.name, dest=dest, type=_type_of(annotation), choices=flag.choices, default=None,
                                   metavar=None if flag.choices else name.upper(), help=help_text)  # fmt: skip


def method_options(args: argparse.Namespace) -> dict:
    """The options of ``args.method``'s dataclass given on the command line (field -> value)."""
    entry = REGISTRY[args.method]
    if entry.config is None:
        return {}
    given = {}
    for name, flag, _ in flags_of(entry.config):
        value = getattr(args, method_dest(args.method, name), None)
        if value is not None:
            given[name] = flag.to_option(value)
    return given


def method_config(args: argparse.Namespace) -> object | None:
    """``args.method``'s options: its preset with the given flags applied, validated by the dataclass itself.

    Raises:
        ValueError: The dataclass refuses a value; the message starts with the flags given.
    """
    entry = REGISTRY[args.method]
    if entry.config is None:
        return None
    given = method_options(args)
    try:
        return dataclasses.replace(entry.config.preset(args.preset or "recommended"), **given)
    except (ValueError, TypeError) as e:
        names = {n: f.name for n, f, _ in flags_of(entry.config)}
        flags = ", ".join(sorted({names[n] for n in given})) or "--preset"
        raise ValueError(f"{flags}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``tp-vit`` argument parser (no torch import)."""
    parser = _Parser(prog="tp-vit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tp-vit (tp_vit_plugins) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = _DefaultsFormatter
    p = sub.add_parser("prune", help="prune a model and print a before/after table", formatter_class=fmt)
    p.add_argument("--method", default="taylor", choices=tuple(REGISTRY), help="importance criterion / method")
    p.add_argument(
        "--head-pruning-ratio", type=float, default=None,
        help="share of attention heads removed " + _per_method("head_pruning_ratio", 0.5),
    )  # fmt: skip
    p.add_argument("--pruning-ratio", type=float, default=0.3, help="share of width channels removed (MLP neurons by default)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--macs-keep-ratio", type=float, default=None, help="share of the dense MACs kept (ratios fitted)")
    budget.add_argument(
        "--latency-keep-ratio", type=float, default=None, help="share of the dense latency kept at the largest batch size"
    )
    p.add_argument(
        "--budget-structure",
        default="both",
        choices=["heads", "width", "both"],
        help="what a --macs-keep-ratio / --latency-keep-ratio budget prunes",
    )
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank heads and channels across layers")
    p.add_argument("--prune-head-dims", action="store_true", help="--pruning-ratio also removes dims inside heads")
    p.add_argument("--prune-embed-dim", action="store_true", help="--pruning-ratio also removes embedding dims")
    p.add_argument("--no-mlp", dest="prune_mlp", action="store_false", help="leave MLP neurons alone")
    p.add_argument(
        "--preset",
        default=None,
        choices=["paper", "recommended"],
        help="gohsp / vtp / cpvit: 'paper' runs the paper's method (gohsp: graph-ranked heads then ADMM towards "
        "heterogeneous structured sparsity, 2 ADMM epochs unless --admm-epochs; vtp: L1-trained gates on dims, ranked "
        "by |g|, no whole heads; cpvit: cumulative scores, progressive token drop, head skipping, attention-range "
        "adjustment); 'recommended' the library's defaults (default); method flags override either",
    )
    p.add_argument("--sparse-epochs", type=_non_negative_int, default=3, help="vtp: epochs of gated L1 sparse training")
    p.add_argument("--gate-histogram", default=None, help="vtp: write a PNG histogram of the trained gates here")
    p.add_argument(
        "--admm-epochs", type=_non_negative_int, default=None,
        help="gohsp: ADMM epochs (>0: GOHSPPruner to --params-pruning-ratio) " + _per_method("admm_epochs", 0),
    )  # fmt: skip
    p.add_argument(
        "--admm-rounds",
        type=_positive_int,
        default=None,
        help="gohsp: ADMM dual updates, evenly over the ADMM steps (default: 10)",
    )
    p.add_argument("--params-pruning-ratio", type=float, default=0.4, help="gohsp with ADMM: share of parameters removed")
    p.add_argument("--finetune-epochs", type=_non_negative_int, default=2, help="fine-tune epochs after pruning (0: one-shot)")
    p.add_argument("--eval-batches", type=_positive_int, default=None, help="limit evaluation batches (real data)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size for --data-path loaders")
    p.add_argument("--latency-batch-sizes", type=_positive_int, nargs="+", default=[1, 64], help="batch sizes to time")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip latency measurement")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--retrain", action="store_true", help="retrain the embedded model instead of using the shipped weights")
    p.add_argument("--out", default=None, help="save the pruned model in this directory (tpv.save_pruned)")
    p.add_argument(
        "--export", dest="export_path", default=None, help="also export the pruned model (cascade included) to this .onnx file"
    )
    p.add_argument("--json", dest="json_path", default=None, help="also write the report as JSON to this file")
    _add_common(p)
    _add_method_flags(p)
    p.set_defaults(subparser=p)

    e = sub.add_parser(
        "export", help="export a model saved by tpv.save_pruned to ONNX, checked in onnxruntime", formatter_class=fmt
    )
    e.add_argument("saved_dir", help="a directory written by tpv.save_pruned (or tp-vit prune --out)")
    e.add_argument("onnx_path", help="the .onnx file to write")
    e.add_argument(
        "--latency-batch-sizes", type=_positive_int, nargs="*", default=[1, 64], help="onnxruntime batch sizes to time"
    )
    e.add_argument("--threads", type=_positive_int, default=None, help="onnxruntime / torch CPU threads")
    e.add_argument("--no-cascade", dest="cascade", action="store_false", help="export without the saved CP-ViT cascade (if any)")
    e.set_defaults(subparser=e)

    b = sub.add_parser("bench", help="compare every method at the same MACs budgets", formatter_class=fmt)
    b.add_argument("--methods", default=",".join(BENCH_METHODS), help=f"comma list from {','.join(BENCH_METHODS)}")
    b.add_argument("--macs-keep-ratios", type=float, nargs="+", default=[0.8, 0.6], help="shares of the dense MACs kept")
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
    """``("macs" | "latency", share kept)`` when ``--macs-keep-ratio`` / ``--latency-keep-ratio`` is given."""
    if args.macs_keep_ratio is not None:
        return "macs", args.macs_keep_ratio
    if args.latency_keep_ratio is not None:
        return "latency", args.latency_keep_ratio
    return None


def _check_ratio(name: str, value: float, low_open: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise ValueError(f"{name} must lie in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")


def check_writable_dir(path: str, flag: str) -> None:
    """``path`` is (or can be made) a directory a file can be written in: tried, not guessed (checked before any work).

    ``os.access`` says yes to root even on read-only or virtual file systems, so the directory
    is created (as the run would create it) and a probe file written and removed.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a file; give a directory path")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be written ({e.strerror or e}); choose another directory") from None


def check_export(path: str, flag: str) -> None:
    """An ``.onnx`` path in a writable directory, with the ``[export]`` extra installed (checked before any work)."""
    import importlib.util

    if not path.endswith(".onnx"):
        raise ValueError(f"{flag} {path!r} must name a .onnx file")
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{flag} needs {', '.join(missing)}: {install_hint('export')}")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), flag)


def check_data_path(root: str) -> None:
    """An ImageFolder root with non-empty ``train/`` and ``val/`` class folders."""
    if not os.path.isdir(root):
        raise ValueError(f"--data-path {root!r} does not exist or is not a directory")
    for sub in ("train", "val"):
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder) or not any(os.scandir(folder)):
            raise ValueError(f"--data-path {root!r} needs a non-empty {sub}/ folder of class sub-folders (ImageFolder layout)")


def check_model_name(name: str) -> None:
    """A timm model name (close matches suggested for a typo; imports timm), or a transformers model directory."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"--model {name!r} is a directory without config.json (not a transformers save_pretrained one)")
        return
    import timm  # here, not at the top: --help and other usage errors must not wait for torch

    known = timm.list_models()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ValueError(f"--model {name!r} is not a timm model{hint}")


def _check_common(args: argparse.Namespace) -> None:
    if (args.pretrained or args.data_path or args.checkpoint) and not args.model:
        raise ValueError(
            "--pretrained, --checkpoint and --data-path need --model (a timm model name or a transformers directory)"
        )
    if args.model and os.path.isdir(args.model) and (args.pretrained or args.checkpoint):
        raise ValueError("a transformers model directory brings its own weights: drop --pretrained / --checkpoint")
    if args.model and args.embedded_epochs is not None:
        raise ValueError("--embedded-epochs trains the embedded model; drop it with --model")
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint!r} does not exist")
    if args.data_path:
        check_data_path(args.data_path)
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.model:  # last of the common checks: they import timm / torch
        check_model_name(args.model)
    if args.checkpoint:
        from .workload import read_checkpoint

        read_checkpoint(args.checkpoint)  # a file that cannot be read is refused before any work


def used_flags(args: argparse.Namespace) -> set[str]:
    """The method-specific ``tp-vit prune`` flags (destinations) that ``args.method`` reads."""
    entry = REGISTRY[args.method]
    own = {method_dest(entry.name, name) for name, _, _ in flags_of(entry.config)} if entry.config is not None else set()
    return {*entry.reads(vars(args)), *own}


def _method_specific() -> set[str]:
    """Every destination that some method reads and another may not."""
    dests = {*STRUCTURE_FLAGS, "preset"}
    for e in REGISTRY.values():
        dests.update(e.flags)
        if e.config is not None:
            dests.update(method_dest(e.name, name) for name, _, _ in flags_of(e.config))
    return dests


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options written on the command line (not their defaults)."""
    known = parser._option_string_actions
    return {known[tok.split("=", 1)[0]].dest for tok in argv if tok.startswith("--") and tok.split("=", 1)[0] in known}


def _check_ignored(args: argparse.Namespace, given: set[str], parser: argparse.ArgumentParser | None) -> None:
    ignored = sorted((given & _method_specific()) - used_flags(args))
    if not ignored:
        return
    actions = parser._actions if parser is not None else []
    names = {a.dest: a.option_strings[0] for a in actions if a.option_strings}
    flags = ", ".join(names.get(d, d) for d in ignored)
    entry = REGISTRY[args.method]
    why = ""
    if entry.replaces_structure and getattr(args, entry.replaces_structure, None):
        reads = ", ".join(names.get(d, d) for d in entry.flags if d != entry.replaces_structure)
        why = f" (with {names.get(entry.replaces_structure)} {entry.name} decides the structure; it reads {reads})"
    raise ValueError(f"--method {args.method} does not use {flags}{why}; drop it or choose another method")


def validate_prune(
    args: argparse.Namespace, given: set[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> None:
    """Every ``tp-vit prune`` check that needs no model or data.

    Args:
        args: The parsed arguments.
        given: Destinations written on the command line (:func:`given_flags`): a method-specific
            flag that the method does not read is refused.
        parser: The ``prune`` parser (names the refused flags).

    Raises:
        ValueError: With one line that says what to change.
    """
    entry = REGISTRY[args.method]
    for dest, fallback in (("head_pruning_ratio", 0.5), ("admm_epochs", 0)):
        if getattr(args, dest) is None:
            setattr(args, dest, entry.default(dest, args.preset, fallback))
    _check_ignored(args, given or set(), parser)
    _check_common(args)
    _check_ratio("--head-pruning-ratio", args.head_pruning_ratio)
    _check_ratio("--pruning-ratio", args.pruning_ratio)
    _check_ratio("--params-pruning-ratio", args.params_pruning_ratio)
    config = method_config(args)  # the method's options dataclass validates its own flags
    budget = budget_of(args)
    if budget is not None:
        metric, target = budget
        _check_ratio(f"--{metric}-keep-ratio", target, low_open=True)
        if args.method == "gohsp" and args.admm_epochs:
            raise ValueError(
                "--admm-epochs prunes to --params-pruning-ratio; drop either it or --macs-keep-ratio/--latency-keep-ratio"
            )
        if args.method == "cpvit" and getattr(config, "beta", 0) > 0:
            raise ValueError(
                "the attention-range adjustment (--attention-range > 0; the cpvit paper preset's) is calibrated on data, so "
                "no keep ratio can be fitted to --macs-keep-ratio beforehand: give --keep-ratio, or add --attention-range 0 "
                "to fit the plain schedule"
            )
        if args.method == "cpvit" and metric == "latency":
            raise ValueError("--method cpvit takes --macs-keep-ratio (the cascade's MACs are exact); use --keep-ratio otherwise")
        if metric == "latency" and not args.latency:
            raise ValueError("--latency-keep-ratio measures latency: drop --no-latency")
    if getattr(config, "threshold", None) is not None and budget is not None:
        raise ValueError("--gate-threshold decides how much goes; drop --macs-keep-ratio/--latency-keep-ratio (or the threshold)")
    needs_data = REGISTRY[args.method].needs_data or args.finetune_epochs > 0
    if args.model and not args.data_path and needs_data:
        raise ValueError(
            f"--method {args.method} / fine-tuning need calibration data: add --data-path "
            "(or use l1/l2/random with --finetune-epochs 0)"
        )
    if args.export_path:
        check_export(args.export_path, "--export")
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
    for t in args.macs_keep_ratios:
        _check_ratio("--macs-keep-ratios", t, low_open=True)
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


def validate_export(args: argparse.Namespace) -> None:
    """``tp-vit export`` checks: a ``save_pruned`` directory, a writable ``.onnx`` path, the extra installed.

    Raises:
        ValueError: With one line that says what to change.
    """
    if not os.path.isfile(os.path.join(args.saved_dir, "model.safetensors")):
        raise ValueError(f"{args.saved_dir!r} is not a directory written by tpv.save_pruned (no model.safetensors)")
    check_export(args.onnx_path, "ONNX_PATH")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tp-vit``: parse, validate (exit 2 on usage errors), then run."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    sub = vars(args).pop("subparser")  # the subcommand's parser, for its error line
    try:
        if args.command == "prune":
            validate_prune(args, given_flags(sub, argv), sub)
        elif args.command == "export":
            validate_export(args)
        else:
            validate_bench(args)
    except ValueError as e:
        sub.error(str(e))  # one line that says what to change, exit 2
    # the heavy imports (torch, timm, tp) happen only now that the arguments are usable
    if args.command == "prune":
        from .prune import cmd_prune

        return cmd_prune(prune_options(args))
    if args.command == "export":
        from .export_cmd import cmd_export

        return cmd_export(args.saved_dir, args.onnx_path, tuple(args.latency_batch_sizes), args.threads, args.cascade)
    from .bench import cmd_bench

    return cmd_bench(bench_options(args, "tp-vit " + " ".join(argv)))


def prune_options(args: argparse.Namespace) -> PruneOptions:
    """The typed options of parsed ``tp-vit prune`` arguments (the work layer reads nothing else)."""
    return from_namespace(PruneOptions, args, method_options=method_options(args))


def bench_options(args: argparse.Namespace, command: str = "") -> BenchOptions:
    """The typed options of parsed ``tp-vit bench`` arguments; ``command`` is recorded with the results."""
    return from_namespace(BenchOptions, args, command_line=command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
