"""VTP end to end: gated L1 sparse training -> prune dims by |gate| -> fold -> fine-tune.

Embedded default (offline):

    python examples/vtp.py --ratio 0.4

A real timm model on an ImageFolder root:

    python examples/vtp.py --model deit_small_patch16_224 --pretrained --data-path /data/imagenet \
        --ratio 0.2 --sparse-epochs 2 --finetune-epochs 5 --eval-batches 100
"""

import argparse
import copy

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import evaluate, finetune
from tp_vit_plugins.demo.workload import add_workload_arguments, workload_from_args

p = argparse.ArgumentParser()
add_workload_arguments(p)
p.add_argument("--ratio", type=float, default=0.4, help="share of dimensions to prune")
p.add_argument("--reg", type=float, default=1e-4, help="L1 strength on the gates")
p.add_argument("--sparse-epochs", type=int, default=2)
p.add_argument("--finetune-epochs", type=int, default=4)
p.add_argument("--lr", type=float, default=5e-4)
args = p.parse_args()

w = workload_from_args(args)
dense, train_loader, val_loader, example = w.model, w.train_loader, w.test_loader, w.example

model = copy.deepcopy(dense)
pruner = tpv.VTPPruner(model, example, pruning_ratio=args.ratio, reg=args.reg)  # gates on qkv/proj/fc1/fc2 inputs
finetune(
    model,
    train_loader,
    epochs=args.sparse_epochs,
    warmup_epochs=1.0,
    lr=args.lr,
    step_hook=pruner.regularize,
    desc="sparse training",
)
print(f"gates below 0.01: {100 * pruner.gate_sparsity():.1f}%")
pruner.step()  # |gate| -> tp group scores, gates folded into weights, dims removed, attention synced
one_shot = evaluate(model, val_loader)
finetune(model, train_loader, epochs=args.finetune_epochs, warmup_epochs=1.0, lr=args.lr, desc="fine-tune")

print(f"{'':<6}{'params':>10}{'MACs':>12}{'accuracy':>10}")
for name, m in (("dense", dense), ("VTP", model)):
    params, macs = tpv.count_params(m) / 1e6, tpv.count_macs(m, example) / 1e6
    print(f"{name:<6}{params:>9.3f}M{macs:>11.2f}M{100 * evaluate(m, val_loader):>9.2f}%")
print(f"accuracy right after pruning: {100 * one_shot:.2f}%")
print(
    f"embedding dim {dense.embed_dim} -> {model.embed_dim}; MLP neurons {[b.mlp.fc1.out_features for b in model.blocks]}; "
    f"head dims {[b.attn.head_dim for b in model.blocks]}"
)
