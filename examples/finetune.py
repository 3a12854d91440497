"""Fine-tune a pruned ViT with distillation from the dense model; single process or torchrun/DDP.

    python examples/finetune.py --epochs 3 --kd soft --checkpoint-dir runs/ft
    torchrun --nproc_per_node=2 examples/finetune.py --epochs 3 --kd soft --checkpoint-dir runs/ft

Re-running the same command after an interruption resumes from ``runs/ft/last.pt``.
The pruned model is either loaded (``--pruned DIR`` written by ``tp-vit prune --out DIR`` or
``tpv.save_pruned``) or made here deterministically (tp group-L2: half the heads, 30 % of the
MLP neurons) from the embedded MNIST ViT. Real data: ``--model NAME --pretrained --data-path ROOT``.
"""

import argparse
import copy
import time

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core import distributed as D
from tp_vit_plugins.core.training import finetune

p = argparse.ArgumentParser()
p.add_argument("--pruned", default=None, help="directory written by tpv.save_pruned")
p.add_argument("--model", default=None)
p.add_argument("--pretrained", action="store_true")
p.add_argument("--data-path", default=None)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--kd", choices=["none", "soft", "hard"], default="soft")
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--batch-size", type=int, default=64, help="per process")
p.add_argument("--checkpoint-dir", default=None)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

distributed = D.init_from_env()  # gloo on CPU, nccl on GPU; no-op without torchrun
torch.manual_seed(args.seed)
if args.model is None:
    from tp_vit_plugins.demo.embedded import embedded_model

    if D.is_main():
        embedded_model()  # train/cache once, on rank 0
    D.barrier()
    teacher, split, _ = embedded_model()
    train_set = TensorDataset(split.x_train, split.y_train)
    val_set = TensorDataset(split.x_test, split.y_test)
    example = split.x_test[:1]
else:
    import timm
    import timm.data
    from torchvision.datasets import ImageFolder

    if not args.data_path:
        raise SystemExit("--model needs --data-path (an ImageFolder root with train/ and val/)")
    teacher = timm.create_model(args.model, pretrained=args.pretrained)
    cfg = timm.data.resolve_data_config({}, model=teacher)
    train_set = ImageFolder(f"{args.data_path}/train", timm.data.create_transform(**cfg, is_training=True))
    val_set = ImageFolder(f"{args.data_path}/val", timm.data.create_transform(**cfg))
    example = torch.randn(1, *cfg["input_size"])

if args.pruned:
    student = tpv.load_pruned(args.pruned)
else:
    student = copy.deepcopy(teacher)
    tpv.ViTPruner(student, example, pruning_ratio=0.3, head_pruning_ratio=0.5).step()

if distributed:
    train_sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler)
    val_loader = DataLoader(val_set, batch_size=256, sampler=DistributedSampler(val_set, shuffle=False))
else:
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed)
    )
    val_loader = DataLoader(val_set, batch_size=256)

start = time.perf_counter()
history = finetune(
    student,
    train_loader,
    val_loader,
    epochs=args.epochs,
    teacher=teacher,
    kd=None if args.kd == "none" else args.kd,
    lr=args.lr,
    checkpoint_dir=args.checkpoint_dir,
    seed=args.seed,
)
if D.is_main():
    print(
        f"processes: {D.world_size()} | resumed from epoch {history['resumed_from']} | "
        f"wall-clock {time.perf_counter() - start:.1f} s"
    )
    for epoch, (loss, acc) in enumerate(zip(history["loss"], history["val_acc"])):
        print(f"epoch {epoch}: train loss {loss:.4f}, val accuracy {100 * acc:.2f}%")
if distributed:
    torch.distributed.destroy_process_group()
