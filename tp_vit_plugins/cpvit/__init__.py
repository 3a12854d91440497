"""CP-ViT (Song et al., arXiv 2203.04570): cascade token and head pruning from cumulative attention.

* :mod:`.config` — :class:`CascadeConfig`, the cascade's options (one object for every call);
* :mod:`.maths` — scores, attention range, keep schedule, gathering, merging (pure tensors, no timm);
* :mod:`.patch` — :func:`apply_cascade` / :func:`remove_cascade` on a timm ViT (through the host adapter);
* :mod:`.importance` — :class:`CumulativeHeadImportance`, the same statistic as a static tp importance;
* :mod:`.budget` — :func:`cascade_macs` and :func:`fit_keep_ratio` (a keep ratio for a MACs target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy loader returns, for type checkers and IDEs
    from .budget import cascade_macs as cascade_macs
    from .budget import fit_keep_ratio as fit_keep_ratio
    from .config import CascadeConfig as CascadeConfig
    from .importance import CumulativeHeadImportance as CumulativeHeadImportance
    from .patch import Cascade as Cascade
    from .patch import CascadeState as CascadeState
    from .patch import apply_cascade as apply_cascade
    from .patch import find_cascade as find_cascade
    from .patch import remove_cascade as remove_cascade
    from .patch import restore_cascade as restore_cascade

#: Public name -> submodule: resolved on first use, so ``from .config import ...`` loads no torch.
_EXPORTS = {
    "cascade_macs": ".budget",
    "fit_keep_ratio": ".budget",
    "CascadeConfig": ".config",
    "CumulativeHeadImportance": ".importance",
    "Cascade": ".patch",
    "CascadeState": ".patch",
    "apply_cascade": ".patch",
    "find_cascade": ".patch",
    "remove_cascade": ".patch",
    "restore_cascade": ".patch",
}
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
