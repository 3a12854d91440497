"""VTP end to end: gated sparse training with gate closing -> prune the closed dims -> fine-tune.

While closing (the default with ``sparse_steps``) the gates are probes held at 1 and closed
to 0 in rounds; ``--no-closing`` gives the paper's proximal-L1 gate training (``--reg``). The
sparse phase and the fine-tune share one learning-rate schedule (``schedule_span``).

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
p.add_argument("--reg", type=float, default=0.5, help="L1 strength, relative to the mean gate gradient")
p.add_argument("--no-closing", action="store_true", help="the paper's L1 gate training instead of closing")
p.add_argument("--threshold", type=float, default=None, help="prune every dim whose gate is <= this instead of --ratio")
p.add_argument("--histogram", default=None, help="write a PNG histogram of the trained gates here")
p.add_argument("--sparse-epochs", type=int, default=2)
p.add_argument("--finetune-epochs", type=int, default=4)
p.add_argument("--lr", type=float, default=5e-4)
args = p.parse_args()

w = workload_from_args(args)
dense, train_loader, val_loader, example = w.model, w.train_loader, w.test_loader, w.example

model = copy.deepcopy(dense)
steps = args.sparse_epochs * len(train_loader)  # gate_lr follows: the L1 step alone moves a gate 1 -> 0 over the run
pruner = tpv.VTPPruner(
    model,
    example,
    pruning_ratio=args.ratio,
    reg=args.reg,
    sparse_steps=max(1, steps),
    threshold=args.threshold,
    close=False if args.no_closing else None,
)
total = args.sparse_epochs + args.finetune_epochs  # one warm-up + cosine over both phases
finetune(
    model,
    train_loader,
    epochs=args.sparse_epochs,
    warmup_epochs=1.0,
    lr=args.lr,
    step_hook=pruner.regularize,
    schedule_span=(0, total),
    desc="sparse training",
)
print(
    f"gates exactly 0: {100 * pruner.gate_zero_share():.1f}%, below 0.01: {100 * pruner.gate_sparsity():.1f}%, "
    f"closed in rounds: {100 * pruner.closed_share:.1f}% of the parameters"
)
if args.histogram:
    pruner.save_gate_histogram(args.histogram)
pruner.step()  # gate scores -> tp group scores (closed gates first), gates folded and removed, dims removed, attention synced
one_shot = evaluate(model, val_loader)
span = (args.sparse_epochs, total)
finetune(model, train_loader, epochs=args.finetune_epochs, warmup_epochs=1.0, lr=args.lr, schedule_span=span, desc="fine-tune")

print(f"{'':<6}{'params':>10}{'MACs':>12}{'accuracy':>10}")
for name, m in (("dense", dense), ("VTP", model)):
    params, macs = tpv.utils.count_params(m) / 1e6, tpv.count_macs(m, example) / 1e6
    print(f"{name:<6}{params:>9.3f}M{macs:>11.2f}M{100 * evaluate(m, val_loader):>9.2f}%")
print(f"accuracy right after pruning: {100 * one_shot:.2f}%")
print(
    f"embedding dim {dense.embed_dim} -> {model.embed_dim}; MLP neurons {[b.mlp.fc1.out_features for b in model.blocks]}; "
    f"head dims {[b.attn.head_dim for b in model.blocks]}"
)
