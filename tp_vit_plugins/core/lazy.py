"""PEP 562 lazy package attributes: a package names what it exports, each resolved on first use.

The methods' packages use it so that their options (``config.py``, no torch) can be imported
by the CLI before torch is loaded, while ``tpv.cpvit.apply_cascade`` and friends still work.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str], submodules: Iterable[str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` resolving ``name`` from its submodule ``exports[name]``.

    Other names resolve to the package's submodule of that name (only those in ``submodules``
    when given).

    Args:
        package: The package's ``__name__``.
        exports: Public name -> submodule (relative, e.g. ``".patch"``).
        submodules: The submodules reachable as attributes; ``None``: every one.
    """
    namespace = importlib.import_module(package).__dict__
    allowed = None if submodules is None else frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
        elif (
            (name in allowed)
            if allowed is not None
            else (not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None)
        ):
            value = importlib.import_module(f"{package}.{name}")  # a submodule (``tpv.cpvit.maths``)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value  # resolved once
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports, *(allowed or ())})

    return __getattr__, __dir__
