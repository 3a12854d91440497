"""GOHSP benchmark on the embedded MNIST ViT (not a test).

    python benchmarks/gohsp.py                  # all parts, 3 seeds, writes benchmarks/RESULTS.md
    python benchmarks/gohsp.py --parts oneshot --seeds 1

Parts:
  oneshot   50 % of heads removed (3 of 6 per block), no fine-tune: GOHSP graph variants vs
            tp random / L1 / L2 / Taylor, same calibration batches per seed.
  pipeline  -40 % parameters: GOHSP (calibrate, ADMM epochs, prune, fine-tune) vs tp Taylor
            (prune to the same parameter count, fine-tune) with the same total epochs.
  timing    GOHSP calibrate + PageRank vs tp Taylor's gradient pass on the same batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch_pruning as tp
from common import acc, calib_loader, load_embedded, loaders, mean_std, timed, tpv, write_section

from tp_vit_plugins.budget import clone_with_grads
from tp_vit_plugins.core.calibration import accumulate_gradients
from tp_vit_plugins.core.criteria import tp_importance
from tp_vit_plugins.core.search import bisect_threshold
from tp_vit_plugins.core.training import finetune

GRAPH_VARIANTS = {
    # name: (GraphHeadImportance kwargs, base criterion or None)
    "graph: central kept (importance), mean map": (dict(mode="importance", combine="head"), None),
    "graph: central pruned (redundancy), mean map": (dict(mode="redundancy", combine="head"), None),
    "graph: central kept, per-image": (dict(mode="importance", statistic="per_image", combine="head"), None),
    "graph: central pruned, per-image": (dict(mode="redundancy", statistic="per_image", combine="head"), None),
    "graph x L2: central kept": (dict(mode="importance", combine="product"), "l2"),
    "graph x L2: central pruned": (dict(mode="redundancy", combine="product"), "l2"),
    "graph x Taylor: central kept": (dict(mode="importance", combine="product"), "taylor"),
    "graph x Taylor: central pruned": (dict(mode="redundancy", combine="product"), "taylor"),
}


def prune_heads(model, importance, example, ratio=0.5, global_heads=False):
    tpv.ViTPruner(model, example, importance, head_pruning_ratio=ratio, global_head_pruning=global_heads).step()
    return model


def oneshot(base, split, seeds, calib_batches):
    example = split.x_test[:1]
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        calib = calib_loader(split, seed, calib_batches)
        _, test = loaders(split, seed)
        for name in ("random", "l1", "l2", "taylor"):
            m = clone_with_grads(base)
            if name == "taylor":
                accumulate_gradients(m, calib, progress=False)
            rows.setdefault(f"tp {name}", []).append(acc(prune_heads(m, tp_importance(name), example), test))
        for name, (kw, base_name) in GRAPH_VARIANTS.items():
            m = clone_with_grads(base)
            base_imp = tp_importance(base_name) if base_name else None
            if base_name == "taylor":
                accumulate_gradients(m, calib, progress=False)
            imp = tpv.GraphHeadImportance(base_importance=base_imp, progress=False, **kw).calibrate(m, calib)
            rows.setdefault(name, []).append(acc(prune_heads(m, imp, example), test))
        print(f"seed {seed}: " + ", ".join(f"{k}={v[-1]:.2f}" for k, v in rows.items()), flush=True)
    return rows


def pipeline(base, split, seeds, calib_batches, epochs, admm_epochs, target, lr):
    example = split.x_test[:1]
    out: dict[str, dict[str, list[float]]] = {}
    n0 = tpv.utils.count_params(base)

    def record(name, model, oneshot_acc, final_acc):
        r = out.setdefault(name, {"params": [], "macs": [], "oneshot": [], "final": []})
        r["params"].append(100.0 * (1 - tpv.utils.count_params(model) / n0))
        r["macs"].append(100.0 * tpv.count_macs(model, example) / tpv.count_macs(base, example))
        r["oneshot"].append(oneshot_acc)
        r["final"].append(final_acc)

    for seed in seeds:
        torch.manual_seed(seed)
        calib = calib_loader(split, seed, calib_batches)
        train_loader, test = loaders(split, seed)
        # GOHSP: graph ranking -> ADMM epochs -> hard prune -> fine-tune
        m = clone_with_grads(base)
        imp = tpv.GraphHeadImportance(progress=False).calibrate(m, calib)
        pruner = tpv.GOHSPPruner(m, example, imp, pruning_ratio=target).calibrate_fisher(calib, progress=False)
        finetune(
            m,
            train_loader,
            epochs=admm_epochs,
            warmup_epochs=1.0,
            lr=lr,
            seed=seed,
            step_hook=pruner.regularize,
            epoch_hook=lambda _: pruner.update_regularizer(),
            desc="GOHSP ADMM",
        )
        residual = pruner.admm_residual()
        pruner.step()
        one = acc(m, test)
        finetune(m, train_loader, epochs=epochs - admm_epochs, warmup_epochs=1.0, lr=lr, seed=seed, desc="GOHSP fine-tune")
        record("GOHSP (ADMM + prune + fine-tune)", m, one, acc(m, test))
        print(
            f"seed {seed} GOHSP: residual {residual:.3f}, heads {pruner.heads_per_layer()}, one-shot {one:.2f}, final {out['GOHSP (ADMM + prune + fine-tune)']['final'][-1]:.2f}",
            flush=True,
        )
        # tp Taylor at the same parameter count
        target_params = tpv.utils.count_params(m)
        g = clone_with_grads(base)
        accumulate_gradients(g, calib, progress=False)

        def build(r, g=g):
            c = clone_with_grads(g)
            tpv.ViTPruner(
                c,
                example,
                tp.importance.GroupTaylorImportance(),
                pruning_ratio=r,
                head_pruning_ratio=min(r, 0.8),
                global_pruning=True,
                prune_head_dims=True,
            ).step()
            return c

        # the ratio whose model has at most target_params parameters (hi end of the bracket)
        _, r = bisect_threshold(lambda r: tpv.utils.count_params(build(r)) > target_params, 0.0, 0.95, iterations=12)
        t = build(r)
        one = acc(t, test)
        finetune(t, train_loader, epochs=epochs, warmup_epochs=1.0, lr=lr, seed=seed, desc="Taylor fine-tune")
        record("tp Taylor (prune + fine-tune)", t, one, acc(t, test))
        print(
            f"seed {seed} Taylor: ratio {r:.3f}, heads {[b.attn.num_heads for b in t.blocks]}, final {out['tp Taylor (prune + fine-tune)']['final'][-1]:.2f}",
            flush=True,
        )
    return out


def timing(base, split, seeds, calib_batches):
    rows = {"GOHSP calibrate + PageRank": [], "tp Taylor gradient pass": []}
    for seed in seeds:
        calib = calib_loader(split, seed, calib_batches)
        m = clone_with_grads(base)
        rows["GOHSP calibrate + PageRank"].append(timed(lambda: tpv.GraphHeadImportance(progress=False).calibrate(m, calib))[1])
        rows["tp Taylor gradient pass"].append(timed(lambda: accumulate_gradients(m, calib, progress=False))[1])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="oneshot,pipeline,timing")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10, help="total training epochs per method in the pipeline")
    p.add_argument("--admm-epochs", type=int, default=4)
    p.add_argument("--target", type=float, default=0.4, help="share of parameters removed in the pipeline")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, split, meta = load_embedded()
    _, test = loaders(split, 0)
    dense = acc(base, test)
    seeds = list(range(args.seeds))
    cmd = "python benchmarks/gohsp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = args.parts.split(",")
    body = [
        f"Command: `{cmd.strip()}` — embedded MNIST ViT (recipe {meta['key']}), dense test accuracy {dense:.2f} %, "
        f"seeds {seeds}, {args.calib_batches} calibration batches of 64 train images per seed.\n"
    ]
    if "oneshot" in parts:
        rows = oneshot(base, split, seeds, args.calib_batches)
        body.append("### One-shot, 50 % of heads removed (3 of 6 per block), no fine-tune\n")
        body.append("| criterion | test accuracy % (mean ± std) |\n|---|---|")
        for name, v in sorted(rows.items(), key=lambda kv: -statistics.mean(kv[1])):
            body.append(f"| {name} | {mean_std(v)} |")
        body.append("")
    if "pipeline" in parts:
        res = pipeline(base, split, seeds, args.calib_batches, args.epochs, args.admm_epochs, args.target, args.lr)
        body.append(
            f"### Full pipeline at -{100 * args.target:.0f} % parameters, {args.epochs} training epochs per method "
            f"(GOHSP: {args.admm_epochs} ADMM + {args.epochs - args.admm_epochs} fine-tune)\n"
        )
        body.append(
            "| method | params removed % | MACs kept % | acc. after prune % | acc. after fine-tune % |\n|---|---|---|---|---|"
        )
        body.append(f"| dense | 0 | 100 | {dense:.2f} | {dense:.2f} |")
        for name, r in res.items():
            body.append(
                f"| {name} | {mean_std(r['params'])} | {mean_std(r['macs'])} | {mean_std(r['oneshot'])} | {mean_std(r['final'])} |"
            )
        body.append("")
    if "timing" in parts:
        rows = timing(base, split, seeds, args.calib_batches)
        g, t = statistics.mean(rows["GOHSP calibrate + PageRank"]), statistics.mean(rows["tp Taylor gradient pass"])
        body.append("### Ranking cost on the same calibration batches (CPU, 2 cores)\n")
        body.append("| step | seconds (mean ± std) |\n|---|---|")
        for name, v in rows.items():
            body.append(f"| {name} | {mean_std(v)} |")
        body.append(f"\nGOHSP / Taylor time ratio: {g / t:.2f}\n")
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("GOHSP", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
