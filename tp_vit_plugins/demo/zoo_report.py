"""The zoo's records and reports: paired bootstrap intervals, ``ZOO.md`` tables, ``zoo.json``, the rank heat map.

:mod:`.zoo_bench` measures (one :class:`Record` per model, method, setting and seed, with every
test image's outcome); this module summarises: mean ranks, each library method against the
best peer with 95 % paired bootstrap intervals over test images and seeds, flags where a
library default falls below the random reference.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "Record",
    "summarize",
    "render",
    "write_outputs",
    "by_method",
    "paired_diff",
    "format_interval",
    "paired_bootstrap",
    "SEED_METHODS",
    "RANDOM_PEER",
]

#: The library's own methods per protocol (the rest of each protocol are peers).
SEED_METHODS = {"heads": ("gohsp", "cpvit"), "pipeline": ("gohsp", "vtp"), "tokens": ("cpvit",), "latency": ()}


#: The random reference a seed method must beat on every model.
RANDOM_PEER = {"heads": "random", "tokens": "cpvit-random"}


@dataclass
class Record:
    """One measurement: ``correct`` holds the per-test-image outcome (for paired bootstraps)."""

    protocol: str
    setting: str
    model: str
    method: str
    seed: int
    accuracy: float
    kept: float  # params kept (pipeline), MACs kept (tokens), heads kept (heads), speed-up / MACs ratio (latency)
    correct: list[bool] = field(default_factory=list, repr=False)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- statistics
def paired_bootstrap(diffs: list[torch.Tensor], boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean over models of the mean paired difference, with a 95 % percentile bootstrap interval.

    Args:
        diffs: One ``[seeds, images]`` tensor of per-image differences (method - peer) per model.
        boot: Bootstrap replicates; images and seeds are resampled within each model.

    Returns:
        ``(mean, low, high)`` in accuracy units.
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(boot, dtype=torch.float64)
    for d in diffs:
        d = d.double()
        S, N = d.shape
        si = torch.randint(S, (boot, S), generator=g)
        ni = torch.randint(N, (boot, N), generator=g)
        rep = torch.stack([d[si[b]][:, ni[b]].mean() for b in range(boot)])
        means += rep / len(diffs)
    point = sum(float(d.double().mean()) for d in diffs) / len(diffs)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return point, low, high


def by_method(rows: list[Record]) -> dict:
    """``{(protocol, setting): {method: {model: [records over seeds]}}}``."""
    out: dict = {}
    for r in rows:
        out.setdefault((r.protocol, r.setting), {}).setdefault(r.method, {}).setdefault(r.model, []).append(r)
    return out


def _is_seed(protocol: str, method: str) -> bool:
    """A library method or one of its variants (``vtp-s2``, ``gohsp@tp``), not a random reference (``cpvit-random``)."""
    if "random" in method:
        return False
    return any(method == s or method.startswith((s + "-", s + "@")) for s in SEED_METHODS[protocol])


def summarize(rows: list[Record], boot: int) -> dict:
    """Per (protocol, setting): accuracy table, mean ranks, seed-vs-best-peer intervals and flags."""
    summary = {}
    for (protocol, setting), methods in by_method(rows).items():
        if protocol == "latency":
            summary[f"{protocol} | {setting}"] = {
                m: {model: statistics.mean(r.kept for r in rs) for model, rs in per.items()} for m, per in methods.items()
            }
            continue
        models = sorted({model for per in methods.values() for model in per})
        acc = {m: {model: statistics.mean(r.accuracy for r in rs) for model, rs in per.items()} for m, per in methods.items()}
        complete = [m for m in methods if len(methods[m]) == len(models)]  # ranked; others compared where measured
        ranks = {m: 0.0 for m in complete}
        for model in models:
            order = sorted(complete, key=lambda m: -acc[m][model])
            for i, m in enumerate(order):
                ranks[m] += (i + 1) / len(models)
        seeds_methods = [m for m in methods if _is_seed(protocol, m)]  # the library's methods and their variants
        peers = [m for m in complete if m not in seeds_methods and m != "dense+E"]
        best = max(peers, key=lambda m: statistics.mean(acc[m].values())) if peers else None
        versus = {}
        for m in seeds_methods:
            if best is None:
                continue
            shared = [model for model in models if model in methods[m]]
            diffs = [paired_diff(methods[m][model], methods[best][model]) for model in shared]
            point, low, high = paired_bootstrap(diffs, boot)
            per_model = {model: paired_bootstrap([d], boot) for model, d in zip(shared, diffs)}
            versus[m] = {"peer": best, "zoo_mean": (point, low, high), "per_model": per_model}
        flags = []
        for m in seeds_methods:
            rnd = RANDOM_PEER.get(protocol)
            if protocol == "tokens" and f"{m}-random" in methods:
                rnd = f"{m}-random"  # the random scorer with the same schedule and fold
            elif protocol == "tokens" and "-s0" in m:
                rnd = "cpvit-s0-random"  # the random scorer on the same schedule
            if rnd in methods:
                below = [model for model in models if model in acc[m] and model in acc[rnd] and acc[m][model] < acc[rnd][model]]
                if below:  # each with its paired interval: a tie within noise reads differently from a deficit
                    where = [
                        f"{x} {format_interval(paired_bootstrap([paired_diff(methods[m][x], methods[rnd][x])], boot))}"
                        for x in below
                    ]
                    flags.append(f"{m} is below {rnd} on {', '.join(where)}")
        kept = {m: statistics.mean(r.kept for rs in per.values() for r in rs) for m, per in methods.items()}
        reported: dict[str, dict[str, float]] = {}  # what methods report about themselves (ADMM residual, zero gates)
        for m, per in methods.items():
            values: dict[str, list[float]] = {}
            for r in (r for rs in per.values() for r in rs):
                for k, v in r.extra.items():
                    if isinstance(v, (int, float)) and k != "knob":
                        values.setdefault(k, []).append(float(v))
            if values:
                reported[m] = {k: statistics.mean(v) for k, v in values.items()}
        summary[f"{protocol} | {setting}"] = {
            "accuracy": acc,
            "mean_rank": ranks,
            "versus_best_peer": versus,
            "flags": flags,
            "kept": kept,
            "reported": reported,
        }
    return summary


def paired_diff(a: list[Record], b: list[Record]) -> torch.Tensor:
    """Per-image outcome differences ``a - b`` over the seeds both measured, ``[seeds * images]``."""
    by_seed_a = {r.seed: r.correct for r in a}
    by_seed_b = {r.seed: r.correct for r in b}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    return torch.tensor([by_seed_a[s] for s in seeds], dtype=torch.float64) - torch.tensor(
        [by_seed_b[s] for s in seeds], dtype=torch.float64
    )


# ---------------------------------------------------------------------------- reporting
def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_interval(t: tuple[float, float, float]) -> str:
    """A paired difference in points with its 95 % interval: ``-0.42 [-1.53, +0.56]``."""
    point, low, high = t
    return f"{100 * point:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def render(summary: dict, zoo_meta: dict, command: str) -> str:
    """RESULTS markdown for a zoo run."""
    lines = [
        f"Command: `{command}`",
        "",
        "Zoo (dense test accuracy): " + ", ".join(f"{k} {_pct(v)} %" for k, v in zoo_meta.items()),
        "",
    ]
    for key, block in summary.items():
        lines.append(f"### {key}")
        lines.append("")
        if key.startswith("latency"):
            models = sorted({model for per in block.values() for model in per})
            lines.append("| reduction | " + " | ".join(models) + " | mean |")
            lines.append("|---" * (len(models) + 2) + "|")
            for m, per in block.items():
                lines.append(
                    f"| {m} | " + " | ".join(f"{per[x]:.2f}" for x in models) + f" | {statistics.mean(per.values()):.2f} |"
                )
            lines.append("")
            lines.append("Cells: measured speed-up ÷ MACs ratio (1 = the speed-up the MACs promise).")
            lines.append("")
            continue
        acc, ranks, kept = block["accuracy"], block["mean_rank"], block.get("kept", {})
        models = sorted({x for per in acc.values() for x in per})
        what = {"heads": "heads kept", "pipeline": "params kept", "tokens": "MACs kept"}[key.split(" |")[0]]
        lines.append("| method | " + " | ".join(models) + f" | zoo mean | mean rank | {what} |")
        lines.append("|---" * (len(models) + 4) + "|")
        for m in sorted(acc, key=lambda m: (m not in ranks, ranks.get(m, 0.0), m)):
            cells = " | ".join(_pct(acc[m][x]) if x in acc[m] else "–" for x in models)
            share = f"{kept[m]:.3f}" if m in kept else "-"
            mean = _pct(statistics.mean(acc[m].values())) + ("" if m in ranks else f" ({len(acc[m])} of {len(models)})")
            rank = f"{ranks[m]:.2f}" if m in ranks else "–"
            lines.append(f"| {m} | {cells} | {mean} | {rank} | {share} |")
        if len(ranks) < len(acc):
            lines.append("")
            lines.append("A method measured on some models only: its mean is over those models, it is not ranked,")
            lines.append("and its interval below pairs it with the best peer on those models.")
        lines.append("")
        for m, v in block["versus_best_peer"].items():
            point, low, high = v["zoo_mean"]
            per = ", ".join(f"{x} {format_interval(t)}" for x, t in v["per_model"].items())
            lines.append(
                f"- **{m}** vs best peer **{v['peer']}**: zoo mean {100 * point:+.2f} pt, "
                f"95 % CI [{100 * low:+.2f}, {100 * high:+.2f}]; per model: {per}"
            )
        for f in block["flags"]:
            lines.append(f"- FLAG: {f}")
        for m, values in block.get("reported", {}).items():
            lines.append(f"- {m} reports (mean over models and seeds): " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        lines.append("")
    return "\n".join(lines)


def _heatmap(summary: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional extra
        return
    blocks = [(k, b) for k, b in summary.items() if not k.startswith("latency")]
    if not blocks:
        return
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.6), squeeze=False)
    for ax, (key, block) in zip(axes[0], blocks):
        acc = block["accuracy"]
        methods = sorted(block["mean_rank"], key=lambda m: block["mean_rank"][m])  # those measured on every model
        if not methods:
            ax.set_axis_off()
            continue
        models = sorted(next(iter(acc[m] for m in methods)))
        grid = [[1 + sorted(methods, key=lambda m2: -acc[m2][x]).index(m) for x in models] for m in methods]
        ax.imshow(grid, cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(len(models)), models, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
        ax.set_title(key, fontsize=7)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: str, rows: list[Record], summary: dict, zoo_meta: dict, command: str, settings: dict) -> None:
    """Write ``zoo.json`` (records with per-image outcomes, mergeable), ``ZOO.md`` and ``zoo_ranks.png`` into ``out_dir``."""
    with open(os.path.join(out_dir, "zoo.json"), "w") as f:  # per-image outcomes as "0"/"1" strings: runs can be merged
        records = [{**asdict(r), "correct": "".join("1" if c else "0" for c in r.correct)} for r in rows]
        json.dump({"settings": settings, "zoo": zoo_meta, "summary": _jsonable(summary), "records": records}, f, indent=1)
    with open(os.path.join(out_dir, "ZOO.md"), "w") as f:
        f.write("# tp-vit bench --zoo\n\n" + render(summary, zoo_meta, command) + "\n")
    _heatmap(summary, os.path.join(out_dir, "zoo_ranks.png"))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
