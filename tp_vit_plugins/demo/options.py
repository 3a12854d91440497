"""Typed options of ``tp-vit prune`` and ``tp-vit bench`` (the CLI fills them; the work layer reads them).

No heavy imports here: :mod:`.cli` builds these objects before torch is loaded.
Vocabulary: a ``*pruning_ratio`` counts what is removed, a ``*keep_ratio`` what is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import REGISTRY

__all__ = ["WorkloadOptions", "PruneOptions", "BenchOptions", "from_namespace"]


@dataclass(frozen=True)
class WorkloadOptions:
    """What both commands load and how they run.

    Attributes:
        model: timm model name or a transformers ``save_pretrained`` directory; ``None``: the embedded MNIST ViT.
        pretrained: Load timm's pretrained weights.
        checkpoint: Local weights (safetensors / torch state dict / ``save_pruned`` directory).
        data_path: ImageFolder root with ``train/`` and ``val/``.
        embedded_epochs: Train the embedded model with this many epochs instead of the shipped one.
        seed: Seed of data order, calibration subset and training.
        threads: CPU threads for torch (``None``: torch's choice).
        calib_batches: Calibration batches for data-driven criteria.
        lr: Peak learning rate of sparse training and fine-tuning.
        quiet: No progress bars or phase lines.
    """

    model: str | None = None
    pretrained: bool = False
    checkpoint: str | None = None
    data_path: str | None = None
    embedded_epochs: int | None = None
    seed: int = 0
    threads: int | None = None
    calib_batches: int = 8
    lr: float = 5e-4
    quiet: bool = False


@dataclass(frozen=True)
class PruneOptions(WorkloadOptions):
    """``tp-vit prune``: one method, one budget, a before/after report (``tp-vit prune --help`` documents each).

    ``method_options`` are fields of the method's options dataclass given on the command line
    (they override the preset's; ``preset=None``: the library's defaults). ``head_pruning_ratio``
    and ``admm_epochs`` left ``None`` get the method's default (its entry in
    :data:`~tp_vit_plugins.demo.names.REGISTRY`).
    """

    method: str = "taylor"
    head_pruning_ratio: float | None = None
    pruning_ratio: float = 0.3
    macs_keep_ratio: float | None = None
    latency_keep_ratio: float | None = None
    budget_structure: str = "both"
    global_pruning: bool = False
    prune_head_dims: bool = False
    prune_embed_dim: bool = False
    prune_mlp: bool = True
    preset: str | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    sparse_epochs: int = 3
    gate_histogram: str | None = None
    admm_epochs: int | None = None
    admm_rounds: int | None = None
    params_pruning_ratio: float = 0.4
    finetune_epochs: int = 2
    eval_batches: int | None = None
    batch_size: int = 64
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency: bool = True
    device: str = "cpu"
    retrain: bool = False
    out: str | None = None
    json_path: str | None = None
    export_path: str | None = None

    def __post_init__(self) -> None:
        entry = REGISTRY.get(self.method)
        for dest, fallback in (("head_pruning_ratio", 0.5), ("admm_epochs", 0)):
            if getattr(self, dest) is None:
                value = entry.default(dest, self.preset, fallback) if entry is not None else fallback
                object.__setattr__(self, dest, value)

    @property
    def budget(self) -> tuple[str, float] | None:
        """``("macs" | "latency", share kept)`` when a keep-ratio budget is given, else ``None``."""
        if self.macs_keep_ratio is not None:
            return "macs", self.macs_keep_ratio
        if self.latency_keep_ratio is not None:
            return "latency", self.latency_keep_ratio
        return None


@dataclass(frozen=True)
class BenchOptions(WorkloadOptions):
    """``tp-vit bench``: every method at the same MACs budgets, or the zoo protocols (``--zoo``)."""

    methods: tuple[str, ...] = ()
    macs_keep_ratios: tuple[float, ...] = (0.8, 0.6)
    seeds: int | None = None
    finetune_epochs: int = 1
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    out: str = "bench_out"
    zoo: bool = False
    quick: bool = False
    protocols: tuple[str, ...] = ()
    pipeline_methods: tuple[str, ...] | None = None
    token_methods: tuple[str, ...] | None = None
    zoo_epochs: int = 2
    command_line: str = field(default="", compare=False)


def _tuple(value: object) -> object:
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if isinstance(value, list):
        return tuple(value)
    return value


def from_namespace(cls: type, args: argparse.Namespace, **extra: object) -> PruneOptions | BenchOptions:
    """The options object of parsed ``args`` (comma lists and lists become tuples)."""
    values = vars(args)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = _tuple(v) if "tuple" in str(f.type) and v is not None else v
    return cls(**kwargs, **extra)
