"""What ``tp-vit prune`` and ``tp-vit bench`` share: console lines, the workload of the options, the structure table."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import NoReturn

from torch import nn

from ..hosts import host_for
from .options import WorkloadOptions
from .workload import Workload, load_workload

__all__ = ["usage_error", "phase", "show_bars", "load_options_workload", "Structure"]


def usage_error(message: str) -> NoReturn:
    """Report a usage problem found after parsing (one line, exit code 2) and stop."""
    print(f"tp-vit: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def phase(opts: WorkloadOptions, message: str) -> None:
    """One line per phase on stderr (what progress bars become when output is piped), unless ``quiet``."""
    if not opts.quiet:
        print(f"[tp-vit] {message}", file=sys.stderr, flush=True)


def show_bars(opts: WorkloadOptions) -> bool:
    """Tqdm bars only on a terminal: piped output gets the phase lines instead of one huge line."""
    return not opts.quiet and sys.stderr.isatty()


def load_options_workload(opts: WorkloadOptions) -> Workload:
    """The workload of ``opts``; a checkpoint or data problem is a usage error (exit 2)."""
    phase(opts, "loading the model" + (" and data" if opts.data_path or not opts.model else ""))
    try:
        return load_workload(
            opts.model,
            opts.pretrained,
            opts.data_path,
            batch_size=getattr(opts, "batch_size", 64),
            eval_batches=getattr(opts, "eval_batches", None),
            embedded_epochs=opts.embedded_epochs,
            retrain=getattr(opts, "retrain", False),
            seed=opts.seed,
            progress=show_bars(opts),
            checkpoint=opts.checkpoint,
        )
    except (ValueError, FileNotFoundError) as e:
        usage_error(str(e))


@dataclass
class Structure:
    """What is left per block: heads, head width, MLP hidden width, and the input dims attention and MLP read."""

    heads: list[int]
    head_dims: list[int]
    mlp: list[int]
    inputs: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module) -> Structure:
        host = host_for(model)
        blocks = host.block_layers(model)
        layouts = [host.head_layout(b.attn) for b in blocks]
        mlp = [b.fc2.in_features if b.fc2 is not None else 0 for b in blocks]  # hidden width (MLP or SwiGLU)
        inputs = [(b.embed_dim, b.fc1.in_features if b.fc1 is not None else b.embed_dim) for b in blocks]
        return cls([h for h, _ in layouts], [d for _, d in layouts], mlp, inputs)
