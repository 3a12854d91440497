"""Deploy what you prune: ONNX export checked in onnxruntime, and onnxruntime timing.

:func:`export_onnx` exports any model this library prunes — after :class:`~tp_vit_plugins.ViTPruner`,
GOHSP, VTP or a stock tp pruner with :func:`~tp_vit_plugins.vit_pruning_kwargs`, with or without
a CP-ViT cascade attached — with a dynamic batch dimension (``torch.onnx.export(dynamo=True)``),
then runs the file in onnxruntime against the model's own output and reports how far apart
they are. The cascade's token selection uses ``topk`` and index arithmetic only, so it exports.

Needs the optional ``[export]`` extra (``onnx``, ``onnxruntime``, ``onnxscript``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.extras import install_hint
from .core.metrics import Timing, alternate, as_logits

__all__ = ["OnnxExport", "export_onnx", "onnx_session", "onnx_latency", "alternated_onnx_speedup"]

_INSTALL = install_hint("export")


def _require(*modules: str) -> None:
    """Import the optional export dependencies, or say how to install them (before anything is written)."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {_INSTALL}")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces the model.

    Attributes:
        path: The ``.onnx`` file.
        max_abs_diff: Largest ``|onnxruntime - eager|`` over the checked batches (``nan`` if unchecked).
        checked_batch_sizes: Batch sizes run in onnxruntime against the model.
        size_bytes: Size of the file.
    """

    path: str
    max_abs_diff: float
    checked_batch_sizes: tuple[int, ...]
    size_bytes: int


class _Logits(nn.Module):
    """Wraps a model whose output is not a plain tensor, so the ONNX graph has one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_logits(self.model(x))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's informational log lines (warnings about our graph still surface as errors)."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads``: intra-op threads, ``None``: its default).

    Raises:
        ImportError: onnxruntime is not installed (the message says how to install it).
    """
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, x: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | os.PathLike,
    *,
    check_batch_sizes: Sequence[int] = (1, 3),
    atol: float | None = 1e-4,
    opset: int | None = None,
) -> OnnxExport:
    """Export ``model`` to ONNX with a dynamic batch, then check it in onnxruntime against the model.

    Example::

        tpv.ViTPruner(model, example, head_pruning_ratio=0.5, pruning_ratio=0.3).step()
        tpv.apply_cascade(model, keep_ratio=0.7)            # optional: tokens too
        report = tpv.export_onnx(model, example, "deit_pruned.onnx")
        print(report.max_abs_diff)                          # onnxruntime vs eager

    The model is exported in eval mode (its training flag is restored after) and is not
    otherwise changed. A cascade is exported as part of the graph.

    Args:
        model: A timm ViT (pruned or not, cascaded or not), or any module returning a tensor
            (or ``.logits``) for an image batch.
        example_inputs: ``[B, C, H, W]``; its batch size does not fix the file's (dynamic).
        path: Where the ``.onnx`` file goes (its directory is created).
        check_batch_sizes: Batch sizes run in onnxruntime and compared with the model (random
            inputs of the example's shape); empty: no check.
        atol: Largest accepted ``|onnxruntime - eager|``; ``None``: only report it.
        opset: ONNX opset (``None``: the exporter's default).

    Returns:
        An :class:`OnnxExport` with the measured difference.

    Raises:
        ImportError: ``onnx`` / ``onnxruntime`` / ``onnxscript`` missing (says how to install them).
        ValueError: ``example_inputs`` is not ``[B, C, H, W]``, or onnxruntime differs from the
            model by more than ``atol`` (the file is kept for inspection).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    _require("onnx", "onnxscript", *(("onnxruntime",) if check_batch_sizes else ()))
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise ValueError(f"example_inputs must be an image batch [B, C, H, W], got {getattr(example_inputs, 'shape', None)}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    x = example_inputs.detach()
    if x.shape[0] == 1:  # torch.export fixes size-1 dims: trace with two images, the file stays dynamic
        x = torch.cat([x, x])
    with _eval_mode(model), torch.no_grad():
        probe = model(x[:1])
        net = model if isinstance(probe, torch.Tensor) else _Logits(model)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with _quiet_exporter():
            kwargs = {"opset_version": opset} if opset is not None else {}
            program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False, **kwargs)
        program.save(path)
        diff, checked = float("nan"), tuple(int(b) for b in check_batch_sizes)
        if checked:
            session = onnx_session(path)
            gen = torch.Generator().manual_seed(0)
            diffs = []
            for b in checked:
                xb = torch.randn(b, *x.shape[1:], generator=gen, dtype=x.dtype)
                diffs.append(float((_run(session, xb) - as_logits(model(xb)).float()).abs().max()))
            diff = max(diffs)
    report = OnnxExport(path, diff, checked, os.path.getsize(path))
    if atol is not None and checked and not diff <= atol:
        raise ValueError(
            f"onnxruntime differs from the model by {diff:.3g} (> atol={atol:g}) at batch sizes {list(checked)}; "
            f"the file is kept at {path} for inspection"
        )
    return report


def onnx_latency(
    path: str | os.PathLike, example_inputs: torch.Tensor, batch_size: int, threads: int | None = None, min_run_time: float = 0.2
) -> float:
    """Median seconds per batch of ``batch_size`` images in onnxruntime (CPU)."""
    session = onnx_session(path, threads)
    return _time_session(session, example_inputs, batch_size, min_run_time)


def _time_session(session: Any, example: torch.Tensor, batch_size: int, min_run_time: float, warmup: int = 2) -> float:
    x = example[:1].expand(batch_size, *example.shape[1:]).contiguous().cpu().numpy()
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < min_run_time:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternated_onnx_speedup(
    dense_path: str | os.PathLike,
    reduced_path: str | os.PathLike,
    example_inputs: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    rounds: int = 5,
    threads: int | None = None,
    min_run_time: float = 0.2,
) -> dict[int, Timing]:
    """Dense and reduced ONNX files timed one after the other in every round (drift cancels).

    Returns:
        ``{batch_size: Timing(dense, reduced, speedup, spread)}`` (:func:`~tp_vit_plugins.core.metrics.alternate`).
    """
    dense, reduced = onnx_session(dense_path, threads), onnx_session(reduced_path, threads)
    return {
        bs: alternate(
            lambda warm, bs=bs: _time_session(dense, example_inputs, bs, min_run_time, warm),
            lambda warm, bs=bs: _time_session(reduced, example_inputs, bs, min_run_time, warm),
            rounds,
        )
        for bs in batch_sizes
    }
