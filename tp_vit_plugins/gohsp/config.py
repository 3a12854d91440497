"""GOHSP's options in one frozen object (:class:`GOHSPConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GOHSPConfig", "PRESETS", "UNIT_TYPES", "METRICS"]

#: Named option sets (``GOHSPPruner(..., config="paper")``; ``GraphHeadImportance(config=...)``).
PRESETS = ("paper", "recommended")

#: Unit types GOHSP can remove.
UNIT_TYPES = ("heads", "head_dims", "mlp")
#: The norm of the Z-step projection: ``"euclidean"`` (units scored by their weight energy
#: ``sum W^2``, as the nearest point in the Euclidean norm) or ``"fisher"`` (squared distance
#: weighted by the mean of ``(dL/dW)^2``: units scored by ``sum F W^2``, the second-order loss
#: change of zeroing them; this library's extension). Either way each unit's score per parameter
#: is divided by the mean of its kind (heads within their block) before units compete, so the
#: Z-step is a *normalised* projection, not the exact nearest point (this library's choice).
METRICS = ("euclidean", "fisher")
#: How the graph ranking scales the Z-step's head scores (see :class:`GOHSPConfig`).
GRAPH_GUIDES = ("mass", "zscore")


@dataclass(frozen=True)
class GOHSPConfig:
    """Options of :class:`~tp_vit_plugins.GOHSPPruner` (its budget, ``pruning_ratio``, is a constructor argument).

    Attributes:
        structures: Unit types to prune, a non-empty subset of :data:`UNIT_TYPES`.
        metric: The Z-step projection's norm, one of :data:`METRICS` (``"fisher"``: estimated by
            :meth:`~tp_vit_plugins.GOHSPPruner.calibrate_fisher` and every sparse-training step;
            this library's extension, the paper's projection is Euclidean).
        proximal: The pull towards ``Z`` as an exact proximal step of strength ``c`` on the
            weights after each backward, outside the optimizer (as AdamW decouples weight
            decay); ``None``: ``rho (W - Z + U)`` is added to the gradient (textbook ADMM).
        graph_bias: Strength of the graph ranking in the projection (0 ignores the graph).
        graph_guide: How the ranking scales a head's Z-step score: ``"mass"``, by its normalised
            PageRank mass ``s ** graph_bias``; ``"zscore"``, by ``exp(graph_bias * z)`` with ``z``
            the head's standardised score within its block — the ranking's order counts, however
            flat the stationary distribution is (PageRank on a dense similarity graph is nearly
            uniform, so ``"mass"`` would leave it almost no say).
        admm_interval: Optimizer steps between the dual updates that ``regularize`` runs itself.
            ``None`` (default): the cadence follows the training it sees, so tp's loop
            (``update_regularizer()`` once per epoch) needs nothing more — dual updates after
            ``2 * fisher_warmup`` steps, then at doubling gaps until the first
            ``update_regularizer()`` call, whose step count is the epoch length ``L``; from then on
            every ``L // 2`` steps besides your calls (a call right after a dual update is skipped).
        fisher_warmup: With ``metric="fisher"`` and no
            :meth:`~tp_vit_plugins.GOHSPPruner.calibrate_fisher`: the first training steps
            only estimate the Fisher norm (``regularize`` does not pull yet), then ``Z`` is
            re-projected from ``W`` under it — the calibration done on training batches.
        rho: Initial ADMM penalty.
        rho_growth: Extra factor applied to ``rho`` at every dual update (1 = balancing only).
        balance: Residual balancing of ``rho`` (Boyd et al. 2011, §3.4.1).
        mu, tau: Balancing threshold and factor.
        tol: Relative primal residual ``||W - Z|| / ||W||`` below which ADMM has converged.
        min_heads: Heads every block keeps.
    """

    structures: tuple[str, ...] = UNIT_TYPES
    metric: str = "fisher"
    proximal: float | None = 0.2
    graph_bias: float = 1.0
    graph_guide: str = "mass"
    admm_interval: int | None = None
    fisher_warmup: int = 8
    rho: float = 1e-2
    rho_growth: float = 1.0
    balance: bool = True
    mu: float = 10.0
    tau: float = 2.0
    tol: float = 1e-2
    min_heads: int = 1

    @classmethod
    def preset(cls, name: str) -> GOHSPConfig:
        """A named set of options, one of :data:`PRESETS`; individual options still override it.

        * ``"paper"`` — GOHSP's optimisation stage as its paper describes it: ADMM towards
          heterogeneous structured sparsity (heads, head dims, MLP neurons under one parameter
          budget), the Z-step keeping the pattern of highest weight energy per parameter, each
          unit's energy normalised by its kind's mean (a normalised Euclidean projection; the
          exact nearest point would compare raw energies), with the graph ranking as
          a soft guideline (``graph_guide="zscore"``: a head one standard deviation above its
          block's mean counts ``e`` times its weight energy). Pair it with
          ``GraphHeadImportance(config="paper")`` (PageRank over an attention-correlation head
          graph, correlated heads ranked redundant). Reconstructed: the W-step as a proximal
          step (``proximal=0.2``; ``proximal=None`` puts ``rho (W - Z + U)`` into the
          optimizer's gradient instead, which does not converge within short fine-tuning
          budgets), the penalty schedule and residual balancing.
        * ``"recommended"`` — the defaults (chosen on the zoo): the Fisher-weighted projection,
          with ``GraphHeadImportance()``'s "who reads whom" graph.

        Raises:
            ValueError: Unknown name.
        """
        if name == "recommended":
            return cls()
        if name == "paper":
            return cls(metric="euclidean", graph_guide="zscore")
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")

    def __post_init__(self) -> None:
        structures = (self.structures,) if isinstance(self.structures, str) else tuple(self.structures)
        object.__setattr__(self, "structures", structures)
        if not structures or set(structures) - set(UNIT_TYPES):
            raise ValueError(f"structures must be a non-empty subset of {UNIT_TYPES}, got {list(structures)}")
        if self.graph_guide not in GRAPH_GUIDES:
            raise ValueError(f"graph_guide must be one of {GRAPH_GUIDES}, got {self.graph_guide!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.proximal is not None and self.proximal <= 0:
            raise ValueError(f"proximal must be > 0 (or None: the ADMM term goes through the gradient), got {self.proximal}")
        if self.rho <= 0 or self.rho_growth < 1:
            raise ValueError(f"need rho > 0 and rho_growth >= 1, got rho={self.rho}, rho_growth={self.rho_growth}")
        if self.admm_interval is not None and (not isinstance(self.admm_interval, int) or self.admm_interval < 1):
            raise ValueError(f"admm_interval must be a positive int (optimizer steps), got {self.admm_interval!r}")
        if not isinstance(self.fisher_warmup, int) or self.fisher_warmup < 1:
            raise ValueError(f"fisher_warmup must be an int >= 1 (training steps), got {self.fisher_warmup!r}")
        if self.mu <= 1 or self.tau <= 1 or self.tol <= 0:
            raise ValueError(f"need mu > 1, tau > 1 and tol > 0, got mu={self.mu}, tau={self.tau}, tol={self.tol}")
        if not isinstance(self.min_heads, int) or self.min_heads < 1:
            raise ValueError(f"min_heads must be an int >= 1, got {self.min_heads!r}")
