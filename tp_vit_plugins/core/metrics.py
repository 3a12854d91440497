"""Model cost measurements: MACs, parameters, latency.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a real forward pass
with eager attention forced on timm attention modules, so the ``q @ k^T`` and ``attn @ v``
products are counted the same way for every method (MACs = FLOPs / 2). Latency uses
``torch.utils.benchmark`` on CPU and CUDA events on GPU: warm-up first, then the median.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..hosts import fused_attn_off, host_for

__all__ = [
    "as_logits",
    "model_device",
    "count_macs",
    "count_params",
    "measure_latency",
    "alternate",
    "alternated_speedup",
    "Timing",
    "fused_attn_off",
]


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Run every attention on its eager path while counting.

    Modules with a ``fused_attn`` flag (timm's attention, attention pools, CaiT's class
    attention) and, for a model a host supports, the host's own switch (transformers' attention
    implementation): ``FlopCounterMode`` counts the eager matmuls (not every fused kernel).
    """
    flagged = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    with contextlib.ExitStack() as stack:
        if not flagged and (host := host_for(model)).is_supported(model):
            stack.enter_context(host.eager_attention(model))
        stack.enter_context(fused_attn_off(flagged))
        yield


def _torch_benchmark():
    """``torch.utils.benchmark``, imported on first use.

    Importing it pulls in ``torch.utils.cpp_extension``, which logs "No CUDA runtime is found" on
    machines with CUDA wheels but no GPU; a pruning library should not print that on import.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        logger.setLevel(level)
    return benchmark


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs``.

    Args:
        model: Any module; timm attention runs eagerly during the count.
        example_inputs: Input batch, e.g. ``[1, C, H, W]``; MACs scale with its batch size.

    Returns:
        Total MACs (``FlopCounterMode`` FLOPs / 2).
    """
    was_training = model.training
    # FlopCounterMode's module tracker fails on a view of a parameter made without grad (CaiT's
    # class-token ``expand`` in its class-attention blocks: requires_grad, no grad_fn), so the
    # parameters stop requiring grad while counting and get their flags back on every path.
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(False)
        with _eager(model), FlopCounterMode(display=False) as counter:
            model(example_inputs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def cuda_event_median(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``run``, each timed with a pair of CUDA events.

    The events are recorded on the current stream around ``run()`` and read after a
    device-wide ``torch.cuda.synchronize()``, so asynchronous kernel launches are included.

    Args:
        run: The work to time (e.g. ``lambda: model(x)`` with ``x`` on the GPU).
        repeats: Timed calls, >= 1.

    Returns:
        Median elapsed time in seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
    return statistics.median(times)


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    min_run_time: float = 1.0,
    warmup: int = 3,
    repeats: int = 30,
    num_threads: int | None = None,
) -> dict[int, float]:
    """Median forward latency in seconds for each batch size.

    On CPU the timing is ``torch.utils.benchmark.Timer.blocked_autorange`` (median of blocks
    covering ``min_run_time`` seconds); on CUDA it is the median of ``repeats`` CUDA-event
    timed runs. ``warmup`` untimed runs come first in both cases.

    Args:
        model: Model to time (eval mode during the measurement, restored afterwards).
        example_input: One input ``[1, C, H, W]`` (or any batch; only ``[0]`` is used) on the
            device to time on.
        batch_sizes: Batch sizes to time.
        min_run_time: CPU: seconds of timed runs per batch size.
        warmup: Untimed runs before timing.
        repeats: CUDA: timed runs per batch size.
        num_threads: CPU threads; defaults to ``torch.get_num_threads()``.

    Returns:
        ``{batch_size: median_seconds}``.

    Raises:
        ValueError: A batch size below 1, ``repeats`` below 1 or ``min_run_time`` not positive.
    """
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if repeats < 1 or min_run_time <= 0:
        raise ValueError(f"repeats must be >= 1 and min_run_time > 0, got {repeats} and {min_run_time}")
    was_training = model.training
    model.eval()
    sample = example_input[:1]
    out: dict[int, float] = {}
    try:
        for b in batch_sizes:
            x = sample.expand(int(b), *sample.shape[1:]).contiguous()
            for _ in range(warmup):
                model(x)
            if x.is_cuda:
                out[int(b)] = cuda_event_median(functools.partial(model, x), repeats)
            else:
                timer = _torch_benchmark().Timer(
                    stmt="model(x)",
                    globals={"model": model, "x": x},
                    num_threads=num_threads or torch.get_num_threads(),
                )
                out[int(b)] = timer.blocked_autorange(min_run_time=min_run_time).median
    finally:
        model.train(was_training)
    return out


def as_logits(output: object) -> torch.Tensor:
    """The logits of a model's output: the tensor, a ``ModelOutput``'s ``logits`` (transformers), or a tuple's first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"expected logits (a tensor, an output with .logits, or a tuple of tensors), got {type(output).__name__}")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class Timing(NamedTuple):
    """One batch size of :func:`alternated_speedup` (seconds per batch; ``spread`` of the per-round speed-ups)."""

    dense: float
    reduced: float
    speedup: float
    spread: float


def alternated_speedup(
    dense: nn.Module, reduced: nn.Module, example_input: torch.Tensor, batch_sizes: Sequence[int] = (1, 64), rounds: int = 3,
    min_run_time: float = 0.05,
) -> dict[int, Timing]:  # fmt: skip
    """Dense and reduced latency timed one after the other in every round (machine drift cancels).

    Args:
        dense: The reference model.
        reduced: The pruned / token-reduced model.
        example_input: One input (see :func:`measure_latency`).
        batch_sizes: Batch sizes to time.
        rounds: Alternating rounds; the medians over rounds are returned.
        min_run_time: CPU seconds per measurement.

    Returns:
        ``{batch_size: Timing(dense, reduced, speedup, spread)}``: median seconds of each model,
        the median over rounds of the per-round ratio ``dense / reduced``, and the spread of
        those ratios, ``(max - min) / median`` (large when the machine is busy or threads are
        oversubscribed: the speed-up is then not to be trusted).

    Raises:
        ValueError: ``rounds`` below 1 (and whatever :func:`measure_latency` refuses).
    """
    return {
        bs: alternate(
            lambda warm, bs=bs: measure_latency(dense, example_input, (bs,), min_run_time=min_run_time, warmup=warm)[bs],
            lambda warm, bs=bs: measure_latency(reduced, example_input, (bs,), min_run_time=min_run_time, warmup=warm)[bs],
            rounds,
        )
        for bs in batch_sizes
    }


def alternate(time_dense: Callable[[int], float], time_reduced: Callable[[int], float], rounds: int = 3) -> Timing:
    """Two timings taken one after the other in every round, so machine drift hits both alike.

    Args:
        time_dense: ``time_dense(warmup) -> seconds`` (``warmup`` untimed runs first: 2 in the first round, then 0).
        time_reduced: The same for the other model.
        rounds: Alternating rounds.

    Returns:
        :class:`Timing`: the medians of each, the median per-round ratio ``dense / reduced`` and
        ``(max - min) / median`` of those ratios.

    Raises:
        ValueError: ``rounds`` below 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    d_times, r_times, ratios = [], [], []
    for i in range(rounds):
        warm = 2 if i == 0 else 0
        d, r = time_dense(warm), time_reduced(warm)
        d_times.append(d)
        r_times.append(r)
        ratios.append(d / r)
    mid = statistics.median(ratios)
    return Timing(statistics.median(d_times), statistics.median(r_times), mid, (max(ratios) - min(ratios)) / mid)
