"""What pruning buys when deployed: onnxruntime (1 and 2 threads), eager and torch.compile, dense vs reduced alternated.

    python benchmarks/export_speed.py [--models deit_small_patch16_224,eva02_small_patch14_224,deit3_small_patch16_224]
        [--rounds 5] [--batch-sizes 1 16] [--ort-threads 1 2] [--no-compile] [--round-to 8]
        [--section "Deployment speed"]

Random weights (timing needs no trained weights). Per model: "pruned" = ``tpv.ViTPruner`` with
``pruning_ratio=0.3`` (MLP width) and ``head_pruning_ratio=0.5``; on ``--sparse-models`` also
"GOHSP" / "VTP" = ``tpv.GOHSPPruner(pruning_ratio=0.4)`` / ``tpv.VTPPruner(close_params=0.4)``
after ``--sparse-steps`` steps of tp's loop on random images (their structures: heterogeneous
heads, head dims and MLP widths), and with ``--round-to N`` their twins pruned with tp's
``round_to=N`` (every width a multiple of ``N``); "cascade 80 %" / "cascade 60 %" =
``tpv.apply_cascade`` with the keep ratio fitted by ``tpv.cpvit.fit_keep_ratio`` to keep 80 / 60 %
of the MACs (library defaults otherwise). Every reduced model and the dense one are exported
with ``tpv.export_onnx`` (checked in onnxruntime), then timed one after the other in every round
(onnxruntime: ``alternated_onnx_speedup``; eager and ``torch.compile``: ``alternated_speedup``,
with torch at 2 threads). Reports the median speed-up, the MACs ratio (``count_macs``, dense /
reduced) and their quotient, and the spread of the per-round speed-ups. Writes the "Deployment
speed" section of RESULTS.md (or ``--section``).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings

import timm
import torch
import torch._dynamo
from common import write_section

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import alternated_speedup
from tp_vit_plugins.export import alternated_onnx_speedup


def _sparse_phase(pruner, model: torch.nn.Module, example: torch.Tensor, steps: int) -> None:
    """A short sparse phase on random images and labels (the structure is what is timed), driven like tp's loop."""
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, *example.shape[1:], generator=g)
        y = torch.randint(0, 1000, (8,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        pruner.regularize(model)
        model.zero_grad()
    pruner.update_regularizer()
    model.eval()
    pruner.step()


def sparse_variants(
    model: torch.nn.Module, example: torch.Tensor, steps: int, round_to: int | None = None
) -> dict[str, torch.nn.Module]:
    """GOHSP and VTP (recommended presets), 40 % of the parameters, after ``steps`` sparse-training steps.

    ``round_to``: tp's ``round_to`` (every pruned width a multiple of it); named in the row labels.
    """
    kw, tag = ({}, "") if round_to is None else ({"round_to": round_to}, f", round_to={round_to}")
    gohsp = copy.deepcopy(model)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(gohsp, [torch.randn(8, *example.shape[1:])])
    _sparse_phase(tpv.GOHSPPruner(gohsp, example, imp, pruning_ratio=0.4, **kw), gohsp, example, steps)
    vtp = copy.deepcopy(model)
    _sparse_phase(tpv.VTPPruner(vtp, example, close_params=0.4, **kw), vtp, example, steps)
    return {f"GOHSP (40 % params{tag})": gohsp, f"VTP (40 % params{tag})": vtp}


def variants(
    model: torch.nn.Module, example: torch.Tensor, sparse_steps: int = 0, round_to: int | None = None
) -> dict[str, torch.nn.Module]:
    pruned = copy.deepcopy(model)
    tpv.ViTPruner(pruned, example, pruning_ratio=0.3, head_pruning_ratio=0.5).step()
    out = {"pruned (30 % width, 50 % heads)": pruned}
    if sparse_steps:
        out.update(sparse_variants(model, example, sparse_steps))
        if round_to is not None:
            out.update(sparse_variants(model, example, sparse_steps, round_to))
    for target in (0.8, 0.6):
        keep = tpv.cpvit.fit_keep_ratio(model, tuple(example.shape[1:]), target)
        cascaded = copy.deepcopy(model)
        tpv.apply_cascade(cascaded, keep_ratio=keep)
        out[f"cascade {int(100 * target)} % MACs"] = cascaded
    return out


def rows_for(name: str, args: argparse.Namespace, tmp: str) -> list[str]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"]
    example = torch.randn(1, *size)
    dense_macs = tpv.count_macs(model, example)
    dense_path = tpv.export_onnx(model, example, os.path.join(tmp, f"{name}-dense.onnx"), check_batch_sizes=(2,)).path
    out = []
    steps = args.sparse_steps if name in args.sparse_models.split(",") else 0
    for label, reduced in variants(model, example, steps, args.round_to).items():
        heads = tpv.hosts.host_for(reduced).attention_modules(reduced)
        print(f"# {name} {label}: heads {[int(a.num_heads) for _, a in heads]}, head dims {[int(a.head_dim) for _, a in heads]}")
        macs_ratio = dense_macs / tpv.count_macs(reduced, example)
        slug = "".join(c for c in label if c.isalnum())
        report = tpv.export_onnx(reduced, example, os.path.join(tmp, f"{name}-{slug}.onnx"), check_batch_sizes=(2,))
        runs = []
        for threads in args.ort_threads:
            timing = alternated_onnx_speedup(dense_path, report.path, example, args.batch_sizes, args.rounds, threads, 0.3)
            runs.append((f"onnxruntime, {threads} thr", timing))
        torch.set_num_threads(2)
        runs.append(("eager, 2 thr", alternated_speedup(model, reduced, example, args.batch_sizes, args.rounds, 0.3)))
        if args.compile:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dense_c, reduced_c = torch.compile(model, dynamic=False), torch.compile(reduced, dynamic=False)
                runs.append(
                    ("compile, 2 thr", alternated_speedup(dense_c, reduced_c, example, args.batch_sizes, args.rounds, 0.3))
                )
        for runtime, timing in runs:
            for bs, (d, r, speedup, spread) in timing.items():
                out.append(
                    f"| {name} | {label} | {runtime} | {bs} | {1e3 * d:.2f} | {1e3 * r:.2f} | {speedup:.2f} | "
                    f"{macs_ratio:.2f} | {speedup / macs_ratio:.2f} | {100 * spread:.0f} % |"
                )
                print(out[-1], flush=True)
        print(f"# {name} {label}: onnxruntime vs PyTorch max |diff| {report.max_abs_diff:.1e}", flush=True)
    return out


def main() -> None:
    torch._dynamo.config.cache_size_limit = 64
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="deit_small_patch16_224,eva02_small_patch14_224,deit3_small_patch16_224")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--ort-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--sparse-models", default="deit_small_patch16_224", help="models that also get GOHSP / VTP rows")
    p.add_argument("--sparse-steps", type=int, default=20, help="sparse-training steps before GOHSP / VTP prune")
    p.add_argument("--round-to", type=int, default=None, help="also time GOHSP / VTP pruned with tp's round_to=N")
    p.add_argument("--section", default="Deployment speed", help="RESULTS.md section to write")
    args = p.parse_args()
    lines = [
        "| model | reduced | runtime | batch | dense ms | reduced ms | speed-up | MACs ratio | speed-up ÷ MACs | spread |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            lines += rows_for(name, args, tmp)
    flags = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "compile" and v != p.get_default(k)
    ).replace(f"--section {args.section}", f'--section "{args.section}"')
    command = "python benchmarks/export_speed.py" + (f" {flags}" if flags else "") + ("" if args.compile else " --no-compile")
    write_section(args.section, f"`{command}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
