"""Module-level ``__getattr__`` for names that moved: they keep working for one release and warn."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def moved(old: str, new_modules: Iterable[str]) -> Callable[[str], Any]:
    """A PEP 562 ``__getattr__`` for module ``old`` looking names up in ``new_modules`` (with a DeprecationWarning)."""
    targets = tuple(new_modules)

    def __getattr__(name: str) -> Any:
        for module in targets:
            mod = importlib.import_module(module)
            if hasattr(mod, name):
                warnings.warn(
                    f"{old}.{name} moved to {module}.{name}; the old place will be removed in the next release",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(mod, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
