"""VTP (Zhu, Tang, Han, arXiv 2104.08500): learnable dimension gates and L1 sparse training.

* :mod:`.config` — :class:`VTPConfig`, the method's options;
* :mod:`.gates` — :class:`GateSet`, gates on the inputs or outputs of linear layers, proximal L1 step (no timm);
* :mod:`.closing` — the closing schedule (this library's extension);
* :mod:`.importance` — :class:`GateImportance`, gate scores as tp group scores;
* :mod:`.pruner` — :class:`VTPPruner`, gates + regulariser + fold + prune through tp.
"""

from .config import VTPConfig
from .gates import GateSet, soft_threshold
from .importance import GateImportance, NoGateError
from .pruner import VTPPruner

__all__ = ["GateImportance", "GateSet", "NoGateError", "VTPConfig", "VTPPruner", "soft_threshold"]
