"""GOHSP (Yin et al., AAAI 2023): graph-ranked heads and ADMM heterogeneous structured sparsity.

* :mod:`.config` — :class:`GOHSPConfig`, the method's options;
* :mod:`.graph`, :mod:`.flow` — the head graphs and PageRank (pure tensors + networkx, no timm);
* :mod:`.importance` — :class:`GraphHeadImportance`, a calibrated tp importance;
* :mod:`.pruner` — :class:`GOHSPPruner`, the ADMM stage and the hard prune through tp.
"""

from .config import GOHSPConfig
from .graph import build_head_graph, head_similarity, pagerank_head_scores
from .importance import GraphHeadImportance
from .pruner import GOHSPPruner, StructurePlan

__all__ = [
    "GOHSPConfig",
    "GOHSPPruner",
    "GraphHeadImportance",
    "StructurePlan",
    "build_head_graph",
    "head_similarity",
    "pagerank_head_scores",
]
