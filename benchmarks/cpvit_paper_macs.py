"""CP-ViT's headline relation, checked without ImageNet: "by progressively pruning 50 % patches, ... over 40 % FLOPs".

    python benchmarks/cpvit_paper_macs.py      # writes the "CP-ViT paper preset: MACs" section of RESULTS.md

For DeiT-S and ViT-B (random weights; MACs do not depend on them) at 224 px: the paper preset's
schedule at ``keep_ratio`` 0.5 (the mean share of patch tokens the blocks see), its MACs
analytically (``cascade_macs``, the plain schedule) and measured by ``FlopCounterMode`` on one
image with the attention-range adjustment calibrated on 2 random batches, with and without
head skipping; the recommended preset at the same ``keep_ratio`` (the share left in the last
block) beside it.
"""

from __future__ import annotations

import sys

import timm
import torch
from common import tpv, write_section

from tp_vit_plugins.cpvit import apply_cascade, cascade_macs, remove_cascade

MODELS = ("deit_small_patch16_224", "vit_base_patch16_224")


def measured(model: torch.nn.Module, x: torch.Tensor, calib: list[torch.Tensor], **options) -> tuple[float, list[int]]:
    """MACs of one image with the cascade on, and the cascade's calibrated counts."""
    cascade = apply_cascade(model, "paper", calib=calib, **options)
    try:
        return tpv.count_macs(model, x), list(cascade.counts)
    finally:
        remove_cascade(model)


def main() -> str:
    torch.manual_seed(0)
    rows = []
    for name in MODELS:
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, 3, 224, 224)
        calib = [torch.randn(4, 3, 224, 224) for _ in range(2)]
        dense = tpv.count_macs(model, x)
        analytic = cascade_macs(model, (3, 224, 224), "paper", keep_ratio=0.5) / cascade_macs(
            model, (3, 224, 224), keep_ratio=1.0
        )
        with_heads, counts = measured(model, x, calib, keep_ratio=0.5)
        no_heads, _ = measured(model, x, calib, keep_ratio=0.5, head_keep_ratio=1.0)
        recommended = cascade_macs(model, (3, 224, 224), keep_ratio=0.5) / cascade_macs(model, (3, 224, 224), keep_ratio=1.0)
        mean_keep = sum(counts) / (len(counts) * counts[0])
        rows.append(
            f"| {name} | {mean_keep:.3f} | {counts} | {1 - analytic:.3f} | {1 - with_heads / dense:.3f} "
            f"| {1 - no_heads / dense:.3f} | {1 - recommended:.3f} |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            'The abstract\'s relation, "by progressively pruning 50 % patches, CP-ViT reduces over 40 % FLOPs", '
            "for the paper preset at `keep_ratio=0.5` (read as the mean share of patch tokens the blocks see; a cascade "
            "in which every block keeps the same share of the tokens it receives, from block 0), random weights, 224 px, "
            "one image. Measured: `FlopCounterMode` with the attention-range adjustment calibrated on 2 random batches. "
            "The recommended preset's `keep_ratio=0.5` is the share left in the last block. "
            "`python benchmarks/cpvit_paper_macs.py` rewrites this section.",
            "",
            "| model | mean patch share kept (calibrated) | patch tokens per block (calibrated) | MACs cut, analytic "
            "| MACs cut, measured (heads skipped) | MACs cut, measured (no head skipping) | recommended preset, MACs cut |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section("CP-ViT paper preset: MACs", body)
    return body


if __name__ == "__main__":
    main()
    sys.exit(0)
