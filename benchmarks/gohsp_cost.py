"""Cost of GOHSP's head ranking vs a tp Taylor gradient pass on the same batches.

    python benchmarks/gohsp_cost.py [--rounds 3] [--threads 2]

For each model (random weights are fine for timing), the flow-graph calibration
(``GraphHeadImportance().calibrate``) and tp's Taylor pass (``accumulate_gradients``: a forward
and backward over the same batches, what ``tp.importance.GroupTaylorImportance`` needs) are
timed alternately, ``--rounds`` times each; the script prints the median seconds and their
ratio. The goal is a ratio <= 1.5. The ADMM stage's Fisher calibration
(``GOHSPPruner.calibrate_fisher`` on the same batches: one more gradient pass, plus the Z-step
projection) is timed in the same rotation and reported beside it, with the ratio of both
calibrations together to the Taylor pass.
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch
from common import timed

import tp_vit_plugins as tpv
from tp_vit_plugins.core.calibration import accumulate_gradients

#: (label, timm name, kwargs, image size, batch size, batches)
MODELS = (
    ("zoo-sized ViT (6 blocks, 4 heads, 64 tokens)", "vit_tiny_patch16_224",
     dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=4, num_classes=10), 32, 64, 4),
    ("deit_small (random weights)", "deit_small_patch16_224", dict(num_classes=10), 224, 16, 2),
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| model | flow calibration (s) | Taylor pass (s) | ratio | Fisher calibration (s) | flow + Fisher ratio |\n"
        "|---|---|---|---|---|---|"
    )
    for label, name, kw, size, bs, n in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kw).eval()
        batches = [(torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))) for _ in range(n)]
        pruner = tpv.GOHSPPruner(model, batches[0][0][:1], None, pruning_ratio=0.4)
        flow, taylor, fisher = [], [], []
        for _ in range(args.rounds):  # alternated, so machine drift hits all alike
            flow.append(timed(lambda: tpv.GraphHeadImportance(progress=False).calibrate(model, batches))[1])
            taylor.append(timed(lambda: accumulate_gradients(model, batches, progress=False))[1])
            model.zero_grad(set_to_none=True)
            fisher.append(timed(lambda: pruner.calibrate_fisher(batches, progress=False))[1])
        f, t, g = statistics.median(flow), statistics.median(taylor), statistics.median(fisher)
        print(f"| {label} | {f:.3f} | {t:.3f} | {f / t:.2f} | {g:.3f} | {(f + g) / t:.2f} |")


if __name__ == "__main__":
    main()
