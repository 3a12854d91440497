"""Cheap whole-model snapshots for rolling back a failed in-place operation.

Pruning in tp replaces parameters with new tensors and rewrites module attributes; it does
not modify the old tensors in place. A shallow copy of every module's ``__dict__`` (and of
its parameter / buffer / submodule dicts) is therefore enough to restore the model exactly,
without copying any weights.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

__all__ = ["ModuleSnapshot"]


class ModuleSnapshot:
    """Remember the structure of ``model`` now; :meth:`restore` puts it back.

    Only valid while the operation in between replaces tensors rather than writing into
    them — true for tp pruning, :func:`tp_vit_plugins.sync_attention` (its scale folding
    creates new tensors) and VTP's gate folding.

    Args:
        model: The module tree to remember.
    """

    def __init__(self, model: nn.Module) -> None:
        self._states: list[tuple[nn.Module, type, dict[str, Any]]] = []
        for m in model.modules():  # dict-valued slots (parameters, buffers, children, hooks) copied one level
            self._states.append((m, type(m), {k: copy.copy(v) if isinstance(v, dict) else v for k, v in vars(m).items()}))

    def restore(self) -> None:
        """Restore every module's class, attributes, parameters, buffers, children and hooks."""
        for m, cls, state in self._states:
            m.__class__ = cls  # the EVA / BEiT attention conversion changes the class
            vars(m).clear()
            vars(m).update({k: copy.copy(v) if isinstance(v, dict) else v for k, v in state.items()})
