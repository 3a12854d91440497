"""Utilities around the pruners: training, evaluation, measurement, attention capture, support checks.

None of these is needed to prune; they are what a pruning script usually wants next to it:

* :func:`finetune` / :func:`evaluate` — one training loop (AdamW, warm-up + cosine, optional
  distillation, checkpoint/resume, torchrun) and top-1 accuracy;
* :func:`measure_latency`, :func:`count_params` — timing and size (MACs are
  :func:`tp_vit_plugins.count_macs`);
* :func:`attention_maps`, :func:`eager_attention` — attention probabilities ``[B, H, N, N]``
  per block, and the eager path forced inside a ``with`` block (flags restored, hooks removed);
* :func:`check_supported` / :func:`is_supported` — the support policy, checked before anything changes.
"""

from __future__ import annotations

from .core.glue import attention_maps, check_supported, eager_attention, is_supported
from .core.metrics import count_params, measure_latency
from .core.training import evaluate, finetune
from .hosts import AttentionMaps

__all__ = [
    "AttentionMaps",
    "attention_maps",
    "check_supported",
    "count_params",
    "eager_attention",
    "evaluate",
    "finetune",
    "is_supported",
    "measure_latency",
]
