"""Fine-tuning benchmark (not a test): KD vs no KD at equal epochs, and 1- vs 2-process wall-clock.

    python benchmarks/finetune.py

The student is the embedded MNIST ViT pruned deterministically with tp group-L2 (half the
heads, 30 % of the MLP neurons); the teacher is the dense model. Each variant fine-tunes for
the same number of epochs with the same seeds. The wall-clock part runs
``examples/finetune.py`` under ``torchrun --nproc_per_node=1`` and ``=2`` on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import torch
from common import load_embedded, mean_std, tpv, write_section
from torch.utils.data import DataLoader, TensorDataset

from tp_vit_plugins.budget import clone_with_grads
from tp_vit_plugins.core.training import evaluate, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kd_study(base, split, seeds, epochs, lr):
    example = split.x_test[:1]
    val = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=256)
    pruned = clone_with_grads(base)
    tpv.ViTPruner(pruned, example, pruning_ratio=0.3, head_pruning_ratio=0.5).step()
    one_shot = 100 * evaluate(pruned, val, progress=False)
    rows = {}
    for kd in (None, "soft", "hard"):
        accs = []
        for seed in seeds:
            student = clone_with_grads(pruned)
            loader = DataLoader(
                TensorDataset(split.x_train, split.y_train),
                batch_size=64,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            hist = finetune(student, loader, val, epochs=epochs, teacher=base, kd=kd, lr=lr, seed=seed, desc=f"kd={kd}")
            accs.append(100 * hist["val_acc"][-1])
            print(f"kd={kd} seed {seed}: {accs[-1]:.2f}", flush=True)
        rows["no KD" if kd is None else f"KD {kd}"] = accs
    return one_shot, rows


def wall_clock(nprocs: int, epochs: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nprocs))}
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        f"--nproc_per_node={nprocs}",
        os.path.join(ROOT, "examples", "finetune.py"),
        "--epochs",
        str(epochs),
        "--kd",
        "soft",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"wall-clock ([0-9.]+) s", out).group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wall-epochs", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    base, split, meta = load_embedded()
    one_shot, rows = kd_study(base, split, list(range(args.seeds)), args.epochs, args.lr)
    t1, t2 = wall_clock(1, args.wall_epochs), wall_clock(2, args.wall_epochs)
    cmd = "python benchmarks/finetune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = [
        f"Command: `{cmd.strip()}` — embedded MNIST ViT (recipe {meta['key']}) pruned with tp group-L2 "
        f"(50 % of heads, 30 % of MLP neurons): {one_shot:.2f} % before fine-tuning; teacher = dense model.\n",
        f"### KD vs no KD, {args.epochs} fine-tune epochs each, seeds {list(range(args.seeds))}\n",
        "| fine-tune | test accuracy % (mean ± std) |",
        "|---|---|",
    ]
    body += [f"| {name} | {mean_std(v)} |" for name, v in rows.items()]
    body += [
        "",
        f"### Wall-clock of `examples/finetune.py --epochs {args.wall_epochs} --kd soft` under torchrun (this machine, "
        f"{os.cpu_count()} cores, OMP threads split between processes)\n",
        "| processes | seconds |",
        "|---|---|",
        f"| 1 | {t1:.1f} |",
        f"| 2 (DDP, gloo) | {t2:.1f} |",
        "",
    ]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("Fine-tuning", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
