"""tp pruners for timm ViTs."""

from .gohsp import GOHSPPruner
from .vit import ViTPruner

__all__ = ["GOHSPPruner", "ViTPruner"]
