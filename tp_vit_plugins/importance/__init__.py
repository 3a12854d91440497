"""Importance criteria: tp's own (by name) and the plugins' data-driven ones."""

from .tp_criteria import TP_CRITERIA, needs_gradients, tp_importance

__all__ = ["TP_CRITERIA", "tp_importance", "needs_gradients"]
