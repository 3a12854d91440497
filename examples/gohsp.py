"""GOHSP end to end: graph head ranking -> ADMM -> hard prune -> fine-tune -> report.

Embedded default (offline; the embedded MNIST ViT's weights ship with the package):

    python examples/gohsp.py

A real timm model on an ImageFolder root (e.g. ImageNet with train/ and val/):

    python examples/gohsp.py --model deit_small_patch16_224 --pretrained --data-path /data/imagenet \
        --admm-epochs 2 --finetune-epochs 5 --eval-batches 100
"""

import argparse
import copy

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import evaluate, finetune
from tp_vit_plugins.demo.workload import add_workload_arguments, workload_from_args

p = argparse.ArgumentParser()
add_workload_arguments(p)
p.add_argument("--pruning-ratio", type=float, default=0.4, help="share of parameters removed")
p.add_argument("--calib-batches", type=int, default=8)
p.add_argument("--admm-epochs", type=int, default=4)
p.add_argument("--finetune-epochs", type=int, default=6)
p.add_argument("--lr", type=float, default=5e-4)
args = p.parse_args()

w = workload_from_args(args)
dense, train_loader, val_loader, example = w.model, w.train_loader, w.test_loader, w.example

model = copy.deepcopy(dense)
# 1) graph ranking: PageRank from the classifier over the directed "who reads whom" head graph
imp = tpv.GraphHeadImportance().calibrate(model, train_loader, max_batches=args.calib_batches)
# 2) ADMM towards a heterogeneous structured pattern (heads + head dims + MLP neurons)
# the ADMM pull is a proximal step on the weights (GOHSPPruner's default), rho balanced by the residuals;
# the Z-step projects in the Fisher norm, estimated first on calibration batches (also the default)
interval = max(1, args.admm_epochs * len(train_loader) // 10)  # 10 dual updates over the ADMM epochs
pruner = tpv.GOHSPPruner(model, example, imp, pruning_ratio=args.pruning_ratio, admm_interval=interval)
pruner.calibrate_fisher(train_loader, max_batches=args.calib_batches)
finetune(
    model,
    train_loader,
    epochs=args.admm_epochs,
    warmup_epochs=1.0,
    lr=args.lr,
    step_hook=pruner.regularize,
    desc="ADMM",
)
print(f"ADMM: {pruner.rounds} dual updates, ||W - Z|| / ||W|| = {pruner.admm_residual():.4f}, converged={pruner.converged}")
# 3) hard prune the support through tp, 4) fine-tune
pruner.step()
one_shot = evaluate(model, val_loader)
finetune(model, train_loader, epochs=args.finetune_epochs, warmup_epochs=1.0, lr=args.lr, desc="fine-tune")

# 5) report
rows = [("dense", dense), ("GOHSP", model)]
print(f"{'':<8}{'params':>10}{'MACs':>12}{'accuracy':>10}")
for name, m in rows:
    print(
        f"{name:<8}{tpv.utils.count_params(m) / 1e6:>9.3f}M{tpv.count_macs(m, example) / 1e6:>11.2f}M"
        f"{100 * evaluate(m, val_loader):>9.2f}%"
    )
print(f"accuracy right after the hard prune: {100 * one_shot:.2f}%")
print(f"heads per block: {[b.attn.num_heads for b in dense.blocks]} -> {pruner.heads_per_layer()}")
print(f"MLP neurons per block: {[b.mlp.fc1.out_features for b in model.blocks]}")
