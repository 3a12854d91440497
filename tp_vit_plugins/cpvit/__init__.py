"""CP-ViT (Song et al., arXiv 2203.04570): cascade token and head pruning from cumulative attention.

* :mod:`.maths` — scores, attention range, keep schedule, gathering (pure tensors, no timm);
* :mod:`.patch` — the token patch: :func:`apply_cascade` / :func:`remove_cascade` on a timm ViT;
* :mod:`.importance` — :class:`CumulativeHeadImportance`, the same statistic as a static tp importance;
* :mod:`.budget` — :func:`cascade_macs` and :func:`fit_keep_ratio` (a keep ratio for a MACs target).
"""

from ..hosts.timm.blocks import cascade_attention
from .budget import cascade_macs, fit_keep_ratio
from .importance import CumulativeHeadImportance
from .patch import TOKEN_MODES, TOKEN_SCORES, Cascade, apply_cascade, find_cascade, remove_cascade

__all__ = [
    "TOKEN_MODES",
    "TOKEN_SCORES",
    "Cascade",
    "CumulativeHeadImportance",
    "apply_cascade",
    "cascade_attention",
    "cascade_macs",
    "find_cascade",
    "fit_keep_ratio",
    "remove_cascade",
]
