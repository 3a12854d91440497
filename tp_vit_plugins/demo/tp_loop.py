"""GOHSP and VTP inside tp's own loop vs the library's recipe, on a ViT trained on real digits.

What ``python benchmarks/tp_loop.py`` prints and a slow test asserts: a small timm ViT is
trained on scikit-learn's digits (8x8, 1,078 training / 719 test images); each method then
removes 40 % of the parameters (VTP: 40 % of the dims) with equal epochs, driven

* ``tp loop`` — built from model, example, importance and a ratio only, exactly like tp's
  sparse-training pruners: ``regularize`` after every backward, ``update_regularizer()`` after
  every epoch, ``step()``; then fine-tuning;
* ``recipe`` — GOHSP with ``calibrate_fisher`` and ten dual updates over the sparse phase
  (``admm_interval``), VTP with ``sparse_steps``;

next to tp Taylor + fine-tune (all epochs) and the dense model fine-tuned for the same epochs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torch_pruning as tp
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, TensorDataset

from .. import utils
from ..gohsp import GOHSPPruner, GraphHeadImportance
from ..vtp import VTPPruner
from .data import load_split
from .zoo_bench import _prune_to_params  # the zoo's global ratio bisected to a parameter budget

__all__ = ["run", "Row"]

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
    model = _prune_to_params(model, example, tp.importance.GroupTaylorImportance(), 0.6 * total)  # heads, dims, MLP
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
