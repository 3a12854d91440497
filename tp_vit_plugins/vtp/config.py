"""VTP's options in one frozen object (:class:`VTPConfig`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.options import Flag, option

__all__ = ["VTPConfig", "PRESETS", "GATE_SCORES", "GATED_LAYERS", "GRAD_SCALES"]

#: Named option sets (``VTPPruner(..., config="paper")``); ``"recommended"`` is ``"closing"``.
PRESETS = ("paper", "closing", "recommended")

#: Gate positions of a block: input gates of ``qkv``, ``proj``, ``fc1``, ``fc2`` and the
#: output gate of ``qkv`` (``"qkv_out"``: q, k, v of every head dim).
GATED_LAYERS = ("qkv", "proj", "fc1", "fc2", "qkv_out")
#: What ranks the dims at pruning time: ``"magnitude"`` (``|g|``, the paper's) or
#: ``"taylor"`` (mean ``|g * dL/dg|`` over sparse training; this library's extension).
GATE_SCORES = ("magnitude", "taylor")
#: What the gates' gradient (and so ``reg``) is measured against: ``"model"`` — one running
#: mean ``|dL/dg|`` over every gate; ``"position"`` — one per gate position (the ``qkv``,
#: ``proj``, ``fc1``, ``fc2`` inputs, each over all blocks), so each position's gates are
#: thresholded against their own typical gradient; ``"gate"`` — each gate's own running RMS
#: gradient (RMSprop's scale), so no gate's step exceeds a few ``gate_lr`` however heavy-tailed
#: the gradients are, and a gate survives the L1 term only while its gradient keeps one sign.
#: ``"capped"`` — per position, but no gate's scale below its own RMS gradient, so a gate with a
#: heavy-tailed gradient moves at most a few ``gate_lr`` per step (short runs, large ``gate_lr``).
GRAD_SCALES = ("model", "position", "gate", "capped")


@dataclass(frozen=True)
class VTPConfig:
    """Options of :class:`~tp_vit_plugins.VTPPruner` (its ratio and structure switches are constructor arguments).

    Attributes:
        reg: L1 strength, relative to the running mean gate gradient (dimensionless; see
            :mod:`tp_vit_plugins.vtp.pruner`).
        grad_scale: What each gate's gradient is divided by, one of :data:`GRAD_SCALES`.
        gate_lr: Learning rate of the gates' own proximal SGD step; one step shrinks a gate by
            ``gate_lr * reg`` besides the (normalised) loss gradient. ``None``: 0 while closing
            (the gates are held at 1 unless closed), else from ``sparse_steps`` and ``shrink``,
            else 0.01.
        sparse_steps: Optimizer steps of the planned sparse training (sets ``gate_lr`` and the
            closing rounds); ``None``: the closing rounds follow the epoch length that
            ``update_regularizer()`` (once per epoch, as in tp's loop) reveals.
        threshold: Prune every dimension whose gate score is ``<= threshold`` (the paper's rule;
            ``0.0`` = the gates sparse training zeroed) instead of a fixed ratio.
        shrink: With ``sparse_steps``: how far the L1 term alone moves a gate over the whole
            sparse training (``gate_lr * reg * sparse_steps``).
        fold_values: Fold the surviving gate values into the weights (the paper's VTP);
            ``False``: the gates only choose what goes, kept dims return to their ungated scale.
        gated_layers: Explicit gate positions (a subset of :data:`GATED_LAYERS`); ``None``:
            the positions that score the enabled structures.
        score: What ranks the dims, one of :data:`GATE_SCORES`.
        close: Close gates during sparse training (this library's extension): ``None`` — on
            whenever the settings allow it; ``True`` — refuse settings it cannot serve;
            ``False`` — the paper's plain sparse training.
        close_params: A parameter budget for closing (the share of the model's parameters
            whose dims close); the prune then removes the zero gates.
        close_rounds: Closing rounds (over the first half of the sparse phase with
            ``sparse_steps``; else from the first epoch end on, half an epoch apart).
        prune_inputs: Gate the inputs of every block's ``qkv`` and ``fc1`` too and remove,
            per block, the input dims whose scores fall below the cut the MLP and head dims
            share (one ranking over all four projections; the block's normalised input is
            indexed, the residual stream keeps its width: :mod:`tp_vit_plugins.core.inputs`).
            Needs ``close=False`` and ``prune_embed_dim=False``.
    """

    reg: float = option(0.5, Flag("--reg", "L1 strength, relative to the mean gate gradient"))
    grad_scale: str = option(
        "model",
        Flag("--gate-grad-scale", "what gate gradients (and --reg) are measured against (see VTPConfig)", GRAD_SCALES),
    )
    gate_lr: float | None = None
    sparse_steps: int | None = None
    threshold: float | None = option(
        None, Flag("--gate-threshold", "prune every dim whose gate is <= this (0: the zeroed gates) instead of --pruning-ratio")
    )
    shrink: float = option(1.0, Flag("--shrink", "how far the L1 step alone moves a gate over the sparse phase"))
    fold_values: bool = option(
        False,
        Flag("--fold-gate-values", "fold the trained gate values into the weights (the paper's VTP)", value=True),
        Flag("--gates-rank-only", "the gates only choose what goes; kept dims keep their ungated scale", value=False),
    )
    gated_layers: Sequence[str] | None = None
    score: str = option(
        "taylor", Flag("--gate-score", "rank dims by mean |g * dL/dg| over sparse training, or by |g|", GATE_SCORES)
    )
    close: bool | None = option(
        None, Flag("--no-gate-closing", "plain L1 sparse training instead of closing the lowest gates in rounds", value=False)
    )
    close_params: float | None = None
    close_rounds: int = 4
    prune_inputs: bool = False

    @classmethod
    def preset(cls, name: str) -> VTPConfig:
        """A named set of options, one of :data:`PRESETS`; individual options still override it.

        * ``"paper"`` — VTP as its paper describes it: gates on the input dims of every linear
          projection of every block (``qkv``, ``proj``, ``fc1``, ``fc2``; ``prune_inputs=True``),
          trained with the L1 penalty (a proximal step, so unimportant gates reach exactly 0;
          ``close=False``), dims ranked by gate magnitude ``|g|`` (``score="magnitude"``) and
          removed per layer, surviving gate values folded into the weights
          (``fold_values=True``), then fine-tuning. Give ``sparse_steps`` so the gate
          step size follows the run's length. ``reg`` is relative to each gate position's own
          mean gradient (``grad_scale="position"``, this library's: the qkv / fc1 input gates
          see smaller gradients than the proj / fc2 ones, and one scale zeroed them first).
        * ``"closing"`` (= ``"recommended"``, the defaults, chosen on the zoo) — the lowest-scoring
          gates closed in rounds during sparse training while the others are held at 1, dims
          ranked by ``|g * dL/dg|``, gate values not folded.

        Raises:
            ValueError: Unknown name.
        """
        if name in ("recommended", "closing"):
            return cls()
        if name == "paper":
            return cls(close=False, score="magnitude", fold_values=True, prune_inputs=True, grad_scale="position")
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")

    def __post_init__(self) -> None:
        if self.gated_layers is not None:
            object.__setattr__(self, "gated_layers", tuple(self.gated_layers))
        if self.reg < 0 or (self.gate_lr is not None and self.gate_lr < 0):
            raise ValueError(f"reg and gate_lr must be >= 0, got reg={self.reg}, gate_lr={self.gate_lr}")
        if self.sparse_steps is not None and (not isinstance(self.sparse_steps, int) or self.sparse_steps < 1):
            raise ValueError(f"sparse_steps must be a positive int, got {self.sparse_steps!r}")
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.shrink <= 0:
            raise ValueError(f"shrink must be > 0, got {self.shrink}")
        if self.grad_scale not in GRAD_SCALES:
            raise ValueError(f"grad_scale must be one of {GRAD_SCALES}, got {self.grad_scale!r}")
        if self.score not in GATE_SCORES:
            raise ValueError(f"score must be one of {GATE_SCORES}, got {self.score!r}")
        if self.close_params is not None and not 0.0 <= self.close_params < 1.0:
            raise ValueError(f"close_params must lie in [0, 1), got {self.close_params}")
        if self.close is False and self.close_params is not None:
            raise ValueError("close=False contradicts close_params (a closing budget); drop one of them")
        if self.gated_layers is not None and (not self.gated_layers or set(self.gated_layers) - set(GATED_LAYERS)):
            raise ValueError(f"gated_layers must be a non-empty subset of {GATED_LAYERS}, got {list(self.gated_layers)}")
