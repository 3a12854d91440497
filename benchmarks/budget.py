"""Budgets in measured latency (and MACs for reference): achieved vs target, re-measured.

``fit_budget(metric="latency")`` times every candidate back to back with the dense model. This
script reports, per model / structure / target, the fraction the search measured, an
independent re-measurement afterwards (dense and pruned alternated ``--rounds`` times, median
ratio), the MACs kept, the candidates built and the wall-clock of the search.

    python benchmarks/budget.py                      # embedded ViT (bs 64) + deit_small (bs 8)
    python benchmarks/budget.py --models embedded    # embedded only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import timm
import torch
import torch_pruning as tp
from common import load_embedded, write_section

import tp_vit_plugins as tpv


def remeasure(dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, bs: int, rounds: int) -> float:
    """Median over ``rounds`` of pruned / dense latency, the two timed alternately."""
    ratios = []
    for _ in range(rounds):
        d = tpv.utils.measure_latency(dense, x, (bs,), min_run_time=0.2, warmup=1)[bs]
        p = tpv.utils.measure_latency(pruned, x, (bs,), min_run_time=0.2, warmup=1)[bs]
        ratios.append(p / d)
    return statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["embedded", "deit_small_patch16_224"])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6])
    ap.add_argument("--structures", nargs="+", default=["both", "width"])
    ap.add_argument("--rounds", type=int, default=15, help="alternated rounds of the re-measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="CPU thread counts to run at")
    ap.add_argument("--section", default="Latency budgets", help="RESULTS.md section to (re)write")
    args = ap.parse_args()
    rows = []
    for threads, name in [(t, n) for t in args.threads for n in args.models]:
        torch.set_num_threads(threads)
        if name == "embedded":
            model, _, _ = load_embedded()
            x, bs = torch.randn(1, 1, 28, 28), 64
        else:
            torch.manual_seed(0)
            model, x, bs = timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 224, 224), 8
        for structure in args.structures:
            for target in args.targets:
                t0 = time.perf_counter()
                res = tpv.fit_budget(
                    model,
                    x,
                    target,
                    importance=tp.importance.GroupMagnitudeImportance(p=2),
                    structure=structure,
                    metric="latency",
                    latency_batch_size=bs,
                    prune_head_dims=True,
                    progress=True,
                )
                secs = time.perf_counter() - t0
                again = remeasure(model, res.model, x, bs, args.rounds)
                row = (name, threads, bs, structure, target, res.achieved, again, res.macs_kept, res.evaluations, secs)
                rows.append(row)
                print(
                    f"{name} {threads} threads bs{bs} {structure}: target {target:.2f} latency -> achieved {res.achieved:.3f} "
                    f"({100 * res.relative_error:.1f} % off), re-measured {again:.3f} "
                    f"({100 * abs(again - target) / target:.1f} % off), MACs kept {res.macs_kept:.3f}, "
                    f"{res.evaluations} candidates, {secs:.0f} s",
                    flush=True,
                )
    head = (
        "| model | threads | batch | structure | latency target | achieved | off | re-measured | off | MACs kept "
        "| candidates | search s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {n} | {th} | {b} | {s} | {t:.2f} | {a:.3f} | {100 * abs(a - t) / t:.1f} % | {r:.3f} | {100 * abs(r - t) / t:.1f} % "
        f"| {m:.3f} | {e} | {sec:.0f} |"
        for n, th, b, s, t, a, r, m, e, sec in rows
    ]
    write_section(
        args.section,
        f"`python benchmarks/budget.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + " (CPU; tp L2, global heads + width + head dims; deit_small has random weights). *achieved* is "
        "`BudgetResult.achieved`: pruned / dense latency, median of 7 alternated rounds, measured again after "
        f"the search; *re-measured* is the median of {args.rounds} further alternated rounds of 0.2 s.\n\n"
        + head
        + "\n"
        + "\n".join(lines),
    )


if __name__ == "__main__":
    main()
