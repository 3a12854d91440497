"""GOHSP (Yin et al., AAAI 2023): graph-ranked heads and ADMM heterogeneous structured sparsity.

* :mod:`.config` — :class:`GOHSPConfig`, the method's options;
* :mod:`.graph`, :mod:`.flow` — the head graphs and PageRank (pure tensors + networkx, no timm);
* :mod:`.importance` — :class:`GraphHeadImportance`, a calibrated tp importance;
* :mod:`.pruner` — :class:`GOHSPPruner`, the ADMM stage and the hard prune through tp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy loader returns, for type checkers and IDEs
    from .config import GOHSPConfig as GOHSPConfig
    from .graph import build_head_graph as build_head_graph
    from .graph import head_similarity as head_similarity
    from .graph import pagerank_head_scores as pagerank_head_scores
    from .importance import GraphHeadImportance as GraphHeadImportance
    from .pruner import GOHSPPruner as GOHSPPruner
    from .pruner import StructurePlan as StructurePlan

#: Public name -> submodule: resolved on first use, so ``from .config import ...`` loads no torch.
_EXPORTS = {
    "GOHSPConfig": ".config",
    "build_head_graph": ".graph",
    "head_similarity": ".graph",
    "pagerank_head_scores": ".graph",
    "GraphHeadImportance": ".importance",
    "GOHSPPruner": ".pruner",
    "StructurePlan": ".pruner",
}
__all__ = [
    "GOHSPConfig",
    "GOHSPPruner",
    "GraphHeadImportance",
    "StructurePlan",
    "build_head_graph",
    "head_similarity",
    "pagerank_head_scores",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
