"""The small core every method builds on.

* :mod:`.adapter` — the timm adapter (tp kwargs, attention sync, attention maps, block layers);
* :mod:`.pruner` — :class:`ViTPruner`, a ``tp.pruner.BasePruner`` with exact head counts;
* :mod:`.head_importance` — the protocol of the data-driven head criteria;
* :mod:`.calibration` — the one calibration path (attention maps, gradient passes);
* :mod:`.training` — the one training loop (:func:`finetune`) and :func:`evaluate`;
* :mod:`.metrics`, :mod:`.io`, :mod:`.criteria`, :mod:`.search`, :mod:`.snapshot`,
  :mod:`.distributed`, :mod:`.tp_seams` — measurement, safe save/load, tp criteria by name,
  rounding and bisection, rollback, torchrun helpers, and the guarded tp internals.
"""

from .adapter import (
    AttentionMaps,
    BlockLayers,
    HeadNormPruner,
    UnsupportedModelError,
    attention_maps,
    attention_modules,
    block_layers,
    check_supported,
    eager_attention,
    head_layout,
    heads_per_block,
    is_timm_vit,
    prefix_tokens,
    sync_attention,
    vit_pruning_kwargs,
)
from .calibration import accumulate_gradients, collect_attention, iter_batches
from .criteria import TP_CRITERIA, needs_gradients, tp_importance
from .head_importance import COMBINE_MODES, HeadImportance
from .io import load_pruned, save_pruned
from .metrics import alternated_speedup, count_macs, count_params, measure_latency
from .pruner import ViTPruner, check_ratio
from .search import bisect_threshold, round_half_up
from .training import add_to_grad, distillation_loss, evaluate, finetune

__all__ = [
    "AttentionMaps",
    "BlockLayers",
    "COMBINE_MODES",
    "HeadImportance",
    "HeadNormPruner",
    "TP_CRITERIA",
    "UnsupportedModelError",
    "ViTPruner",
    "accumulate_gradients",
    "add_to_grad",
    "alternated_speedup",
    "attention_maps",
    "attention_modules",
    "bisect_threshold",
    "block_layers",
    "check_ratio",
    "check_supported",
    "collect_attention",
    "count_macs",
    "count_params",
    "distillation_loss",
    "eager_attention",
    "evaluate",
    "finetune",
    "head_layout",
    "heads_per_block",
    "is_timm_vit",
    "iter_batches",
    "load_pruned",
    "measure_latency",
    "needs_gradients",
    "prefix_tokens",
    "round_half_up",
    "save_pruned",
    "sync_attention",
    "tp_importance",
    "vit_pruning_kwargs",
]
