"""``tp-vit bench``: every method side by side at the same MACs budgets.

For every seed one calibration subset is drawn and shared by all methods; for every MACs
target (fraction of the dense MACs to keep) each method is fitted to the target with
:func:`~tp_vit_plugins.budget.fit_budget` (structure) or a bisection on the keep ratio
(tokens), fine-tuned for the same number of epochs, and measured: achieved MACs, params,
accuracy right after pruning and after fine-tuning, CPU latency, speed-up and speed-up ÷
MACs ratio. Every method is a recipe of :mod:`.methods` (the same table ``tp-vit prune`` uses):

* ``random``, ``l2``, ``taylor`` — tp's criteria through :class:`~tp_vit_plugins.ViTPruner`
  (global heads + width + head dims);
* ``gohsp`` — heads ranked by :class:`~tp_vit_plugins.GraphHeadImportance` (normalised per
  block), widths and dims inside heads by L2 (the one-shot graph ranking; the ADMM stage is
  in the zoo's pipeline protocol);
* ``vtp`` — gated proximal-L1 sparse training for half of the epoch budget (at least one
  epoch: untrained gates are all 1 and rank nothing), |gate| ranking, the rest fine-tuning;
  the share of gates at exactly 0 is a column and ``vtp_gates_<target>_s<seed>.png`` a histogram;
* ``cpvit`` — the CP-ViT cascade (``beta = 0``: exact MACs), fine-tuned with it active;
* ``gohsp+cpvit`` / ``vtp+cpvit`` — half of the MACs cut (in log scale) from GOHSP / VTP
  structure, the rest from the cascade (fine-tuned with it active);
* ``dense+E`` — the control: the dense model trained for the same epochs, no pruning.

**Equal epochs.** Every method gets ``finetune_epochs`` epochs in total; a sparse phase
(VTP) is part of them, so its "acc at prune" column is measured after those sparse epochs
(the columns ``sparse ep`` / ``fine-tune ep`` say how the budget was spent). Latency: every
pruned model is timed alternately with the dense one in the same run
(:func:`~tp_vit_plugins.core.metrics.alternated_speedup`), so speed-ups are not skewed by
machine drift since a one-off dense timing.

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
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..budget import clone_with_grads, fit_budget, vit_prune_fn
from ..core.metrics import alternated_speedup, count_macs, count_params, measure_latency
from ..core.training import evaluate, finetune
from ..cpvit import remove_cascade
from .common import Structure, load_options_workload, phase, show_bars, usage_error
from .data import calibration_loader
from .methods import MethodSettings, get_method, run_recipe
from .names import BENCH_METHODS
from .options import BenchOptions

_FIT = dict(tolerance=0.015, max_evaluations=12)  # within the 2 % the comparison promises

__all__ = ["BENCH_METHODS", "BenchRow", "run_bench", "cmd_bench", "DENSE_CONTROL"]

#: The control row: the dense model trained for the same epochs as every method.
DENSE_CONTROL = "dense+E"


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
    sparse_epochs: int = 0
    finetune_epochs: int = 0
    gate_zero_share: float | None = None


@dataclass
class _Setup:
    """What every run of one bench shares."""

    model: nn.Module
    train_set: Dataset
    test_loader: DataLoader
    example: torch.Tensor
    finetune_epochs: int
    calib_batches: int
    batch_size: int
    lr: float
    latency_batch_sizes: Sequence[int]
    dense_macs: int = 0
    out_dir: str | None = None


def _bench_one(setup: _Setup, name: str, target: float, seed: int) -> BenchRow:
    """Prune a copy of the dense model with recipe ``name`` to ``target`` of its MACs, train, measure."""
    torch.manual_seed(seed)
    calib = calibration_loader(setup.train_set, setup.calib_batches, setup.batch_size, seed)
    train_loader = DataLoader(
        setup.train_set, batch_size=setup.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    base, epochs, sparse, zero_share = clone_with_grads(setup.model), setup.finetune_epochs, 0, None
    one_schedule = False  # one learning-rate schedule over sparse phase and fine-tune (recipe.one_schedule)
    pruned = base
    if name == DENSE_CONTROL:
        recipe = None
    else:
        recipe = get_method(name)
        settings = MethodSettings(head_pruning_ratio=0.0, pruning_ratio=0.0, calib_batches=setup.calib_batches, progress=False)
    if recipe is not None and recipe.prunes_structure:

        def train(n: int, one: bool, step_hook, epoch_hook) -> None:  # the sparse phase counts against the epochs
            span = (0, setup.finetune_epochs) if one else None
            finetune(base, train_loader, epochs=n, lr=setup.lr, seed=seed, schedule_span=span, progress=False,
                     step_hook=step_hook, epoch_hook=epoch_hook)  # fmt: skip

        sparse = recipe.sparse_epochs(settings, 0, budget=setup.finetune_epochs)
        plot = os.path.join(setup.out_dir, f"vtp_gates_{target:.2f}_s{seed}.png") if setup.out_dir else None
        run = run_recipe(recipe, base, setup.example, calib, train_loader, settings, sparse, train, plot)
        one_schedule, epochs = run.one_schedule, max(0, epochs - sparse)
        zero_share = run.stats.get("gate_zero_share")
        # half of the MACs cut (in log scale) from structure when tokens take the other half
        struct_target = math.sqrt(target) if recipe.drops_tokens else target
        prune_fn = vit_prune_fn(run.pruner.importance, base, lambda r: r, lambda r: r, prune_head_dims=True)
        pruned = fit_budget(base, setup.example, struct_target, prune_fn=prune_fn, **_FIT).model
    pruned.zero_grad(set_to_none=True)
    cascade = False
    if recipe is not None and recipe.drops_tokens:
        rest = target * setup.dense_macs / count_macs(pruned, setup.example)
        # VTP's dead dims can take the structure past its share: then there is nothing left for tokens
        # to cut, and a cascade dropping nothing would only add its overhead
        cascade = rest < 1.0
        if cascade:
            recipe.attach_tokens(pruned, tuple(setup.example.shape[1:]), settings, rest)
    at_prune = evaluate(pruned, setup.test_loader, progress=False)
    if epochs:
        span = (sparse, sparse + epochs) if one_schedule else None
        finetune(pruned, train_loader, epochs=epochs, lr=setup.lr, seed=seed, schedule_span=span, progress=False)
    pruned.eval()
    final = evaluate(pruned, setup.test_loader, progress=False)
    macs = count_macs(pruned, setup.example)
    timing = (
        alternated_speedup(setup.model, pruned, setup.example, setup.latency_batch_sizes) if setup.latency_batch_sizes else {}
    )
    kept = Structure.of(pruned)
    if cascade:
        remove_cascade(pruned)
    return BenchRow(
        name, target, seed, macs / setup.dense_macs, count_params(pruned), at_prune, final,
        {b: t[1] for b, t in timing.items()}, {b: t[2] for b, t in timing.items()}, kept.heads, kept.mlp,
        sparse, epochs, zero_share,
    )  # fmt: skip


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
    bad = set(methods) - set(BENCH_METHODS)
    if bad:
        raise ValueError(f"unknown methods {sorted(bad)}; choose from {BENCH_METHODS}")
    if any(not 0.0 < t <= 1.0 for t in targets):
        raise ValueError(f"targets must lie in (0, 1], got {list(targets)}")
    os.makedirs(out_dir, exist_ok=True)
    model = model.eval()
    setup = _Setup(model, train_set, test_loader, example, finetune_epochs, calib_batches, batch_size, lr, latency_batch_sizes)
    setup.dense_macs = count_macs(model, example)
    setup.out_dir = out_dir
    dense_latency = measure_latency(model, example, latency_batch_sizes) if latency_batch_sizes else {}
    dense_acc = evaluate(model, test_loader, progress=False)
    runs = [(s, 1.0, DENSE_CONTROL) for s in seeds] + [(s, t, m) for s in seeds for t in targets for m in methods]
    rows = [_bench_one(setup, m, t, s) for s, t, m in tqdm(runs, desc="bench", disable=not progress)]
    _write(rows, out_dir, dense_acc, setup.dense_macs, count_params(model), dense_latency)
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
    head = ["method", "target", "achieved MACs", "params", "sparse ep", "fine-tune ep", "acc at prune %", "final acc %"]
    head += [f"ms @bs{b}" for b in bss] + [f"speed-up @bs{b}" for b in bss] + [f"speed-up ÷ MACs ratio @bs{b}" for b in bss]
    head.append("VTP gates = 0 %")
    lines = [
        f"Dense: accuracy {100 * dense_acc:.2f} %, {dense_macs / 1e6:.2f} M MACs, {dense_params / 1e3:.1f} K params"
        + "".join(f", {1e3 * dense_lat[b]:.2f} ms @bs{b}" for b in bss)
        + ". Mean ± std over seeds. Every method trains for the same total epochs (sparse + fine-tune); "
        "speed-ups time each model alternately with the dense one.\n",
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
            str(rs[0].sparse_epochs),
            str(rs[0].finetune_epochs),
            _ms([r.oneshot_acc for r in rs], 100),
            _ms([r.final_acc for r in rs], 100),
        ]
        cells += [_ms([r.latency[b] for r in rs], 1e3) for b in bss]
        cells += [_ms([r.speedup[b] for r in rs]) for b in bss]
        cells += [_ms([r.speedup[b] * r.macs_kept for r in rs]) for b in bss]
        zeros = [r.gate_zero_share for r in rs if r.gate_zero_share is not None]
        cells.append(_ms(zeros, 100, "{:.1f}") if zeros else "")
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


def cmd_bench(opts: BenchOptions) -> int:
    """Run ``tp-vit bench`` for validated options and print its table."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.zoo:
        return _cmd_zoo(opts)
    w = load_options_workload(opts)
    if w.train_set is None:
        usage_error("tp-vit bench --model needs --data-path (accuracy is part of the comparison)")
    run_bench(
        w.model,
        w.train_set,
        w.test_loader,
        w.example,
        targets=opts.macs_keep_ratios,
        methods=list(opts.methods),
        seeds=list(range(opts.seeds or 2)),
        finetune_epochs=opts.finetune_epochs,
        calib_batches=opts.calib_batches,
        lr=opts.lr,
        latency_batch_sizes=opts.latency_batch_sizes,
        out_dir=opts.out,
        progress=show_bars(opts),
    )
    with open(os.path.join(opts.out, "RESULTS.md")) as f:
        print(f.read())
    print(f"wrote {opts.out}/RESULTS.md, {opts.out}/results.json and the plots (with matplotlib installed)")
    return 0


def _cmd_zoo(opts: BenchOptions) -> int:
    from .zoo_bench import ZooSettings, run_zoo  # the zoo protocols load only when asked for

    if opts.quick:
        settings = ZooSettings.quick(opts.protocols)
    else:
        settings = ZooSettings(seeds=opts.seeds or 3, epochs=opts.zoo_epochs, protocols=opts.protocols)
    if opts.pipeline_methods:
        settings.pipeline_methods = opts.pipeline_methods
    if opts.token_methods:
        settings.token_methods = opts.token_methods
    log = None if opts.quiet else (lambda line: phase(opts, line))
    run_zoo(
        opts.out, settings, quick=opts.quick, progress=show_bars(opts), command=opts.command_line or "tp-vit bench --zoo", log=log
    )
    with open(os.path.join(opts.out, "ZOO.md")) as f:
        print(f.read())
    print(f"wrote {opts.out}/ZOO.md, {opts.out}/zoo.json and {opts.out}/zoo_ranks.png (with matplotlib installed)")
    return 0
