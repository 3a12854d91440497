"""CP-ViT token cascade: pure maths (:mod:`.cascade`) and the timm patch (:mod:`.patch`)."""

from .patch import MODES, SCORES, Cascade, apply_cascade, cascade_macs, find_cascade, remove_cascade

__all__ = ["MODES", "SCORES", "Cascade", "apply_cascade", "cascade_macs", "find_cascade", "remove_cascade"]
