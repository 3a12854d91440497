"""VTP (Zhu, Tang, Han, arXiv 2104.08500): learnable dimension gates and L1 sparse training.

* :mod:`.gates` — :class:`GateSet`, gates on the inputs or outputs of linear layers, proximal L1 step (no timm);
* :mod:`.importance` — :class:`GateImportance`, gate magnitudes as tp group scores;
* :mod:`.pruner` — :class:`VTPPruner`, gates + regulariser + fold + prune through tp.
"""

from .gates import GATE_NAME, OUT_GATE_NAME, GateSet, soft_threshold
from .importance import GateImportance, NoGateError
from .pruner import GATED_LAYERS, HEAD_DIM_GATES, VTPPruner, default_gated_layers

__all__ = [
    "GATED_LAYERS",
    "GATE_NAME",
    "HEAD_DIM_GATES",
    "OUT_GATE_NAME",
    "GateImportance",
    "GateSet",
    "NoGateError",
    "VTPPruner",
    "default_gated_layers",
    "soft_threshold",
]
