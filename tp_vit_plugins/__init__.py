"""tp_vit_plugins: ViT pruning methods (GOHSP, CP-ViT, VTP) as Torch-Pruning plugins on timm."""

from . import tokens
from .budget import BudgetResult, fit_budget, fit_keep_ratio
from .finetune import finetune
from .importance import CumulativeHeadImportance, GateImportance, GraphHeadImportance
from .io import load_pruned, save_pruned
from .metrics import count_macs, count_params, measure_latency
from .pruners import GOHSPPruner, ViTPruner, VTPPruner
from .vit import attention_maps, eager_attention, sync_attention, vit_pruning_kwargs

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CumulativeHeadImportance",
    "GOHSPPruner",
    "GateImportance",
    "GraphHeadImportance",
    "BudgetResult",
    "ViTPruner",
    "VTPPruner",
    "count_macs",
    "count_params",
    "load_pruned",
    "measure_latency",
    "save_pruned",
    "attention_maps",
    "eager_attention",
    "finetune",
    "fit_budget",
    "fit_keep_ratio",
    "sync_attention",
    "tokens",
    "vit_pruning_kwargs",
]
