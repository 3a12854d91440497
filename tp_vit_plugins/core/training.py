"""The library's one training loop: KD from the dense model, AdamW + cosine, resume, torchrun/DDP.

:func:`finetune` trains the embedded demo models, runs the methods' sparse-training phases
(GOHSP's ADMM, VTP's gates: ``step_hook`` / ``epoch_hook``) and fine-tunes pruned models;
:func:`evaluate` measures top-1 accuracy. Under ``torchrun`` (after :func:`tp_vit_plugins.core.distributed.init_from_env`) the
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
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .distributed import all_reduce_sum, barrier, is_distributed, is_main, rank
from .metrics import as_logits, model_device

__all__ = ["finetune", "evaluate", "distillation_loss", "random_shift", "add_to_grad", "KD_MODES", "CHECKPOINT_NAME"]

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


@torch.no_grad()
def add_to_grad(p: nn.Parameter, g: torch.Tensor) -> None:
    """``p.grad += g`` (creating the gradient when there is none): the regularisers' hook."""
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding), a cheap augmentation.

    Args:
        x: Images ``[B, C, H, W]``.
        max_shift: Largest shift in pixels along each axis; 0 returns ``x`` unchanged.
        generator: Optional random generator for reproducibility.

    Returns:
        Shifted images ``[B, C, H, W]``.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * max_shift)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return torch.gather(out, 3, cols)


def _loader_generator(loader: Iterable) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class _Run:
    """Everything one :func:`finetune` call carries from epoch to epoch."""

    base: nn.Module
    net: nn.Module
    device: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    aug_gen: torch.Generator
    loader_gen: torch.Generator | None
    history: dict
    start: int = 0

    def state(self, epoch: int) -> dict:
        state = {
            "epoch": epoch,
            "model": self.base.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "loss": self.history["loss"],
            "val_acc": self.history["val_acc"],
            "aug_rng": self.aug_gen.get_state(),
        }
        if self.loader_gen is not None:
            state["loader_rng"] = self.loader_gen.get_state()
        return state

    def load(self, path: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.base.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.start = int(state["epoch"]) + 1
        self.history = {"loss": list(state["loss"]), "val_acc": list(state["val_acc"]), "resumed_from": self.start}
        self.aug_gen.set_state(state["aug_rng"])
        if self.loader_gen is not None and "loader_rng" in state:
            self.loader_gen.set_state(state["loader_rng"])


def _cosine_schedule(opt: torch.optim.Optimizer, total: int, warm: int, offset: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warm`` steps, then cosine decay to 0 at ``total``; this run starts at step ``offset``."""

    def schedule(step: int) -> float:
        step += offset
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _new_run(
    model: nn.Module,
    loader: Iterable,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    seed: int,
    offset_steps: int = 0,
) -> _Run:
    """Optimizer, schedule, generators and (under torchrun) the DDP wrapper of one :func:`finetune` call."""
    base = _unwrap(model)
    device = model_device(base)
    net = base
    if is_distributed():
        net = nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = _cosine_schedule(opt, total_steps, max(1, warmup_steps), offset_steps)
    aug_gen = torch.Generator().manual_seed(seed + 7919 * rank())  # augmentation
    history = {"loss": [], "val_acc": [], "resumed_from": 0}
    return _Run(base, net, device, opt, sched, aug_gen, _loader_generator(loader), history)


def _save_checkpoint(run: _Run, path: str, epoch: int) -> None:
    """Atomically write ``run``'s state after ``epoch`` (rank 0 only)."""
    if not is_main():
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(run.state(epoch), tmp)
    os.replace(tmp, path)


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
    augment: Callable[..., torch.Tensor] | None = None,
    amp: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    seed: int = 0,
    step_hook: Callable[[nn.Module, torch.Tensor], None] | None = None,
    epoch_hook: Callable[[int], None] | None = None,
    schedule_span: tuple[int, int] | None = None,
    desc: str = "fine-tune",
    progress: bool = True,
) -> dict:
    """Train ``model`` (dense, gated or pruned), optionally distilling from ``teacher``.

    Args:
        model: The student, trained in place (wrapped in DDP while a process group is active).
        train_loader: Yields ``(images, labels)``; use a ``DistributedSampler`` under torchrun.
        val_loader: Optional; accuracy is measured after every epoch (all-reduced over ranks).
        epochs: Total epochs (also when resuming).
        teacher: Dense teacher for ``kd`` (kept in eval mode, no gradients).
        kd: ``None``, ``"soft"`` or ``"hard"``.
        kd_alpha: Weight of the distillation term (see :func:`distillation_loss`).
        kd_temperature: Softmax temperature of soft distillation.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: Linear warm-up before the cosine decay.
        label_smoothing: Label smoothing of the ground-truth loss.
        augment: ``augment(images, generator=g) -> images``, applied to every training batch
            with a seeded generator (e.g. ``functools.partial(random_shift, max_shift=2)``); ``None``: none.
        amp: bfloat16 autocast; default on for CUDA models, off on CPU.
        checkpoint_dir: Write ``last.pt`` after every epoch (rank 0) and resume from it.
        resume: Resume from ``checkpoint_dir/last.pt`` when it exists.
        seed: Base seed for data order and augmentation.
        step_hook: ``step_hook(model, loss)`` after backward, before the optimizer step
            (e.g. a pruner's ``regularize``).
        epoch_hook: ``epoch_hook(epoch)`` after every epoch (e.g. ``update_regularizer``).
        schedule_span: ``(done, total)``: this call runs epochs ``done .. done + epochs`` of
            one warm-up + cosine schedule over ``total`` epochs, so a sparse-training call and
            the fine-tune after the prune share one learning-rate schedule instead of each
            restarting at the peak. ``None``: the schedule spans this call (``(0, epochs)``).
        desc: Progress-bar label.
        progress: Show a tqdm bar (rank 0 only).

    Returns:
        ``{"loss": [per-epoch mean loss], "val_acc": [per-epoch accuracy or None], "resumed_from": int}``.

    Raises:
        ValueError: Bad ``kd`` / ``epochs`` / ``schedule_span``, ``kd`` without a teacher, or
            an empty loader.
    """
    if kd not in KD_MODES:
        raise ValueError(f"kd must be one of {KD_MODES}, got {kd!r}")
    if kd is not None and teacher is None:
        raise ValueError(f"kd={kd!r} needs a teacher model")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    done, total = (0, epochs) if schedule_span is None else schedule_span
    if not (0 <= done and done + epochs <= total):
        raise ValueError(
            f"schedule_span=(done, total) needs 0 <= done and done + epochs <= total, got {schedule_span} with epochs={epochs}"
        )
    if epochs == 0:
        return {"loss": [], "val_acc": [], "resumed_from": 0}
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty")
    warm = int(warmup_epochs * steps_per_epoch)
    run = _new_run(model, train_loader, lr, weight_decay, total * steps_per_epoch, warm, seed, done * steps_per_epoch)
    base, device = run.base, run.device
    amp = device.type == "cuda" if amp is None else amp
    ckpt_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir is not None else None
    if ckpt_path and resume and os.path.isfile(ckpt_path):
        run.load(ckpt_path)
    if teacher is not None:
        teacher.eval()
    loss_fn = partial(distillation_loss, kd=kd, alpha=kd_alpha, temperature=kd_temperature, label_smoothing=label_smoothing)
    was_training = base.training
    show = progress and is_main()
    bar = tqdm(total=epochs * steps_per_epoch, initial=run.start * steps_per_epoch, desc=desc, disable=not show, leave=False)
    try:
        for epoch in range(run.start, epochs):
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            mean_loss = _train_epoch(
                run, train_loader, teacher if kd is not None else None, loss_fn, augment, amp, step_hook, bar
            )
            run.history["loss"].append(mean_loss)
            run.history["val_acc"].append(_accuracy(base, val_loader, device) if val_loader is not None else None)
            if epoch_hook is not None:
                epoch_hook(epoch)
            if ckpt_path:
                _save_checkpoint(run, ckpt_path, epoch)
            barrier()
    finally:
        bar.close()
        base.train(was_training)
    return run.history


def _train_epoch(
    run: _Run,
    loader: Iterable,
    teacher: nn.Module | None,
    loss_fn: Callable[..., torch.Tensor],
    augment: Callable[..., torch.Tensor] | None,
    amp: bool,
    step_hook: Callable[[nn.Module, torch.Tensor], None] | None,
    bar: tqdm,
) -> float:
    """One epoch of ``run``; returns the mean loss over all ranks."""
    run.base.train()
    running = torch.zeros(2, dtype=torch.float64)
    for x, y in loader:
        x = augment(x, generator=run.aug_gen) if augment is not None else x
        x, y = x.to(run.device), y.to(run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
            out = as_logits(run.net(x))
            with torch.no_grad():
                t_out = as_logits(teacher(x)).float() if teacher is not None else None
            loss = loss_fn(out.float(), y, t_out)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if step_hook is not None:
            step_hook(run.base, loss)
        run.opt.step()
        run.sched.step()
        running += torch.tensor([float(loss.detach()) * len(y), len(y)], dtype=torch.float64)
        bar.update(1)
        bar.set_postfix(loss=f"{running[0] / running[1]:.3f}")
    all_reduce_sum(running)
    return float(running[0] / running[1])


@torch.no_grad()
def _accuracy(model: nn.Module, loader: Iterable, device: torch.device) -> float:
    was = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    try:
        for x, y in loader:
            counts += torch.tensor(
                [float((as_logits(model(x.to(device))).argmax(-1).cpu() == y).sum()), len(y)], dtype=torch.float64
            )
    finally:
        model.train(was)
    all_reduce_sum(counts)
    return float(counts[0] / counts[1]) if counts[1] else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, desc: str = "eval", progress: bool = True) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, restored afterwards).

    Args:
        model: Classifier returning logits ``[B, num_classes]``.
        loader: Yields ``(images, labels)``.
        desc: Progress-bar label.
        progress: Show a tqdm bar.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: The loader yielded no samples.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = total = 0
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            pred = as_logits(model(x.to(device))).argmax(-1)
            correct += int((pred.cpu() == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return correct / total
