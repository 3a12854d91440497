"""Deprecated: the CP-ViT cascade is :func:`tp_vit_plugins.apply_cascade` / :mod:`tp_vit_plugins.cpvit`.

Kept for one release; importing it warns.
"""

import warnings

from ..cpvit import Cascade, apply_cascade, cascade_macs, find_cascade, remove_cascade
from ..cpvit.patch import TOKEN_MODES, TOKEN_SCORES

warnings.warn(
    "tp_vit_plugins.tokens moved to tp_vit_plugins.cpvit (apply_cascade is also tp_vit_plugins.apply_cascade); "
    "the old name will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["TOKEN_MODES", "TOKEN_SCORES", "Cascade", "apply_cascade", "cascade_macs", "find_cascade", "remove_cascade"]
