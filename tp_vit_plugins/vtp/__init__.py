"""VTP (Zhu, Tang, Han, arXiv 2104.08500): learnable dimension gates and L1 sparse training.

* :mod:`.gates` — :class:`GateSet`, gates on the inputs of linear layers (no timm);
* :mod:`.importance` — :class:`GateImportance`, gate magnitudes as tp group scores;
* :mod:`.pruner` — :class:`VTPPruner`, gates + regulariser + fold + prune through tp.
"""

from .gates import GATE_NAME, GateSet
from .importance import GateImportance
from .pruner import GATED_LAYERS, VTPPruner

__all__ = ["GATED_LAYERS", "GATE_NAME", "GateImportance", "GateSet", "VTPPruner"]
