"""tp_vit_plugins: ViT pruning methods (GOHSP, CP-ViT, VTP) as Torch-Pruning plugins on timm.

Layout (one folder per method around a small core; the demo lives outside the library):

* :mod:`.core` — timm adapter, :class:`ViTPruner`, head-importance protocol, calibration,
  training loop, metrics, safe save/load, the guarded tp internals;
* :mod:`.gohsp`, :mod:`.cpvit`, :mod:`.vtp` — one method each: pure maths, tp importance,
  pruner or token patch;
* :mod:`.budget` — MACs / latency targets (:func:`fit_budget`);
* :mod:`.demo` — embedded data and models, the ``tp-vit`` CLI and bench (needs the
  ``[demo]`` extra; never imported by ``import tp_vit_plugins``).

Names are resolved on first use (PEP 562), so ``import tp_vit_plugins`` and ``tp-vit --help``
stay fast: torch, timm and Torch-Pruning load with the first name that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "BudgetResult": ".budget",
    "fit_budget": ".budget",
    "ViTPruner": ".core",
    "attention_maps": ".core",
    "count_macs": ".core",
    "count_params": ".core",
    "eager_attention": ".core",
    "evaluate": ".core",
    "finetune": ".core",
    "load_pruned": ".core",
    "measure_latency": ".core",
    "save_pruned": ".core",
    "sync_attention": ".core",
    "vit_pruning_kwargs": ".core",
    "check_supported": ".core",
    "is_timm_vit": ".core",
    "UnsupportedModelError": ".core",
    "CumulativeHeadImportance": ".cpvit",
    "fit_keep_ratio": ".cpvit",
    "GOHSPPruner": ".gohsp",
    "GraphHeadImportance": ".gohsp",
    "GateImportance": ".vtp",
    "VTPPruner": ".vtp",
}
_SUBMODULES = ("budget", "core", "cpvit", "gohsp", "tokens", "vtp")

__all__ = ["__version__", *_EXPORTS, "tokens"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
