"""tp_vit_plugins: ViT pruning methods (GOHSP, CP-ViT, VTP) as Torch-Pruning plugins on timm.

The public names below are the whole top-level API:

* pruners — :class:`ViTPruner` (a ``tp.pruner.BasePruner`` with exact head counts),
  :class:`GOHSPPruner`, :class:`VTPPruner`;
* importances — :class:`GraphHeadImportance` (GOHSP), :class:`CumulativeHeadImportance`
  (CP-ViT), :class:`GateImportance` (VTP);
* tp glue — :func:`vit_pruning_kwargs` (for any stock tp pruner), :func:`sync_attention`;
* the token cascade — :func:`apply_cascade` (CP-ViT, at inference; its options are
  :class:`tp_vit_plugins.cpvit.CascadeConfig`);
* budgets and measurement — :func:`fit_budget`, :func:`count_macs`;
* safe storage — :func:`save_pruned` / :func:`load_pruned`;
* deployment — :func:`export_onnx` (ONNX with a dynamic batch, checked in onnxruntime);
* :class:`UnsupportedModelError`, raised before anything changes.

Everything else lives one level down: :mod:`tp_vit_plugins.utils` (training loop, latency,
attention maps, support checks), :mod:`tp_vit_plugins.gohsp`, :mod:`tp_vit_plugins.cpvit`,
:mod:`tp_vit_plugins.vtp` (each method's options and maths). The ``tp-vit`` CLI and the
embedded demo are in :mod:`tp_vit_plugins.demo` (the ``[demo]`` extra).

Vocabulary: a ``*pruning_ratio`` counts what is **removed** (as in Torch-Pruning); a
``*keep_ratio`` counts what is **kept**.

Names resolve on first use (PEP 562), so ``import tp_vit_plugins`` and ``tp-vit --help`` do
not load torch; type checkers read the explicit imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

__version__ = "0.4.0"

if TYPE_CHECKING:  # what the lazy loader below returns, spelled out for type checkers and IDEs
    from .budget import fit_budget as fit_budget
    from .core.glue import sync_attention as sync_attention
    from .core.glue import vit_pruning_kwargs as vit_pruning_kwargs
    from .core.io import load_pruned as load_pruned
    from .core.io import save_pruned as save_pruned
    from .core.metrics import count_macs as count_macs
    from .core.pruner import ViTPruner as ViTPruner
    from .cpvit.importance import CumulativeHeadImportance as CumulativeHeadImportance
    from .cpvit.patch import apply_cascade as apply_cascade
    from .export import export_onnx as export_onnx
    from .gohsp.importance import GraphHeadImportance as GraphHeadImportance
    from .gohsp.pruner import GOHSPPruner as GOHSPPruner
    from .hosts import UnsupportedModelError as UnsupportedModelError
    from .vtp.importance import GateImportance as GateImportance
    from .vtp.pruner import VTPPruner as VTPPruner

#: Public name -> the module that defines it.
_EXPORTS = {
    "ViTPruner": ".core.pruner",
    "GOHSPPruner": ".gohsp.pruner",
    "VTPPruner": ".vtp.pruner",
    "GraphHeadImportance": ".gohsp.importance",
    "CumulativeHeadImportance": ".cpvit.importance",
    "GateImportance": ".vtp.importance",
    "vit_pruning_kwargs": ".core.glue",
    "sync_attention": ".core.glue",
    "apply_cascade": ".cpvit.patch",
    "fit_budget": ".budget",
    "count_macs": ".core.metrics",
    "save_pruned": ".core.io",
    "load_pruned": ".core.io",
    "UnsupportedModelError": ".hosts",
    "export_onnx": ".export",
}

#: Subpackages reachable as attributes (``tpv.utils``, ``tpv.cpvit``, ...).
_SUBMODULES = ("budget", "core", "cpvit", "export", "gohsp", "hosts", "utils", "vtp")

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
