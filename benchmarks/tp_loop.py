"""GOHSP and VTP inside tp's own loop vs the library's recipe, on a ViT trained on real digits.

    python benchmarks/tp_loop.py [SEEDS] [SPARSE_EPOCHS] [FINETUNE_EPOCHS]

A small timm ViT is trained on scikit-learn's digits (8x8, 1,078 training / 719 test images);
each method then removes 40 % of the parameters (VTP: 40 % of the dims) with equal epochs, driven

* ``tp loop`` — built from model, example, importance and a ratio only, exactly like tp's
  sparse-training pruners: ``regularize`` after every backward, ``update_regularizer()`` after
  every epoch, ``step()``; then fine-tuning;
* ``recipe`` — GOHSP with ``calibrate_fisher`` and ten dual updates over the sparse phase
  (``admm_interval``), VTP with ``sparse_steps``;

next to tp Taylor + fine-tune (all epochs) and the dense model fine-tuned for the same epochs.
Prints accuracy per seed, the mean, the parameters kept and VTP's share of gates exactly 0 at the
end of the sparse phase, and rewrites the "Inside tp's own loop" section of RESULTS.md (a slow
test runs one seed of :func:`run`).
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch
import torch.nn.functional as F
import torch_pruning as tp
from common import write_section
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, TensorDataset

from tp_vit_plugins import utils
from tp_vit_plugins.demo.data import load_split
from tp_vit_plugins.demo.zoo_bench import prune_to_params  # the zoo's global ratio bisected to a parameter budget
from tp_vit_plugins.gohsp import GOHSPPruner, GraphHeadImportance
from tp_vit_plugins.vtp import VTPPruner

#: ``(test accuracy, share of parameters kept, share of gates exactly 0 or None)``.
Row = tuple[float, float, "float | None"]


def _epochs(model, data, n, lr=5e-4, pruner=None, seed=0) -> None:
    x, y = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(n):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if pruner is not None:
                pruner.regularize(model)
            opt.step()
        if pruner is not None:
            pruner.update_regularizer()


@torch.no_grad()
def _accuracy(model, data) -> float:
    model.eval()
    return float((model(data[2]).argmax(-1) == data[3]).float().mean())


def run(seed: int, sparse: int = 3, ft: int = 3) -> dict[str, Row]:
    """One seed of the comparison: ``{method: (accuracy, params kept, zero-gate share)}``."""
    split = load_split("digits", test_fraction=0.4)
    data = (split.x_train, split.y_train, split.x_test, split.y_test)
    torch.manual_seed(seed)
    dense = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=3, num_heads=4)
    _epochs(dense, data, 12, lr=2e-3, seed=seed)
    example, total = data[0][:1], utils.count_params(dense)
    steps = sparse * ((len(data[0]) + 63) // 64)
    calib = DataLoader(TensorDataset(data[0][:256], data[1][:256]), batch_size=32)
    out = {}
    model = copy.deepcopy(dense)
    _epochs(model, data, sparse + ft, seed=seed + 1)
    out["dense + same epochs"] = (_accuracy(model, data), 1.0, None)
    model = copy.deepcopy(dense)
    for images, labels in calib:
        F.cross_entropy(model(images), labels).backward()
    model = prune_to_params(model, example, tp.importance.GroupTaylorImportance(), 0.6 * total)  # heads, dims, MLP
    model.zero_grad(set_to_none=True)
    _epochs(model, data, sparse + ft, seed=seed + 1)
    out["tp Taylor + FT"] = (_accuracy(model, data), utils.count_params(model) / total, None)
    for method in ("GOHSP", "VTP"):
        for mode in ("tp loop", "recipe"):
            model = copy.deepcopy(dense)
            if method == "GOHSP":
                imp = GraphHeadImportance(progress=False).calibrate(model, calib)
                extra = dict(admm_interval=max(1, steps // 10)) if mode == "recipe" else {}
                pruner = GOHSPPruner(model, example, imp, pruning_ratio=0.4, **extra)
                if mode == "recipe":
                    pruner.calibrate_fisher(calib, progress=False)
            else:
                extra = dict(sparse_steps=steps) if mode == "recipe" else {}
                pruner = VTPPruner(model, example, pruning_ratio=0.4, **extra)
            _epochs(model, data, sparse, pruner=pruner, seed=seed + 1)
            zero = pruner.gate_zero_share() if method == "VTP" else None
            pruner.step()
            _epochs(model, data, ft, seed=seed + 2)
            out[f"{method} {mode}"] = (_accuracy(model, data), utils.count_params(model) / total, zero)
    return out


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
