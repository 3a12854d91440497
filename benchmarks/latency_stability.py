"""How stable is a pruned / dense latency ratio on this machine? (context for latency budgets)

Times the embedded dense ViT and one pruned copy (tp L2, ratio 0.3 on heads + width + head
dims) alternately for ``--estimates`` estimates of 7 rounds each (the protocol
``fit_budget(metric="latency")`` uses), at each thread count, and prints the per-estimate
median latencies and ratio plus their spread.

    python benchmarks/latency_stability.py --threads 2 1
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch_pruning as tp
from common import load_embedded

import tp_vit_plugins as tpv
from tp_vit_plugins.budget import clone_with_grads, vit_prune_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--estimates", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    model, _, _ = load_embedded()
    x, bs = torch.randn(1, 1, 28, 28), args.batch_size
    pruned = clone_with_grads(model)
    prune = vit_prune_fn(tp.importance.GroupMagnitudeImportance(p=2), pruned, lambda r: r, lambda r: r, prune_head_dims=True)
    prune(pruned, x, 0.3)
    print(f"pruned copy keeps {tpv.count_macs(pruned, x) / tpv.count_macs(model, x):.3f} of the MACs")
    for threads in args.threads:
        torch.set_num_threads(threads)
        ratios = []
        for k in range(args.estimates):
            d, p = [], []
            for _ in range(7):
                p.append(tpv.utils.measure_latency(pruned, x, (bs,), min_run_time=0.1, warmup=1)[bs])
                d.append(tpv.utils.measure_latency(model, x, (bs,), min_run_time=0.1, warmup=1)[bs])
            ratios.append(statistics.median(a / b for a, b in zip(p, d)))
            print(
                f"{threads} threads, estimate {k}: dense {1e3 * statistics.median(d):.1f} ms, "
                f"pruned {1e3 * statistics.median(p):.1f} ms, ratio {ratios[-1]:.3f}",
                flush=True,
            )
        print(
            f"{threads} threads: ratio {statistics.mean(ratios):.3f} ± {statistics.stdev(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.estimates} estimates"
        )


if __name__ == "__main__":
    main()
