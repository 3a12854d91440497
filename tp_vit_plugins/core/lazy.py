"""PEP 562 lazy package attributes: a package names what it exports, each resolved on first use.

The methods' packages use it so that their options (``config.py``, no torch) can be imported
by the CLI before torch is loaded, while ``tpv.cpvit.apply_cascade`` and friends still work.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` resolving ``name`` from its submodule ``exports[name]``.

    Other names resolve to the package's submodule of that name, when it has one.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> submodule (relative, e.g. ``".patch"``).
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")  # a submodule (``tpv.cpvit.maths``)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # resolved once
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
