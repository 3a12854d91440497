"""Thin helpers over ``torch.distributed`` (PyTorch's own engine; nothing home-made).

Every helper is a no-op in a single process, so library code can call them unconditionally.
Under ``torchrun`` call :func:`init_from_env` once (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "all_reduce_sum",
    "all_reduce_dict",
    "all_reduce_counted",
    "init_from_env",
    "barrier",
]


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Rank of the current process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (the process that prints, shows progress bars and writes files)."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes in place (float64 stays float64) and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_dict(stats: Mapping[Hashable, torch.Tensor], device: torch.device | None = None) -> dict[Hashable, torch.Tensor]:
    """Sum a dict of tensors over processes; a key a process lacks (it saw no batch) counts as zeros.

    The processes first agree on the union of keys with their shapes and dtypes
    (``all_gather_object``), then sum everything packed into one float64 buffer in one key
    order, so every process issues the same collectives whatever data it saw (a process with an
    empty loader no longer leaves the others waiting). In one process: a shallow copy.

    Args:
        stats: Per-key tensors; keys picklable, with a ``repr`` that is the same in every process.
        device: Where the buffer lives (``None``: the first local tensor's device, else CPU; with
            NCCL pass the CUDA device, a process without tensors has no other hint).

    Returns:
        ``{key: summed tensor}`` for every key any process held, in each key's shape and dtype.

    Raises:
        ValueError: Two processes hold one key with different shapes or dtypes.
    """
    if not is_distributed():
        return dict(stats)
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, {k: (tuple(t.shape), t.dtype) for k, t in stats.items()})
    layout: dict = {}
    for part in everyone:
        for key, spec in part.items():
            if layout.setdefault(key, spec) != spec:
                raise ValueError(f"processes disagree on the shape / dtype of {key!r}: {layout[key]} vs {spec}")
    device = device or next((t.device for t in stats.values()), torch.device("cpu"))
    keys = sorted(layout, key=repr)
    zeros = {
        k: torch.zeros(math.prod(spec[0]), dtype=torch.float64, device=device) for k, spec in layout.items() if k not in stats
    }
    parts = [stats[k].reshape(-1).to(device, torch.float64) if k in stats else zeros[k] for k in keys]
    flat = all_reduce_sum(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device))
    out, start = {}, 0
    for key in keys:
        shape, dtype = layout[key]
        n = math.prod(shape)
        out[key] = flat[start : start + n].reshape(shape).to(dtype)
        start += n
    return out


def all_reduce_counted(
    stats: Mapping[Hashable, torch.Tensor], count: float, device: torch.device | None = None
) -> tuple[dict[Hashable, torch.Tensor], float]:
    """:func:`all_reduce_dict` of ``stats`` together with the number of items they sum (one collective).

    Returns:
        ``(summed stats, total count)``; the count is 0 when no process saw any item.
    """
    key = ("__count__",)
    both = {**stats, key: torch.tensor([float(count)], dtype=torch.float64)}
    summed = all_reduce_dict(both, device)
    return summed, float(summed.pop(key).item())


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Args:
        backend: ``"gloo"`` / ``"nccl"``; default nccl when CUDA is available, else gloo.

    Returns:
        ``True`` when a multi-process group is (now) active, ``False`` for a plain run.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True
