"""GOHSP (Yin et al., AAAI 2023): graph-ranked heads and ADMM heterogeneous structured sparsity.

* :mod:`.graph` — the head graph and PageRank (pure tensors + networkx, no timm);
* :mod:`.importance` — :class:`GraphHeadImportance`, a calibrated tp importance;
* :mod:`.pruner` — :class:`GOHSPPruner`, the ADMM stage and the hard prune through tp.
"""

from .graph import SIMILARITIES, build_head_graph, head_similarity, pagerank_head_scores
from .importance import GRAPH_MODES, STATISTICS, GraphHeadImportance
from .pruner import UNIT_TYPES, GOHSPPruner, StructurePlan

__all__ = [
    "GRAPH_MODES",
    "SIMILARITIES",
    "STATISTICS",
    "UNIT_TYPES",
    "GOHSPPruner",
    "GraphHeadImportance",
    "StructurePlan",
    "build_head_graph",
    "head_similarity",
    "pagerank_head_scores",
]
