"""How to install an optional extra, from the package index or from a clone."""

from __future__ import annotations

__all__ = ["install_hint"]


def install_hint(extra: str) -> str:
    """``pip install 'tp-vit-plugins[extra]' (from a clone: pip install '.[extra]')``."""
    return f"pip install 'tp-vit-plugins[{extra}]' (from a clone: pip install '.[{extra}]')"
