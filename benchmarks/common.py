"""Shared helpers for the benchmark scripts (not part of the library API)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import evaluate
from tp_vit_plugins.demo.data import make_loaders
from tp_vit_plugins.demo.embedded import embedded_model

RESULTS = os.path.join(os.path.dirname(__file__), "RESULTS.md")


def load_embedded():
    model, split, meta = embedded_model(progress=True)
    return model.eval(), split, meta


def calib_loader(split, seed: int, batches: int, batch_size: int = 64) -> DataLoader:
    """The same calibration batches for every method of one seed: a seeded subset of train."""
    g = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(len(split.y_train), generator=g)[: batches * batch_size].tolist()
    ds = Subset(torch.utils.data.TensorDataset(split.x_train, split.y_train), idx)
    return DataLoader(ds, batch_size=batch_size)


def loaders(split, seed: int):
    return make_loaders(split, batch_size=64, seed=seed)


def acc(model, test_loader) -> float:
    return 100.0 * evaluate(model, test_loader, progress=False)


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def write_section(name: str, body: str) -> None:
    """Replace (or append) the ``## name`` section of RESULTS.md."""
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    start = text.find(f"\n## {name}\n")
    block = f"\n## {name}\n\n{body.strip()}\n"
    if start == -1:
        text = text.rstrip("\n") + "\n" + block
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + block + (text[end:] if end != -1 else "")
    with open(RESULTS, "w") as f:
        f.write(text)


__all__ = ["tpv", "load_embedded", "calib_loader", "loaders", "acc", "mean_std", "timed", "write_section"]
