"""Importance criteria: tp's own (by name) and the plugins' data-driven ones."""

from .cumulative import CumulativeHeadImportance
from .gate import GateImportance
from .graph_head import GraphHeadImportance
from .head_base import HeadImportance
from .tp_criteria import TP_CRITERIA, needs_gradients, tp_importance

__all__ = [
    "TP_CRITERIA",
    "CumulativeHeadImportance",
    "GateImportance",
    "GraphHeadImportance",
    "HeadImportance",
    "tp_importance",
    "needs_gradients",
]
