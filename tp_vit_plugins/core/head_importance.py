"""The protocol shared by the data-driven head criteria (GOHSP graph, CP-ViT cumulative).

``imp.calibrate(model, loader, max_batches=None)`` fills ``imp.head_scores``
(``{attn.qkv: [H]}``); ``imp(group)`` then returns tp's 1-D per-channel score:

* attention groups: every channel carries its head's score, combined with a base
  criterion (default tp group-L2 with mean normalisation) — ``combine="product"`` gives
  ``head_score ** head_weight * base``; ``combine="head"`` gives
  ``head_score * base / mean(base over the head's channels)``: the mean over a head's channels
  (how tp and :class:`~tp_vit_plugins.ViTPruner` rank whole heads) is exactly the head score,
  while channels *inside* a head (head-dim pruning) are ordered by the base criterion instead
  of tying;
* other groups (MLP neurons, embedding dims): the base criterion.

Head scores are normalised to mean 1 (over all heads, or per block), the same scale as tp's
mean-normalised base criterion, so a global ranking across structure types is meaningful.

**Alignment.** Scores belong to the heads that existed at calibration. The importance records
every attention's width (``qkv.out_features``) with its scores; :class:`~tp_vit_plugins.ViTPruner`
reports each change (``remove_heads`` for heads, ``sync_layout`` after head-dim pruning), so
the scores follow the surviving heads through any number of steps. A change nobody reported —
a stock ``tp.pruner.BasePruner`` with ``iterative_steps > 1`` removes heads without saying
which — is detected on the next call and raises, instead of applying the old per-head scores
to whatever heads are left.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..hosts import host_for

__all__ = ["HeadImportance", "COMBINE_MODES"]

#: Ways to combine head scores with the base criterion.
COMBINE_MODES = ("product", "head")


class HeadImportance(tp.importance.Importance):
    """Base class: subclasses implement :meth:`_compute_head_scores`.

    Args:
        base_importance: Criterion for channels inside heads and for non-attention groups;
            default ``tp.importance.GroupMagnitudeImportance(p=2)``.
        combine: ``"product"`` or ``"head"`` (see module docs; in both the whole-head ranking
            is driven by the head scores).
        head_weight: Exponent of the head score in ``"product"`` mode (0 = base only).
        normalize_per_layer: Normalise head scores to mean 1 within each block instead of
            over all heads (a global ranking then ignores between-block differences).
    """

    def __init__(
        self,
        base_importance: tp.importance.Importance | None = None,
        combine: str = "product",
        head_weight: float = 1.0,
        normalize_per_layer: bool = False,
    ) -> None:
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        self.base_importance = base_importance if base_importance is not None else tp.importance.GroupMagnitudeImportance(p=2)
        self.combine = combine
        self.head_weight = float(head_weight)
        self.normalize_per_layer = normalize_per_layer
        self.head_scores: dict[nn.Module, torch.Tensor] = {}
        self.raw_head_scores: dict[nn.Module, torch.Tensor] = {}
        #: ``qkv.out_features`` the scores of each attention belong to (see module docs).
        self.layout: dict[nn.Module, int] = {}

    # -- to implement -------------------------------------------------------------------
    def _compute_head_scores(self, model: nn.Module, loader: Iterable, max_batches: int | None) -> list[torch.Tensor]:
        """Return one ``[H_l]`` score tensor per attention block, higher = keep."""
        raise NotImplementedError

    # -- protocol -----------------------------------------------------------------------
    def calibrate(self, model: nn.Module, loader: Iterable, max_batches: int | None = None) -> HeadImportance:
        """Compute ``head_scores`` for ``model`` from calibration batches.

        Args:
            model: A supported ViT (left unchanged; hooks removed afterwards).
            loader: Yields image tensors or ``(images, target)`` tuples.
            max_batches: Use at most this many batches.

        Returns:
            ``self``.

        Raises:
            TypeError: No timm attention in ``model`` or malformed batches.
            ValueError: Empty loader.
        """
        attns = host_for(model).attention_modules(model)
        scores = self._compute_head_scores(model, loader, max_batches)
        self.set_head_scores({a.qkv: s for (_, a), s in zip(attns, scores, strict=True)})
        return self

    def set_head_scores(self, scores: dict[nn.Module, torch.Tensor]) -> None:
        """Install raw per-head scores ``{attn.qkv: [H]}`` (higher = keep) and normalise them."""
        raw = {k: torch.as_tensor(v, dtype=torch.float64).flatten().clone() for k, v in scores.items()}
        for v in raw.values():
            if not torch.isfinite(v).all() or (v < 0).any():
                raise ValueError("head scores must be finite and non-negative")
        self.raw_head_scores = raw
        self.layout = {k: int(k.out_features) for k in raw if hasattr(k, "out_features")}
        self._normalize()

    def _normalize(self) -> None:
        raw = self.raw_head_scores
        if self.normalize_per_layer:
            self.head_scores = {k: (v / v.mean().clamp_min(1e-12)).float() for k, v in raw.items()}
        else:
            mean = torch.cat(list(raw.values())).mean().clamp_min(1e-12) if raw else 1.0
            self.head_scores = {k: (v / mean).float() for k, v in raw.items()}

    def remove_heads(self, qkv: nn.Module, heads: Sequence[int]) -> None:
        """Forget the scores of heads tp is removing (called by ``ViTPruner``), keep the rest aligned."""
        if qkv not in self.raw_head_scores:
            return
        n = len(self.raw_head_scores[qkv])
        keep = [h for h in range(n) if h not in set(heads)]
        if qkv in self.layout:  # the width after tp removes these heads
            self.layout[qkv] -= self.layout[qkv] // n * (n - len(keep))
        self.raw_head_scores[qkv] = self.raw_head_scores[qkv][keep]
        self.head_scores[qkv] = self.head_scores[qkv][keep]

    def sync_layout(self, qkv: nn.Module) -> None:
        """Record ``qkv``'s current width as belonging to the current heads (after head-dim pruning)."""
        if qkv in self.layout:
            self.layout[qkv] = int(qkv.out_features)

    def _attention_of(self, group: tp.Group) -> nn.Module | None:
        for dep, _ in group:
            if dep.target.module in self.head_scores and dep.handler == tp.prune_linear_out_channels:
                return dep.target.module
        return None

    def _head_index(self, group: tp.Group) -> tuple[nn.Module, torch.Tensor] | None:
        """``(attn.qkv, head of every channel [n])`` of an attention group; ``None`` for other groups."""
        qkv = self._attention_of(group)
        if qkv is None:
            return None
        num_heads = len(self.head_scores[qkv])
        attn_dim = qkv.out_features // 3
        if attn_dim % num_heads or self.layout.get(qkv, qkv.out_features) != qkv.out_features:
            raise RuntimeError(
                f"{type(self).__name__}: an attention now has {attn_dim} channels but its {num_heads} head "
                f"scores were calibrated for {self.layout.get(qkv, 3 * attn_dim) // 3}: it was pruned since "
                "calibrate() by something that did not say which heads went (e.g. tp.pruner.BasePruner "
                "with iterative_steps > 1). Calibrate again before every step, or prune with tpv.ViTPruner, "
                "which keeps head scores aligned"
            )
        # tp roots attention groups at the proj inputs (one index per attention channel)
        idxs = torch.as_tensor([int(i) for i in group[0][1]], dtype=torch.long)
        if idxs.numel() and int(idxs.max()) >= attn_dim:
            raise ValueError("attention groups must be rooted at attn.proj inputs, as tp's pruners build them")
        return qkv, idxs // (attn_dim // num_heads)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        located = self._head_index(group)
        if located is None:
            return self.base_importance(group)
        qkv, heads = located
        head = self.head_scores[qkv][heads]
        base = self.base_importance(group)
        if base is None:
            return head
        head, heads = head.to(base.device), heads.to(base.device)
        if self.combine == "product" or base.numel() == 0:
            return head**self.head_weight * base
        # "head": the head score, redistributed over the head's channels by the base criterion
        base = base.float().clamp_min(0)
        sums = torch.zeros(int(heads.max()) + 1, device=base.device).index_add_(0, heads, base)
        counts = torch.zeros_like(sums).index_add_(0, heads, torch.ones_like(base))
        mean = (sums / counts.clamp_min(1))[heads]
        relative = torch.where(mean > 0, base / mean.clamp_min(1e-12), torch.ones_like(base))
        return head * relative
