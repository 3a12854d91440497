"""tp pruners for timm ViTs."""

from .gohsp import GOHSPPruner
from .vit import ViTPruner
from .vtp import VTPPruner

__all__ = ["GOHSPPruner", "ViTPruner", "VTPPruner"]
