"""CP-ViT cascade: drop low-score patch tokens (and skip low heads) per input, at inference.

Embedded default (offline):

    python examples/cpvit.py --keep-ratio 0.5

A real timm model on an ImageFolder root:

    python examples/cpvit.py --model deit_small_patch16_224 --pretrained --data-path /data/imagenet \
        --keep-ratio 0.5 --start-block 3 --eval-batches 100

Optionally fine-tune briefly with the cascade active (``--finetune-epochs 1``): the token
gather is differentiable, so the model adapts to the tokens it will see.
"""

import argparse

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import evaluate, finetune
from tp_vit_plugins.cpvit import apply_cascade, remove_cascade
from tp_vit_plugins.demo.workload import add_workload_arguments, workload_from_args

p = argparse.ArgumentParser()
add_workload_arguments(p)
p.add_argument("--keep-ratio", type=float, default=0.5, help="share of patch tokens kept in the last block")
p.add_argument("--head-keep-ratio", type=float, default=1.0, help="share of heads each input keeps")
p.add_argument("--start-block", type=int, default=0, help="first block whose scores prune tokens")
p.add_argument("--finetune-epochs", type=int, default=0)
args = p.parse_args()

w = workload_from_args(args)
model, train_loader, val_loader, example = w.model, w.train_loader, w.test_loader, w.example

dense_acc, dense_macs = evaluate(model, val_loader), tpv.count_macs(model, example)
dense_lat = tpv.utils.measure_latency(model, example, (1, 64))
cascade = apply_cascade(model, keep_ratio=args.keep_ratio, head_keep_ratio=args.head_keep_ratio, start_block=args.start_block)
if args.finetune_epochs:
    finetune(model, train_loader, epochs=args.finetune_epochs, warmup_epochs=1.0, lr=2e-4, desc="fine-tune with cascade")
acc, macs = evaluate(model, val_loader), tpv.count_macs(model, example)
lat = tpv.utils.measure_latency(model, example, (1, 64))
print(f"patch tokens entering each block: {cascade.schedule}")
print(f"{'':<10}{'accuracy':>10}{'MACs':>12}{'ms @bs1':>10}{'ms @bs64':>10}")
print(f"{'dense':<10}{100 * dense_acc:>9.2f}%{dense_macs / 1e6:>11.2f}M{1e3 * dense_lat[1]:>10.2f}{1e3 * dense_lat[64]:>10.2f}")
print(f"{'cascade':<10}{100 * acc:>9.2f}%{macs / 1e6:>11.2f}M{1e3 * lat[1]:>10.2f}{1e3 * lat[64]:>10.2f}")
print(f"MACs ratio {dense_macs / macs:.2f}x, speed-up @bs64 {dense_lat[64] / lat[64]:.2f}x")
remove_cascade(model)  # back to the exact original model
