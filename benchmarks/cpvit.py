"""CP-ViT benchmark (not a test): accuracy vs MACs on the embedded MNIST ViT, no fine-tune,
and CPU latency of deit_small_patch16_224 (random weights) with the cascade.

    python benchmarks/cpvit.py                   # writes the CP-ViT section of benchmarks/RESULTS.md
    python benchmarks/cpvit.py --parts accuracy --keeps 0.5

At every (keep ratio, start block) the three scorers share the identical token schedule, so
their MACs are equal: CP-ViT's cumulative score, an EViT-style top-k by the class token's
attention in the pruning block, and random dropping (mean ± std over seeds). CP-ViT with the
attention-range adjustment (beta > 0) has input-dependent counts; its MACs are measured on
the test set. MACs: analytic ``cascade_macs`` (cross-checked against FlopCounterMode in the
tests), per image.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import acc, load_embedded, loaders, mean_std, tpv, write_section

from tp_vit_plugins.cpvit import apply_cascade, cascade_macs, remove_cascade


def evaluate_cascade(model, test, **kw):
    """Accuracy % and mean MACs per image over the test set with a cascade applied."""
    c = apply_cascade(model, **kw)
    correct = total = 0
    macs = 0
    input_size = tuple(test.dataset.tensors[0].shape[1:])
    try:
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(-1) == y).sum())
                total += len(y)
                macs += len(y) * cascade_macs(model, input_size, c.config, counts=c.state.counts)
    finally:
        remove_cascade(model)
    return 100.0 * correct / total, macs / total


def accuracy_sweep(base, split, keeps, starts, seeds, beta, steps_list):
    _, test = loaders(split, 0)
    input_size = tuple(split.x_test.shape[1:])
    dense_macs = cascade_macs(base, input_size, keep_ratio=1.0, start_block=0, trim_last=False)
    rows = []
    for steps in steps_list:
        for start in starts:
            for keep in keeps:
                common = dict(keep_ratio=keep, start_block=start, beta=0.0, schedule_steps=steps or None)
                cp, macs = evaluate_cascade(base, test, score="cumulative", **common)
                ev, _ = evaluate_cascade(base, test, score="cls", **common)
                rnd = [evaluate_cascade(base, test, score="random", seed=s, **common)[0] for s in seeds]
                cpb, macs_b = evaluate_cascade(base, test, score="cumulative", **{**common, "beta": beta})
                row = dict(steps=steps, start=start, keep=keep, macs=100 * macs / dense_macs, cp=cp, evit=ev, rnd=rnd)
                rows.append({**row, "cpb": cpb, "macs_b": 100 * macs_b / dense_macs})
                print(rows[-1], flush=True)
    return rows, dense_macs


def table_lines(rows):
    """Markdown table of the sweep rows (steps = schedule stages, 0 = the ramp)."""
    lines = [
        "| steps | start block | keep ratio | MACs kept % | CP-ViT % | EViT-style (CLS attn) % | random % | CP-ViT β % | MACs kept (β) % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['start']} | {r['keep']} | {r['macs']:.1f} | {r['cp']:.2f} | {r['evit']:.2f} | "
            f"{mean_std(r['rnd'])} | {r['cpb']:.2f} | {r['macs_b']:.1f} |"
        )
    return lines


def latency(model_name, keeps, start, batch_sizes, min_run_time):
    import timm

    model = timm.create_model(model_name).eval()
    example = torch.randn(1, 3, 224, 224)
    dense_lat = tpv.utils.measure_latency(model, example, batch_sizes, min_run_time=min_run_time)
    dense_macs = cascade_macs(model, (3, 224, 224), keep_ratio=1.0, start_block=start, trim_last=False)
    out = []
    for keep in keeps:
        c = apply_cascade(model, keep_ratio=keep, start_block=start, beta=0.0)
        lat = tpv.utils.measure_latency(model, example, batch_sizes, min_run_time=min_run_time)
        macs = cascade_macs(model, (3, 224, 224), keep_ratio=keep, start_block=start, counts=c.schedule)
        remove_cascade(model)
        out.append((keep, dense_macs / macs, {b: dense_lat[b] / lat[b] for b in batch_sizes}, lat))
        print(out[-1], flush=True)
    return dense_lat, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="accuracy,latency")
    p.add_argument("--keeps", type=float, nargs="+", default=[0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    p.add_argument("--starts", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--steps", type=int, nargs="+", default=[3, 0], help="schedule_steps values (0: the ramp)")
    p.add_argument("--latency-model", default="deit_small_patch16_224")
    p.add_argument("--latency-keeps", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--latency-start", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    cmd = "python benchmarks/cpvit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = [f"Command: `{cmd.strip()}`\n"]
    parts = args.parts.split(",")
    if "accuracy" in parts:
        base, split, meta = load_embedded()
        _, test = loaders(split, 0)
        dense = acc(base, test)
        rows, dense_macs = accuracy_sweep(base, split, args.keeps, args.starts, list(range(args.seeds)), args.beta, args.steps)
        body.append(f"### Accuracy vs MACs, embedded MNIST ViT (recipe {meta['key']}), no fine-tune\n")
        body.append(
            f"Dense: {dense:.2f} % at {dense_macs / 1e6:.2f} M MACs per image (49 patches, 6 blocks). "
            "Columns 5-7 share one token schedule (equal MACs); random: mean ± std over "
            f"{args.seeds} seeds. Last two columns: CP-ViT with the attention-range adjustment (beta={args.beta}).\n"
        )
        body.extend(table_lines(rows))
        wins = sum(r["cp"] >= r["evit"] for r in rows)
        within = [r for r in rows if r["cp"] >= dense - 1.0]
        best = min(within, key=lambda r: r["macs"]) if within else None
        summary = f"\nCP-ViT >= EViT-style at {wins} of {len(rows)} matched points. "
        if best:
            summary += (
                f"Largest MACs cut within 1 pt of dense: {100 - best['macs']:.1f} % at {best['cp']:.2f} % "
                f"(steps {best['steps']}, start {best['start']}, keep {best['keep']}) — "
                f"{'meets' if best['macs'] <= 60.0 else 'misses'} the 40 % target."
            )
        body.append(summary + "\n")
    if "latency" in parts:
        bss = (1, 64)
        dense_lat, out = latency(args.latency_model, args.latency_keeps, args.latency_start, bss, args.min_run_time)
        body.append(
            f"### CPU latency, {args.latency_model} (random weights), cascade from block {args.latency_start}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
        )
        body.append(
            "| keep ratio | MACs ratio (dense/cascade) | ms @bs1 | ms @bs64 | speed-up bs1 | speed-up bs64 | speed-up / MACs ratio @bs64 |"
        )
        body.append("|---|---|---|---|---|---|---|")
        body.append(f"| dense | 1.00 | {1e3 * dense_lat[1]:.1f} | {1e3 * dense_lat[64]:.1f} | 1.00 | 1.00 | - |")
        for keep, ratio, speed, lat in out:
            body.append(
                f"| {keep} | {ratio:.2f} | {1e3 * lat[1]:.1f} | {1e3 * lat[64]:.1f} | {speed[1]:.2f} | {speed[64]:.2f} | "
                f"{speed[64] / ratio:.2f} |"
            )
        body.append("")
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("CP-ViT", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
