"""VTP benchmark on the embedded MNIST ViT (not a test).

    python benchmarks/vtp.py                     # 20 % and 40 % of dimensions, 3 seeds
    python benchmarks/vtp.py --ratios 0.4 --seeds 1

Every method gets the same total number of training epochs and prunes the same share of
dimensions (tp's global channel ratio over MLP hidden dims, head dims and embedding dims):

* VTP: gated L1 sparse training (``--sparse-epochs``), prune by |gate|, fold, fine-tune;
* tp GroupNormPruner: tp's own group-L2 sparse training for the same epochs, prune, fine-tune;
* tp Taylor: one-shot prune after a gradient pass, fine-tune for all epochs.

Reported: parameters, MACs, CPU latency (batch 1 / 64) of each result, accuracy right after
pruning and after fine-tuning (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch_pruning as tp
from common import acc, calib_loader, load_embedded, loaders, mean_std, tpv, write_section

from tp_vit_plugins.budget import clone_with_grads
from tp_vit_plugins.core.calibration import accumulate_gradients
from tp_vit_plugins.core.training import finetune


def run_vtp(base, split, seed, ratio, sparse_epochs, total_epochs, lr, reg):
    m = clone_with_grads(base)
    train_loader, test = loaders(split, seed)
    pruner = tpv.VTPPruner(m, split.x_test[:1], pruning_ratio=ratio, reg=reg)
    finetune(
        m, train_loader, epochs=sparse_epochs, warmup_epochs=1.0, lr=lr, seed=seed, step_hook=pruner.regularize, desc="VTP sparse"
    )
    pruner.step()
    one = acc(m, test)
    finetune(m, train_loader, epochs=total_epochs - sparse_epochs, warmup_epochs=1.0, lr=lr, seed=seed, desc="VTP fine-tune")
    return m, one, acc(m, test)


def run_group_norm(base, split, seed, ratio, sparse_epochs, total_epochs, lr, reg):
    """tp's GroupNormPruner through the plain-tp path: vit_pruning_kwargs + sync_attention."""
    m = clone_with_grads(base)
    train_loader, test = loaders(split, seed)
    example = split.x_test[:1]
    pruner = tp.pruner.GroupNormPruner(
        m,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=True,
        reg=reg,
        **tpv.vit_pruning_kwargs(m),
    )
    finetune(
        m,
        train_loader,
        epochs=sparse_epochs,
        warmup_epochs=1.0,
        lr=lr,
        seed=seed,
        step_hook=lambda model, loss: pruner.regularize(model),
        desc="GroupNorm sparse",
    )
    pruner.step()
    tpv.sync_attention(m, pruner.num_heads)
    one = acc(m, test)
    finetune(
        m, train_loader, epochs=total_epochs - sparse_epochs, warmup_epochs=1.0, lr=lr, seed=seed, desc="GroupNorm fine-tune"
    )
    return m, one, acc(m, test)


def run_taylor(base, split, seed, ratio, sparse_epochs, total_epochs, lr, reg, calib_batches=8):
    m = clone_with_grads(base)
    train_loader, test = loaders(split, seed)
    accumulate_gradients(m, calib_loader(split, seed, calib_batches), progress=False)
    tpv.ViTPruner(
        m,
        split.x_test[:1],
        tp.importance.GroupTaylorImportance(),
        pruning_ratio=ratio,
        global_pruning=True,
        prune_head_dims=True,
        prune_embed_dim=True,
    ).step()
    m.zero_grad(set_to_none=True)
    one = acc(m, test)
    finetune(m, train_loader, epochs=total_epochs, warmup_epochs=1.0, lr=lr, seed=seed, desc="Taylor fine-tune")
    return m, one, acc(m, test)


METHODS = {"VTP (gates + L1)": run_vtp, "tp GroupNormPruner": run_group_norm, "tp Taylor one-shot": run_taylor}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6, help="total training epochs per method")
    p.add_argument("--sparse-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--vtp-reg", type=float, default=1e-4)
    p.add_argument("--gn-reg", type=float, default=1e-4)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    base, split, meta = load_embedded()
    _, test = loaders(split, 0)
    dense = acc(base, test)
    example = split.x_test[:1]
    dense_lat = tpv.utils.measure_latency(base, example, (1, 64))
    dense_params, dense_macs = tpv.utils.count_params(base), tpv.count_macs(base, example)
    cmd = "python benchmarks/vtp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = [
        f"Command: `{cmd.strip()}` — embedded MNIST ViT (recipe {meta['key']}), dense {dense:.2f} %, "
        f"{dense_params / 1e3:.1f} K params, {dense_macs / 1e6:.2f} M MACs, {1e3 * dense_lat[1]:.2f} / "
        f"{1e3 * dense_lat[64]:.2f} ms at batch 1 / 64. {args.epochs} training epochs per method "
        f"(sparse methods: {args.sparse_epochs} sparse + {args.epochs - args.sparse_epochs} fine-tune), "
        f"VTP reg {args.vtp_reg}, GroupNorm reg {args.gn_reg}, seeds {list(range(args.seeds))}.\n",
        "| dims pruned | method | params % of dense | MACs % of dense | speed-up bs1 | speed-up bs64 | acc. after prune % | acc. after fine-tune % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ratio in args.ratios:
        for name, fn in METHODS.items():
            rec = {"params": [], "macs": [], "s1": [], "s64": [], "one": [], "final": []}
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                reg = args.vtp_reg if fn is run_vtp else args.gn_reg
                m, one, final = fn(base, split, seed, ratio, args.sparse_epochs, args.epochs, args.lr, reg)
                lat = tpv.utils.measure_latency(m, example, (1, 64))
                rec["params"].append(100 * tpv.utils.count_params(m) / dense_params)
                rec["macs"].append(100 * tpv.count_macs(m, example) / dense_macs)
                rec["s1"].append(dense_lat[1] / lat[1])
                rec["s64"].append(dense_lat[64] / lat[64])
                rec["one"].append(one)
                rec["final"].append(final)
                print(f"ratio {ratio} {name} seed {seed}: one-shot {one:.2f}, final {final:.2f}", flush=True)
            body.append(
                f"| {ratio:.0%} | {name} | {mean_std(rec['params'])} | {mean_std(rec['macs'])} | "
                f"{statistics.mean(rec['s1']):.2f} | {statistics.mean(rec['s64']):.2f} | {mean_std(rec['one'])} | "
                f"{mean_std(rec['final'])} |"
            )
    text = "\n".join(body) + "\n"
    print(text)
    if not args.no_write:
        write_section("VTP", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
