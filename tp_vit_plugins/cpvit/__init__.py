"""CP-ViT (Song et al., arXiv 2203.04570): cascade token and head pruning from cumulative attention.

* :mod:`.config` — :class:`CascadeConfig`, the cascade's options (one object for every call);
* :mod:`.maths` — scores, attention range, keep schedule, gathering, merging (pure tensors, no timm);
* :mod:`.patch` — :func:`apply_cascade` / :func:`remove_cascade` on a timm ViT (through the host adapter);
* :mod:`.importance` — :class:`CumulativeHeadImportance`, the same statistic as a static tp importance;
* :mod:`.budget` — :func:`cascade_macs` and :func:`fit_keep_ratio` (a keep ratio for a MACs target).
"""

from .budget import cascade_macs, fit_keep_ratio
from .config import CascadeConfig
from .importance import CumulativeHeadImportance
from .patch import Cascade, CascadeState, apply_cascade, find_cascade, remove_cascade, restore_cascade

__all__ = [
    "Cascade",
    "CascadeConfig",
    "CascadeState",
    "CumulativeHeadImportance",
    "apply_cascade",
    "cascade_macs",
    "find_cascade",
    "fit_keep_ratio",
    "remove_cascade",
    "restore_cascade",
]
