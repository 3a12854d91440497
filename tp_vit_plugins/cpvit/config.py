"""The cascade's options in one frozen object, shared by ``apply_cascade``, ``cascade_macs`` and ``fit_keep_ratio``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.options import Flag, option, split_options

if TYPE_CHECKING:
    import torch

__all__ = ["CascadeConfig", "PRESETS", "TOKEN_MODES", "TOKEN_FOLDS", "TOKEN_SCORES", "HEAD_SCORES", "PRUNE_SITES", "SCORE_SITES",
           "TokenScorer"]  # fmt: skip

#: Named option sets of every method (``config="paper"`` / ``"recommended"``).
PRESETS = ("paper", "recommended")

#: Token modes: really drop tokens, or keep shapes and mask them out as keys (analysis).
TOKEN_MODES = ("drop", "mask")
#: What happens to pruned tokens: dropped (the paper), or merged into their most similar kept
#: token with size-weighted averages and proportional attention (this library's extension).
TOKEN_FOLDS = ("drop", "merge")
#: Token scorers: CP-ViT's cumulative score, and two baselines on the same schedule —
#: EViT-style attention of the class token in the current block, and random scores.
TOKEN_SCORES = ("cumulative", "cls", "random")
#: Per-input head scores for head skipping: the block's own attention (``"block"``), or weighted by the
#: cumulative patch score so it accumulates across blocks (``"cumulative"``; on the zoo below ``"block"``).
HEAD_SCORES = ("block", "cumulative")
#: A custom token scorer: ``scorer(probs [B, H, N, N], num_prefix) -> [B, N - num_prefix]``
#: (higher = keep); see :class:`CascadeConfig` ``score``.
TokenScorer = Callable[["torch.Tensor", int], "torch.Tensor"]
#: Where tokens leave a pruning block: ``"mlp"``, between the block's attention and its MLP (the
#: MLP already runs on the kept tokens, as in EViT and ToMe), or ``"block"``, after the whole block.
PRUNE_SITES = ("mlp", "block")
#: Which blocks' attention the cumulative token score sums: every block up to the last pruning
#: point (the paper), or the pruning blocks only (the others keep fused attention).
SCORE_SITES = ("all", "prune")


@dataclass(frozen=True)
class CascadeConfig:
    """Options of a CP-ViT cascade (:func:`~tp_vit_plugins.apply_cascade`).

    Attributes:
        keep_ratio: Fraction of patch tokens still present in the last block, in ``(0, 1]``
            (with ``keep_mean``: the fraction the blocks see on average).
        keep_mean: ``keep_ratio`` is the mean share of patch tokens over the blocks and the
            schedule a cascade in which every block from ``start_block`` keeps the same share of
            the tokens it receives (the paper preset: "progressively pruning 50 % patches"
            read as half of the patch-block work; ``schedule_steps`` must be ``None``).
        head_keep_ratio: Fraction of heads each input keeps in blocks ``>= head_start_block``
            (1.0 = no head skipping), in ``(0, 1]``.
        start_block: First block whose scores prune tokens (after it); ``None``: a quarter of
            the depth.
        head_start_block: First block with head skipping; ``None``: ``start_block``.
        head_score: How each input ranks its heads for skipping, one of :data:`HEAD_SCORES`.
        schedule_steps: An int: the stepped schedule with that many pruning stages; ``None``:
            the paper's progressive ramp (tokens leave after every block from ``start_block``).
        fold: What pruned tokens become, one of :data:`TOKEN_FOLDS`: ``"merge"`` (into the
            most similar kept token, size-weighted, with proportional attention ``+ log(size)``
            in later blocks; this library's extension) or ``"drop"`` (the paper). ``None``:
            ``"merge"`` in ``"drop"`` mode, ``"drop"`` in ``"mask"`` mode.
        prune_at: Where tokens leave a pruning block, one of :data:`PRUNE_SITES`: ``"mlp"``
            (after the block's attention, so its MLP runs on the kept tokens only; this
            library's extension) or ``"block"`` (after the whole block).
        trim_last: When the head reads the prefix tokens alone (``global_pool="token"``) and
            tokens leave before the MLP, the last block's MLP runs on the prefix tokens only
            (same logits up to float rounding, fewer MACs; ``forward_features`` then returns
            the prefix tokens). Only a cascade that prunes trims.
        weighted_pool: With merged tokens, an average-pool head weighs each token by the
            patches it stands for, so every original patch counts once, as in the dense model.
        score: Token scorer, one of :data:`TOKEN_SCORES` (``"cumulative"`` is CP-ViT; ``"cls"``
            and ``"random"`` are baselines on the identical schedule), or your own
            :data:`TokenScorer`: ``scorer(probs, num_prefix)`` maps one block's attention
            probabilities ``[B, H, N, N]`` (``N`` = prefix + patch tokens still alive) to a
            per-image patch-token statistic ``[B, N - num_prefix]`` (higher = keep), summed
            over the scoring blocks like the cumulative score. It must treat every image on
            its own (an image's tokens never depend on its batch).
        score_at: Which blocks' attention the cumulative score sums, one of
            :data:`SCORE_SITES` (``"prune"``: a speed option, the other blocks stay fused).
        beta: Attention-range adjustment strength in ``[0, 1]`` (0 = plain schedule): a pruning
            point whose attention is more local than the others' prunes a smaller share, a more
            global one a larger share (:func:`~tp_vit_plugins.cpvit.maths.range_adjusted_counts`).
            Calibrated once on calibration data into fixed per-block counts (so an image's
            output never depends on its batch).
        radius: Chebyshev radius of "near" patches for the attention range.
        mode: ``"drop"`` (tokens gathered out) or ``"mask"`` (analysis: masked as keys, no
            MACs saved), one of :data:`TOKEN_MODES`.
        seed: Seed of the ``"random"`` scorer.
    """

    keep_ratio: float = option(
        0.5, Flag("--keep-ratio", "share of patch tokens kept (paper: the mean share the blocks see; else in the last block)")
    )
    keep_mean: bool = False
    head_keep_ratio: float = option(1.0, Flag("--head-keep-ratio", "share of heads each input keeps"))
    start_block: int | None = option(0, Flag("--start-block", "first block whose scores drop tokens"))
    head_start_block: int | None = None
    head_score: str = "block"
    schedule_steps: int | None = option(
        3, Flag("--schedule-steps", "pruning stages of the stepped schedule, 0: the progressive ramp", none_at=0)
    )
    fold: str | None = option(
        None, Flag("--token-fold", "merge pruned tokens into their most similar kept token, or drop them", TOKEN_FOLDS)
    )
    prune_at: str = option(
        "mlp", Flag("--prune-at", "where tokens leave a pruning block: before its MLP, or after it", PRUNE_SITES)
    )
    trim_last: bool = True
    weighted_pool: bool = True
    score: str | TokenScorer = "cumulative"
    score_at: str = "all"
    beta: float = option(0.0, Flag("--attention-range", "strength of the attention-range adjustment, calibrated on the data"))
    radius: int = 1
    mode: str = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        fold = self.fold if self.fold is not None else ("merge" if self.mode == "drop" else "drop")
        object.__setattr__(self, "fold", fold)
        _one_of("mode", self.mode, TOKEN_MODES)
        if not callable(self.score):
            _one_of("score", self.score, TOKEN_SCORES)
        _one_of("prune_at", self.prune_at, PRUNE_SITES)
        _one_of("score_at", self.score_at, SCORE_SITES)
        _one_of("head_score", self.head_score, HEAD_SCORES)
        if self.keep_mean and self.schedule_steps is not None:
            raise ValueError("keep_mean=True sets a cascade schedule: use schedule_steps=None")
        if fold not in TOKEN_FOLDS or (fold == "merge" and self.mode != "drop"):
            raise ValueError(
                f"fold must be one of {TOKEN_FOLDS} (merging needs mode='drop'), got fold={fold!r}, mode={self.mode!r}"
            )
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio (the share of patch tokens kept) must lie in (0, 1], got {self.keep_ratio}")
        if not 0.0 < self.head_keep_ratio <= 1.0:
            raise ValueError(
                f"head_keep_ratio (the share of heads each input keeps) must lie in (0, 1], got {self.head_keep_ratio}"
            )
        if not 0.0 <= self.beta <= 1.0 or self.radius < 0:
            raise ValueError(f"need 0 <= beta <= 1 and radius >= 0, got beta={self.beta}, radius={self.radius}")
        if self.schedule_steps is not None and (not isinstance(self.schedule_steps, int) or self.schedule_steps < 1):
            raise ValueError(f"schedule_steps must be an int >= 1 (or None: the ramp), got {self.schedule_steps!r}")
        if self.start_block is not None and (not isinstance(self.start_block, int) or self.start_block < 0):
            raise ValueError(f"start_block must be an int >= 0 (or None: a quarter of the depth), got {self.start_block!r}")

    def start_blocks(self, depth: int) -> tuple[int, int]:
        """``(start_block, head_start_block)`` for a model of ``depth`` blocks (``None`` resolved)."""
        start = depth // 4 if self.start_block is None else self.start_block
        return start, start if self.head_start_block is None else self.head_start_block

    @classmethod
    def preset(cls, name: str) -> CascadeConfig:
        """A named set of options, one of :data:`PRESETS`; individual options still override it.

        * ``"paper"`` — CP-ViT as its abstract describes it: the cumulative score of patches,
          tokens dropped progressively after every block from the first on as a cascade whose
          ``keep_ratio`` is the mean share of patches the blocks see (``keep_mean=True``:
          ``keep_ratio=0.5`` prunes half of the patch-block work, which cuts over 40 % of
          DeiT-S's MACs with head skipping), whole blocks (``fold="drop"``,
          ``prune_at="block"``), a quarter of the heads skipped per input (``head_keep_ratio=0.75``),
          ranked by their attention to the patches the cumulative score kept
          (``head_score="block"``; the head score weighted by the cumulative patch score,
          ``"cumulative"``, measured below it on the zoo), each layer's ratio raised or lowered
          by its attention range (``beta=0.5``, calibrated; needs ``calib=``). The cascade's
          shape, the start block, the head share and ``beta`` are this library's reading (the
          abstract gives no values).
        * ``"recommended"`` — the defaults (chosen on the zoo): merged tokens, pruned before the
          pruning block's MLP in 3 stages from block 0, no head skipping, no range adjustment.

        Raises:
            ValueError: Unknown name.
        """
        if name == "recommended":
            return cls()
        if name == "paper":
            return cls(start_block=0, schedule_steps=None, keep_mean=True, fold="drop", prune_at="block", trim_last=False,
                       weighted_pool=False, head_keep_ratio=0.75, head_score="block", beta=0.5)  # fmt: skip
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")

    def replace(self, **changes: Any) -> CascadeConfig:
        """A copy with ``changes`` applied (validated; unknown names raise ``TypeError``)."""
        return with_options(self, changes)


def _one_of(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def with_options(config: CascadeConfig | str | None, options: dict[str, Any]) -> CascadeConfig:
    """``config`` (default :class:`CascadeConfig`; a string names a preset) with keyword ``options`` applied, validated.

    Raises:
        TypeError: An option that is not a :class:`CascadeConfig` field (the message lists them).
    """
    options = dict(options)
    base_mode = (
        config.mode
        if isinstance(config, CascadeConfig)
        else CascadeConfig.preset(config).mode
        if isinstance(config, str)
        else "drop"
    )
    if "mode" in options and "fold" not in options and options["mode"] != base_mode:
        options["fold"] = None  # re-derived from the new mode
    cfg, unknown = split_options(CascadeConfig, config, options, "the cascade")
    if unknown:
        names = sorted(f.name for f in dataclasses.fields(CascadeConfig))
        raise TypeError(f"unknown cascade option(s) {sorted(unknown)}; CascadeConfig has {names}")
    return cfg
