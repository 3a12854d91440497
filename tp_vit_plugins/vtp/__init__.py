"""VTP (Zhu, Tang, Han, arXiv 2104.08500): learnable dimension gates and L1 sparse training.

* :mod:`.config` — :class:`VTPConfig`, the method's options;
* :mod:`.gates` — :class:`GateSet`, gates on the inputs or outputs of linear layers, proximal L1 step (no timm);
* :mod:`.closing` — the closing schedule (this library's extension);
* :mod:`.importance` — :class:`GateImportance`, gate scores as tp group scores;
* :mod:`.pruner` — :class:`VTPPruner`, gates + regulariser + fold + prune through tp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy loader returns, for type checkers and IDEs
    from .config import VTPConfig as VTPConfig
    from .gates import GateSet as GateSet
    from .gates import soft_threshold as soft_threshold
    from .importance import GateImportance as GateImportance
    from .importance import NoGateError as NoGateError
    from .pruner import VTPPruner as VTPPruner

#: Public name -> submodule: resolved on first use, so ``from .config import ...`` loads no torch.
_EXPORTS = {
    "VTPConfig": ".config",
    "GateSet": ".gates",
    "soft_threshold": ".gates",
    "GateImportance": ".importance",
    "NoGateError": ".importance",
    "VTPPruner": ".pruner",
}
__all__ = ["GateImportance", "GateSet", "NoGateError", "VTPConfig", "VTPPruner", "soft_threshold"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
