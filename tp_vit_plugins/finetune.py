"""Fine-tuning that scales: KD from the dense model, AdamW + cosine, resume, torchrun/DDP.

:func:`finetune` is the one training loop of the library (``tpv.train.train`` is a thin
wrapper). Under ``torchrun`` (after :func:`tp_vit_plugins.distributed.init_from_env`) the
model is wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on GPU); give it a loader
with a ``DistributedSampler``. Sparse-training hooks (``GOHSPPruner.regularize``,
``VTPPruner.regularize``) run after the all-reduced backward, so every rank applies the same
update.

Reproducibility and resume: the augmentation generator is seeded from ``(seed, rank)``, the
data order comes from ``sampler.set_epoch(epoch)`` (DistributedSampler) or the loader's own
generator, and a checkpoint written after every epoch holds the model, optimizer, scheduler,
history and both generator states. A run killed mid-epoch and restarted with the same
arguments resumes after the last completed epoch and replays exactly the batches and
augmentations the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .augment import random_shift
from .distributed import all_reduce_sum, barrier, is_distributed, is_main, rank

__all__ = ["finetune", "distillation_loss", "KD_MODES", "CHECKPOINT_NAME"]

#: Distillation modes.
KD_MODES = (None, "soft", "hard")
#: File written in ``checkpoint_dir`` after every epoch.
CHECKPOINT_NAME = "last.pt"


def distillation_loss(
    student: torch.Tensor,
    targets: torch.Tensor,
    teacher: torch.Tensor | None,
    kd: str | None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy, optionally mixed with knowledge distillation from teacher logits.

    ``soft``: ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))``.
    ``hard`` (DeiT): ``(1 - alpha) * CE(s, y) + alpha * CE(s, argmax t)``.

    Args:
        student: Student logits ``[B, K]``.
        targets: Labels ``[B]``.
        teacher: Teacher logits ``[B, K]`` (ignored without ``kd``).
        kd: ``None``, ``"soft"`` or ``"hard"``.
        alpha: Weight of the distillation term.
        temperature: Softmax temperature ``T`` of soft distillation.
        label_smoothing: Label smoothing of the ground-truth term.

    Returns:
        Scalar loss.
    """
    ce = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if kd is None or teacher is None:
        return ce
    if kd == "soft":
        t = temperature
        distill = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean", log_target=True)
        distill = distill * t * t
    else:
        distill = F.cross_entropy(student, teacher.argmax(-1))
    return (1 - alpha) * ce + alpha * distill


def _loader_generator(loader: Iterable) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def finetune(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    epochs: int = 1,
    teacher: nn.Module | None = None,
    kd: str | None = None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 1.0,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    warmup_epochs: float = 0.0,
    label_smoothing: float = 0.0,
    max_shift: int = 0,
    amp: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    seed: int = 0,
    step_hook: Callable[[nn.Module, torch.Tensor], None] | None = None,
    epoch_hook: Callable[[int], None] | None = None,
    desc: str = "fine-tune",
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` (pruned or not), optionally distilling from ``teacher``.

    Args:
        model: The student, trained in place (wrapped in DDP while a process group is active).
        train_loader: Yields ``(images, labels)``; use a ``DistributedSampler`` under torchrun.
        val_loader: Optional; accuracy is measured after every epoch (all-reduced over ranks).
        epochs: Total epochs (also when resuming).
        teacher: Dense teacher for ``kd`` (kept in eval mode, no gradients).
        kd: ``None``, ``"soft"`` or ``"hard"``.
        kd_alpha, kd_temperature: See :func:`distillation_loss`.
        lr, weight_decay: AdamW settings (peak learning rate).
        warmup_epochs: Linear warm-up before the cosine decay.
        label_smoothing: Label smoothing of the ground-truth loss.
        max_shift: Random-translation augmentation in pixels (0 = none).
        amp: bfloat16 autocast; default on for CUDA models, off on CPU.
        checkpoint_dir: Write ``last.pt`` after every epoch (rank 0) and resume from it.
        resume: Resume from ``checkpoint_dir/last.pt`` when it exists.
        seed: Base seed for data order and augmentation.
        step_hook: ``step_hook(model, loss)`` after backward, before the optimizer step
            (e.g. a pruner's ``regularize``).
        epoch_hook: ``epoch_hook(epoch)`` after every epoch (e.g. ``update_regularizer``).
        desc: Progress-bar label.
        progress: Show a tqdm bar (rank 0 only).

    Returns:
        ``{"loss": [per-epoch mean loss], "val_acc": [per-epoch accuracy or None], "resumed_from": int}``.

    Raises:
        ValueError: Bad ``kd`` / ``epochs``, ``kd`` without a teacher, or an empty loader.
    """
    if kd not in KD_MODES:
        raise ValueError(f"kd must be one of {KD_MODES}, got {kd!r}")
    if kd is not None and teacher is None:
        raise ValueError(f"kd={kd!r} needs a teacher model")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    history: dict = {"loss": [], "val_acc": [], "resumed_from": 0}
    if epochs == 0:
        return history
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty")
    base = _unwrap(model)
    device = next(base.parameters()).device
    amp = device.type == "cuda" if amp is None else amp
    net = base
    if is_distributed():
        net = nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    total, warm = epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed + 7919 * rank())  # augmentation
    loader_gen = _loader_generator(train_loader)
    start = 0
    ckpt_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir is not None else None
    if ckpt_path and resume and os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        base.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = {"loss": list(state["loss"]), "val_acc": list(state["val_acc"]), "resumed_from": int(state["epoch"]) + 1}
        start = history["resumed_from"]
        gen.set_state(state["aug_rng"])
        if loader_gen is not None and "loader_rng" in state:
            loader_gen.set_state(state["loader_rng"])
    if teacher is not None:
        teacher.eval()
    was_training = base.training
    bar = tqdm(total=total, initial=start * steps_per_epoch, desc=desc, disable=not (progress and is_main()), leave=False)
    try:
        for epoch in range(start, epochs):
            base.train()
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            running = torch.zeros(2, dtype=torch.float64)
            for x, y in train_loader:
                x, y = random_shift(x, max_shift, gen).to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(x)
                    with torch.no_grad():
                        t_out = teacher(x) if (teacher is not None and kd is not None) else None
                    loss = distillation_loss(
                        out.float(), y, None if t_out is None else t_out.float(), kd, kd_alpha, kd_temperature, label_smoothing
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if step_hook is not None:
                    step_hook(base, loss)
                opt.step()
                sched.step()
                running += torch.tensor([float(loss.detach()) * len(y), len(y)], dtype=torch.float64)
                bar.update(1)
                bar.set_postfix(loss=f"{running[0] / running[1]:.3f}")
            all_reduce_sum(running)
            history["loss"].append(float(running[0] / running[1]))
            history["val_acc"].append(_accuracy(base, val_loader, device) if val_loader is not None else None)
            if epoch_hook is not None:
                epoch_hook(epoch)
            if ckpt_path and is_main():
                os.makedirs(checkpoint_dir, exist_ok=True)
                tmp = ckpt_path + ".tmp"
                state = {
                    "epoch": epoch,
                    "model": base.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "loss": history["loss"],
                    "val_acc": history["val_acc"],
                    "aug_rng": gen.get_state(),
                }
                if loader_gen is not None:
                    state["loader_rng"] = loader_gen.get_state()
                torch.save(state, tmp)
                os.replace(tmp, ckpt_path)
            barrier()
    finally:
        bar.close()
        base.train(was_training)
    return history


@torch.no_grad()
def _accuracy(model: nn.Module, loader: Iterable, device: torch.device) -> float:
    was = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    try:
        for x, y in loader:
            counts += torch.tensor([float((model(x.to(device)).argmax(-1).cpu() == y).sum()), len(y)], dtype=torch.float64)
    finally:
        model.train(was)
    all_reduce_sum(counts)
    return float(counts[0] / counts[1]) if counts[1] else float("nan")
