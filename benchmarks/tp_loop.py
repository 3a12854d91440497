"""GOHSP and VTP inside tp's own loop vs the library's recipe, on a ViT trained on real digits.

    python benchmarks/tp_loop.py [SEEDS] [SPARSE_EPOCHS] [FINETUNE_EPOCHS]

See :mod:`tp_vit_plugins.demo.tp_loop` for the protocol. Prints accuracy per seed, the mean,
the parameters kept and VTP's share of gates exactly 0 at the end of the sparse phase, and
rewrites the "Inside tp's own loop" section of RESULTS.md.
"""

from __future__ import annotations

import sys
import warnings

import torch
from common import write_section

from tp_vit_plugins.demo.tp_loop import run

warnings.filterwarnings("ignore")

INTRO = """GOHSP and VTP built from what tp's pruners take (model, example, importance, a ratio) and driven
exactly like tp's sparse-training pruners — `regularize` after every backward,
`update_regularizer()` after every epoch, `step()` — against the library's recipe (GOHSP:
`calibrate_fisher` and ten dual updates over the sparse phase; VTP: `sparse_steps`), on a small
ViT trained on scikit-learn's digits, 40 % of the parameters removed (VTP: 40 % of the dims),
then fine-tuned; tp's Taylor pruning with the same fine-tune and the dense model trained for the
same epochs as references."""

if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    seeds, sparse, ft = (args + [3, 3, 3][len(args) :])[:3]
    torch.set_num_threads(1)
    rows: dict[str, list] = {}
    for seed in range(seeds):
        for name, value in run(seed, sparse, ft).items():
            rows.setdefault(name, []).append(value)
    lines = [f"digits ViT, {sparse} sparse + {ft} fine-tune epochs, seeds 0..{seeds - 1}", ""]
    lines.append("| method | " + " | ".join(f"seed {s}" for s in range(seeds)) + " | mean | params kept | gates exactly 0 |")
    lines.append("|---|" + "---|" * (seeds + 3))
    for name, vals in rows.items():
        accs = [100 * a for a, _, _ in vals]
        zeros = [z for _, _, z in vals if z is not None]
        zero = f"{100 * sum(zeros) / len(zeros):.1f} %" if zeros else "–"
        kept = sum(k for _, k, _ in vals) / len(vals)
        cells = " | ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| {name} | {cells} | {sum(accs) / len(accs):.2f} | {kept:.3f} | {zero} |")
    print("\n".join(lines))
    command = "python benchmarks/tp_loop.py " + " ".join(str(a) for a in (seeds, sparse, ft))
    write_section("Inside tp's own loop", INTRO + f"\n\nCommand: `{command}`\n\n" + "\n".join(lines))
