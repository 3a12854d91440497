"""Torch-Pruning's built-in criteria by name, for the CLI and benchmarks."""

from __future__ import annotations

import torch_pruning as tp

__all__ = ["TP_CRITERIA", "tp_importance", "needs_gradients"]

#: Names of tp's criteria exposed by :func:`tp_importance`.
TP_CRITERIA = ("random", "l1", "l2", "taylor")


def tp_importance(name: str) -> tp.importance.Importance:
    """A tp importance by name.

    Args:
        name: ``random``, ``l1`` / ``l2`` (group magnitude) or ``taylor`` (first-order Taylor,
            needs gradients: see :func:`tp_vit_plugins.calibration.accumulate_gradients`).

    Raises:
        ValueError: Unknown name.
    """
    if name == "random":
        return tp.importance.RandomImportance()
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown tp criterion {name!r}; choose one of {TP_CRITERIA}")


def needs_gradients(name: str) -> bool:
    """Whether the named criterion reads ``.grad`` (run a gradient pass before ``step()``)."""
    return name == "taylor"
