"""Cheap whole-model snapshots for rolling back a failed in-place operation.

Pruning in tp replaces parameters with new tensors and rewrites module attributes; it does
not modify the old tensors in place. A shallow copy of every module's ``__dict__`` (and of
its parameter / buffer / submodule dicts) is therefore enough to restore the model exactly,
without copying any weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ModuleSnapshot"]

_DICT_SLOTS = ("_parameters", "_buffers", "_modules")


class ModuleSnapshot:
    """Remember the structure of ``model`` now; :meth:`restore` puts it back.

    Only valid while the operation in between replaces tensors rather than writing into
    them (true for tp pruning and for :func:`tp_vit_plugins.sync_attention`'s attribute
    updates; the latter's in-place scale folding runs only after all validation passed).

    Args:
        model: The module tree to remember.
    """

    def __init__(self, model: nn.Module) -> None:
        self._states: list[tuple[nn.Module, dict[str, Any]]] = []
        for m in model.modules():
            state = dict(vars(m))
            for slot in _DICT_SLOTS:
                state[slot] = dict(state[slot])
            self._states.append((m, state))

    def restore(self) -> None:
        """Restore every module's attributes, parameters, buffers and children."""
        for m, state in self._states:
            vars(m).clear()
            vars(m).update({k: (dict(v) if k in _DICT_SLOTS else v) for k, v in state.items()})
