"""CP-ViT's cumulative head statistic as a static tp importance.

For every block ``l`` and head ``h`` the score is the calibration mean of
``sum_p max_i A_l[b, h, i, p]`` (see :mod:`tp_vit_plugins.cpvit.maths`): how strongly the
head's queries focus on patches. The runtime cascade skips low heads per input; this class
uses the same statistic, averaged over a loader, to remove heads for good with tp.

.. warning:: As a criterion for removing heads for good it has fallen below tp's random
   criterion on some zoo models: prefer tp's Taylor or Hessian criteria to remove heads; the
   statistic serves the cascade's per-input skipping.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from ..core.calibration import collect_attention
from ..core.distributed import all_reduce_counted, is_distributed
from ..core.head_importance import HeadImportance
from ..core.metrics import model_device
from ..hosts import host_for
from .maths import head_scores

__all__ = ["CumulativeHeadImportance"]


class CumulativeHeadImportance(HeadImportance):
    """Static CP-ViT head importance, a ``tp.importance.Importance``.

    Example::

        imp = tpv.CumulativeHeadImportance().calibrate(model, calib_loader, max_batches=8)
        tpv.ViTPruner(model, example, imp, head_pruning_ratio=0.5).step()

    Args:
        base_importance: Criterion for non-head groups (and head dims in ``"product"`` mode).
        combine: ``"head"`` (default: heads ranked by the statistic alone, channels inside a
            head by the base criterion) or ``"product"``.
        head_weight: Exponent of the head score in ``"product"`` mode.
        normalize_per_layer: Normalise head scores within each block.
        progress: Show a tqdm bar during calibration.
    """

    def __init__(
        self,
        base_importance: tp.importance.Importance | None = None,
        combine: str = "head",
        head_weight: float = 1.0,
        normalize_per_layer: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__(base_importance, combine, head_weight, normalize_per_layer)
        self.progress = progress

    def _compute_head_scores(self, model: nn.Module, loader: Iterable, max_batches: int | None) -> list[torch.Tensor]:
        num_prefix = host_for(model).prefix_tokens(model)
        sums: dict[int, torch.Tensor] = {}

        def accumulate(block: int, probs: torch.Tensor) -> None:
            sums[block] = sums.get(block, 0) + head_scores(probs.double(), num_prefix).sum(0)

        seen = collect_attention(model, loader, accumulate, max_batches=max_batches, desc="CP-ViT head scores: attention maps",
                                 progress=self.progress, allow_empty=is_distributed())  # fmt: skip
        # sums over ranks: split loaders rank like one loader (a rank that saw no batch adds zeros)
        stats, total = all_reduce_counted(sums, seen, model_device(model))
        if not total:
            raise ValueError("the calibration loaders of all processes yielded no batches")
        return [stats[b] / total for b in sorted(stats)]
