"""tp pruners for timm ViTs."""

from .vit import ViTPruner

__all__ = ["ViTPruner"]
