"""tp_vit_plugins: ViT pruning methods (GOHSP, CP-ViT, VTP) as Torch-Pruning plugins on timm.

Layout (one folder per method around a small core; the demo lives outside the library):

* :mod:`.core` — timm adapter, :class:`ViTPruner`, head-importance protocol, calibration,
  training loop, metrics, safe save/load, the guarded tp internals;
* :mod:`.gohsp`, :mod:`.cpvit`, :mod:`.vtp` — one method each: pure maths, tp importance,
  pruner or token patch;
* :mod:`.budget` — MACs / latency targets (:func:`fit_budget`);
* :mod:`.demo` — embedded data and models, the ``tp-vit`` CLI and bench (needs the
  ``[demo]`` extra; never imported by ``import tp_vit_plugins``).
"""

from . import tokens
from .budget import BudgetResult, fit_budget
from .core import (
    ViTPruner,
    attention_maps,
    count_macs,
    count_params,
    eager_attention,
    evaluate,
    finetune,
    load_pruned,
    measure_latency,
    save_pruned,
    sync_attention,
    vit_pruning_kwargs,
)
from .cpvit import CumulativeHeadImportance, fit_keep_ratio
from .gohsp import GOHSPPruner, GraphHeadImportance
from .vtp import GateImportance, VTPPruner

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "BudgetResult",
    "CumulativeHeadImportance",
    "GOHSPPruner",
    "GateImportance",
    "GraphHeadImportance",
    "VTPPruner",
    "ViTPruner",
    "attention_maps",
    "count_macs",
    "count_params",
    "eager_attention",
    "evaluate",
    "finetune",
    "fit_budget",
    "fit_keep_ratio",
    "load_pruned",
    "measure_latency",
    "save_pruned",
    "sync_attention",
    "tokens",
    "vit_pruning_kwargs",
]
