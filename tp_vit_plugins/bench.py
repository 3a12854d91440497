"""``tp-vit bench``: every method side by side at the same MACs budgets.

For every seed one calibration subset is drawn and shared by all methods; for every MACs
target (fraction of the dense MACs to keep) each method is fitted to the target with
:func:`~tp_vit_plugins.budget.fit_budget` (structure) or a bisection on the keep ratio
(tokens), fine-tuned for the same number of epochs, and measured: achieved MACs, params,
accuracy right after pruning and after fine-tuning, CPU latency, speed-up and speed-up ÷
MACs ratio. Methods:

* ``random``, ``l2``, ``taylor`` — tp's criteria through :class:`~tp_vit_plugins.ViTPruner`
  (global heads + width + head dims);
* ``gohsp`` — heads ranked by :class:`~tp_vit_plugins.GraphHeadImportance` (normalised per
  block), widths and dims inside heads by L2 (the one-shot graph ranking; the ADMM stage is
  benchmarked in ``benchmarks/gohsp.py``);
* ``vtp`` — gated L1 sparse training for half of the epoch budget (at least one epoch: untrained
  gates are all 1 and rank nothing), |gate| ranking, the rest fine-tuning;
* ``cpvit`` — the CP-ViT cascade (``beta = 0``: exact MACs), fine-tuned with it active;
* ``gohsp+cpvit`` — half of the MACs cut (in log scale) from GOHSP structure, the rest from
  the cascade.

Outputs in ``out_dir``: ``RESULTS.md``, ``results.json``, ``accuracy_vs_macs.png`` and
``structure.png`` (the PNGs need the optional ``matplotlib``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .budget import clone_with_grads, fit_budget, fit_keep_ratio, vit_prune_fn
from .calibration import accumulate_gradients
from .finetune import finetune
from .metrics import count_macs, count_params, measure_latency
from .pruners import VTPPruner
from .train import evaluate

_FIT = dict(tolerance=0.015, max_evaluations=12)  # within the 2 % the comparison promises

__all__ = ["BENCH_METHODS", "BenchRow", "run_bench"]

#: Methods ``tp-vit bench`` knows.
BENCH_METHODS = ("random", "l2", "taylor", "gohsp", "vtp", "cpvit", "gohsp+cpvit")


@dataclass
class BenchRow:
    """One (method, target, seed) measurement."""

    method: str
    target: float
    seed: int
    macs_kept: float
    params: int
    oneshot_acc: float
    final_acc: float
    latency: dict
    speedup: dict
    heads: list
    mlp: list


def _blocks(model: nn.Module) -> tuple[list[int], list[int]]:
    return [int(b.attn.num_heads) for b in model.blocks], [int(b.mlp.fc1.out_features) for b in model.blocks]


def _structure_fn(importance: tp.importance.Importance, source: nn.Module):
    """Global heads + width + head dims at one scalar ratio, as :func:`fit_budget` expects."""
    return vit_prune_fn(importance, source, lambda r: r, lambda r: r, prune_head_dims=True)


def run_bench(
    model: nn.Module,
    train_set: Dataset,
    test_loader: DataLoader,
    example: torch.Tensor,
    targets: Sequence[float] = (0.8, 0.6),
    methods: Sequence[str] = BENCH_METHODS,
    seeds: Sequence[int] = (0, 1),
    finetune_epochs: int = 1,
    calib_batches: int = 8,
    batch_size: int = 64,
    lr: float = 5e-4,
    latency_batch_sizes: Sequence[int] = (1, 64),
    out_dir: str = "bench_out",
    progress: bool = True,
) -> list[BenchRow]:
    """Run the comparison and write ``RESULTS.md``, ``results.json`` and the plots.

    Args:
        model: Dense timm ViT (left untouched).
        train_set: Training set (calibration subsets and fine-tuning).
        test_loader: Evaluation loader.
        example: One input ``[1, C, H, W]`` (MACs and latency).
        targets: Fractions of the dense MACs to keep.
        methods: Subset of :data:`BENCH_METHODS`.
        seeds: Seeds (calibration subset, fine-tuning order).
        finetune_epochs: Training epochs per method (VTP spends half on sparse training).
        calib_batches: Calibration batches of ``batch_size`` images.
        batch_size: Training / calibration batch size.
        lr: Fine-tuning learning rate.
        latency_batch_sizes: Batch sizes for latency.
        out_dir: Output directory.
        progress: tqdm bars.

    Returns:
        All rows.

    Raises:
        ValueError: Unknown method or a target outside ``(0, 1]``.
    """
    from .importance import GraphHeadImportance, tp_importance
    from .tokens import apply_cascade, remove_cascade

    bad = set(methods) - set(BENCH_METHODS)
    if bad:
        raise ValueError(f"unknown methods {sorted(bad)}; choose from {BENCH_METHODS}")
    if any(not 0.0 < t <= 1.0 for t in targets):
        raise ValueError(f"targets must lie in (0, 1], got {list(targets)}")
    os.makedirs(out_dir, exist_ok=True)
    model = model.eval()
    dense_macs, dense_params = count_macs(model, example), count_params(model)
    dense_lat = measure_latency(model, example, latency_batch_sizes) if latency_batch_sizes else {}
    dense_acc = evaluate(model, test_loader, progress=False)
    input_size = tuple(example.shape[1:])
    rows: list[BenchRow] = []
    runs = [(s, t, m) for s in seeds for t in targets for m in methods]
    for seed, target, method in tqdm(runs, desc="bench", disable=not progress):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        idx = torch.randperm(len(train_set), generator=g)[: calib_batches * batch_size].tolist()
        calib = DataLoader(Subset(train_set, idx), batch_size=batch_size)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        epochs = finetune_epochs
        base = clone_with_grads(model)
        if method in ("random", "l2", "taylor"):
            if method == "taylor":
                accumulate_gradients(base, calib, progress=False)
            pruned = fit_budget(base, example, target, prune_fn=_structure_fn(tp_importance(method), base), **_FIT).model
        elif method in ("gohsp", "gohsp+cpvit"):
            # heads ranked across blocks: the default per-block normalisation removes the chain graph's
            # boundary bias (blocks 0 and L-1 have one neighbouring block, so less PageRank)
            imp = GraphHeadImportance(progress=False, base_importance=tp_importance("l2")).calibrate(base, calib)
            struct_target = target if method == "gohsp" else math.sqrt(target)
            pruned = fit_budget(base, example, struct_target, prune_fn=_structure_fn(imp, base), **_FIT).model
        elif method == "vtp":
            sparse = max(1, finetune_epochs // 2)  # gates need >= 1 epoch; total epochs stay equal when >= 1
            vtp = VTPPruner(base, example, pruning_ratio=0.0)
            finetune(base, train_loader, epochs=sparse, lr=lr, seed=seed, step_hook=vtp.regularize, progress=False)
            vtp.fold_gates()
            pruned = fit_budget(base, example, target, prune_fn=_structure_fn(vtp.importance, base), **_FIT).model
            epochs = max(0, finetune_epochs - sparse)
        else:  # cpvit
            pruned = base
        pruned.zero_grad(set_to_none=True)
        if method.endswith("cpvit"):
            keep = fit_keep_ratio(pruned, input_size, min(1.0, target * dense_macs / count_macs(pruned, example)))
            apply_cascade(pruned, keep_ratio=keep, beta=0.0)
        oneshot = evaluate(pruned, test_loader, progress=False)
        if epochs:
            finetune(pruned, train_loader, epochs=epochs, lr=lr, seed=seed, progress=False)
        pruned.eval()
        final = evaluate(pruned, test_loader, progress=False)
        macs = count_macs(pruned, example)
        lat = measure_latency(pruned, example, latency_batch_sizes) if latency_batch_sizes else {}
        heads, mlp = _blocks(pruned)
        if method.endswith("cpvit"):
            remove_cascade(pruned)
        rows.append(
            BenchRow(
                method,
                target,
                seed,
                macs / dense_macs,
                count_params(pruned),
                oneshot,
                final,
                lat,
                {b: dense_lat[b] / lat[b] for b in lat},
                heads,
                mlp,
            )
        )
    _write(rows, out_dir, dense_acc, dense_macs, dense_params, dense_lat)
    return rows


def _ms(values: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _write(rows: list[BenchRow], out_dir: str, dense_acc: float, dense_macs: int, dense_params: int, dense_lat: dict) -> None:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(
            {
                "dense": {"accuracy": dense_acc, "macs": dense_macs, "params": dense_params, "latency": dense_lat},
                "rows": [asdict(r) for r in rows],
            },
            f,
            indent=1,
        )
    bss = sorted(dense_lat)
    head = ["method", "target", "achieved MACs", "params", "one-shot acc %", "fine-tuned acc %"]
    head += [f"ms @bs{b}" for b in bss] + [f"speed-up @bs{b}" for b in bss] + [f"speed-up ÷ MACs ratio @bs{b}" for b in bss]
    lines = [
        f"Dense: accuracy {100 * dense_acc:.2f} %, {dense_macs / 1e6:.2f} M MACs, {dense_params / 1e3:.1f} K params"
        + "".join(f", {1e3 * dense_lat[b]:.2f} ms @bs{b}" for b in bss)
        + ". Mean ± std over seeds.\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    groups: dict[tuple[str, float], list[BenchRow]] = {}
    for r in rows:
        groups.setdefault((r.method, r.target), []).append(r)
    for (method, target), rs in groups.items():
        cells = [
            method,
            f"{target:.2f}",
            _ms([r.macs_kept for r in rs]),
            _ms([r.params for r in rs], 1e-3, "{:.1f}") + " K",
            _ms([r.oneshot_acc for r in rs], 100),
            _ms([r.final_acc for r in rs], 100),
        ]
        cells += [_ms([r.latency[b] for r in rs], 1e3) for b in bss]
        cells += [_ms([r.speedup[b] for r in rs]) for b in bss]
        cells += [_ms([r.speedup[b] * r.macs_kept for r in rs]) for b in bss]
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write("# tp-vit bench\n\n" + "\n".join(lines) + "\n")
    _plots(rows, groups, out_dir, dense_acc)


def _plots(rows: list[BenchRow], groups: dict, out_dir: str, dense_acc: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional extra
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r.method for r in rows):
        pts = sorted(
            (statistics.mean(r.macs_kept for r in rs), statistics.mean(r.final_acc for r in rs))
            for (m, _), rs in groups.items()
            if m == method
        )
        ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=method)
    ax.axhline(100 * dense_acc, color="gray", ls="--", label="dense")
    ax.set(xlabel="MACs kept (% of dense)", ylabel="test accuracy after fine-tune (%)", title="accuracy vs MACs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy_vs_macs.png"), dpi=120)
    plt.close(fig)
    target = min(r.target for r in rows)
    chosen = {r.method: r for r in rows if r.target == target and r.seed == rows[0].seed}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, r in chosen.items():
        axes[0].plot(range(len(r.heads)), r.heads, "o-", label=method)
        axes[1].plot(range(len(r.mlp)), r.mlp, "o-", label=method)
    axes[0].set(xlabel="block", ylabel="heads kept", title=f"heads per block (target {target:.2f})")
    axes[1].set(xlabel="block", ylabel="MLP neurons kept", title="MLP neurons per block")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "structure.png"), dpi=120)
    plt.close(fig)
