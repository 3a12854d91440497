"""``tpv.tokens``: the CP-ViT token cascade under the name the README uses (see :mod:`tp_vit_plugins.cpvit`)."""

from ..cpvit.budget import cascade_macs
from ..cpvit.patch import TOKEN_MODES, TOKEN_SCORES, Cascade, apply_cascade, find_cascade, remove_cascade

__all__ = ["TOKEN_MODES", "TOKEN_SCORES", "Cascade", "apply_cascade", "cascade_macs", "find_cascade", "remove_cascade"]
