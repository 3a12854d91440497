"""VTP: Vision Transformer Pruning by learnable dimension gates (Zhu, Tang, Han, arXiv 2104.08500).

Pipeline (the paper's): insert gates (init 1) on the dimensions of every block; train with
``loss + reg * sum |g|``; prune the dimensions whose gates are small (MLP hidden dims, head
dims, embedding dims — tp removes coupled channels); fold the surviving gate values into the
weights; fine-tune.

What follows the paper: gates on every block's dimensions, the L1 penalty on them, pruning
by gate magnitude with a threshold (``threshold=``), folding (``fold_values=True``),
fine-tuning. This library's reconstructions and extensions (listed in the README):

* **Where the gates sit.** By default only where something is pruned: input gates on ``fc2``
  (MLP hidden dims) and on ``proj`` (head dims, the v side of each head dim); with
  ``prune_embed_dim=True`` also on the inputs of ``qkv`` and ``fc1`` (embedding dims, one
  residual-stream decision for all blocks). ``gated_layers=`` places them anywhere in
  :data:`GATED_LAYERS`.
* **How the L1 term is applied.** A proximal step (:meth:`GateSet.proximal_step`): the gates
  take their own plain-SGD step at ``gate_lr`` and a soft threshold ``gate_lr * reg``, outside
  the model's optimizer, so gates reach exactly 0 whatever that optimizer is.
* **Units.** Gate gradients of a mean loss are tiny and model-dependent, so the gradient is
  divided by a running mean of ``|dL/dg|`` over all gates (an EMA, one scalar; with
  ``grad_scale="position"`` one per gate position, e.g. all ``fc1`` inputs; ``"gate"`` each
  gate's own running RMS gradient; ``"capped"`` the position's, raised to the gate's RMS where
  that is larger, so no gate steps more than a few ``gate_lr``): ``reg`` is
  then dimensionless — a gate whose mean gradient stays below ``reg`` times the average
  gate's (of its position) is driven to 0. ``gate_lr`` is per step; give ``sparse_steps`` and it is set from
  ``shrink``, the distance the L1 term alone moves a gate over the run
  (``gate_lr = shrink / (reg * sparse_steps)``).
* **Ratio as well as threshold.** ``pruning_ratio`` ranks the dims globally across MLP and
  head dims (heterogeneous widths); ``threshold`` removes every dimension whose score is at
  most the threshold (``0.0``: exactly the gates the L1 step zeroed).
* **What ranks.** ``score="taylor"``: the mean over sparse training of ``|g * dL/dg|`` — the
  first-order loss change of closing the gate — times 0 where the L1 step zeroed the gate;
  the paper's ``|g|`` is ``score="magnitude"``. Both remove the zeroed gates first.
* Residual-stream dims (``prune_embed_dim=True``) are scored by the mean of the ``qkv`` /
  ``fc1`` input gates of all blocks (see :mod:`.importance`); not pruned by default.
* **Closing** (``close``, on by default): gates of the lowest-scoring dims are fixed at
  exactly 0 in a few rounds, up to the pruning budget, so the end of the sparse phase already
  trains the pruned network (:mod:`.closing`). With ``sparse_steps`` the rounds fall in the
  first half of sparse training; without it (tp's loop) the first round falls at the first
  ``update_regularizer()`` call, whose step count is the epoch length, and the others follow
  every half epoch. While closing, the other gates are held at 1 by default
  (``gate_lr=0``): they measure ``|g * dL/dg|`` and mask, so the prune changes nothing the
  sparse phase trained.
* **Gates rank, they are not folded** by default (``fold_values=False``); the paper's
  folding is ``fold_values=True``.

The measurements behind the defaults are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import typing
from collections.abc import Generator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..core.extras import install_hint
from ..core.inputs import prune_block_inputs
from ..core.metrics import count_params
from ..core.options import check_pruner_kwargs, split_options
from ..core.pruner import ViTPruner, check_ratio
from ..core.snapshot import ModuleSnapshot
from ..hosts import host_for, unit_param_costs
from .closing import closing_schedule, closing_shares, select_closed
from .config import GATE_SCORES, GATED_LAYERS, VTPConfig
from .gates import GATE_NAME, OUT_GATE_NAME, GateSet
from .importance import GateImportance

__all__ = ["VTPPruner", "VTPConfig", "GATED_LAYERS", "GATE_SCORES", "default_gated_layers"]

#: Gate positions per prunable structure (the default: gate exactly what may be pruned).
GATES_FOR = {"mlp": ("fc2",), "embed": ("qkv", "fc1")}


def default_gated_layers(prune_mlp: bool, prune_head_dims: bool, prune_embed_dim: bool) -> tuple:
    """The gate positions that score the enabled structures, and no others."""
    names = [*(GATES_FOR["mlp"] if prune_mlp else ()), *(GATES_FOR["embed"] if prune_embed_dim else ())]
    if prune_head_dims:
        names.append("proj")
    return tuple(names)


def _closing_problem(prune_embed_dim: bool, head_ratio: float) -> str | None:
    """Why these settings rule out gate closing (``None``: they do not)."""
    if prune_embed_dim or head_ratio > 0:
        return (
            "it closes MLP hidden dims and head dims, not whole heads or embedding dims: use prune_embed_dim=False "
            "and head_pruning_ratio=0 (or close=False)"
        )
    return None


def _block_linears(
    model: nn.Module, names: Sequence[str]
) -> tuple[list[nn.Linear], list[nn.Linear], dict[str, list[tuple[nn.Linear, str]]]]:
    """``(input-gated layers, output-gated layers, {gate position: [(layer, gate name)] over the blocks})``."""
    ins, outs, positions = [], [], {}
    for b in host_for(model).block_layers(model):
        for n in names:  # "qkv": the fused qkv, or q, k and v (each its own gate)
            if n in ("qkv", "qkv_out"):
                layers = list(b.in_projs)
            elif isinstance(getattr(b, n), nn.Linear):
                layers = [getattr(b, n)]
            else:
                continue
            (outs if n == "qkv_out" else ins).extend(layers)
            gate = OUT_GATE_NAME if n == "qkv_out" else GATE_NAME
            positions.setdefault(n, []).extend((lin, gate) for lin in layers)
    return ins, outs, positions


class VTPPruner(ViTPruner):
    """VTP as a ``tp.pruner.BasePruner``: gates + L1 sparse training + gate importance.

    Example (tp's sparse-training loop; nothing else is needed)::

        pruner = tpv.VTPPruner(model, example, pruning_ratio=0.4)
        for epoch in range(sparse_epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(); loss.backward()
                pruner.regularize(model)     # gate scores; closing rounds
                optimizer.step()
            pruner.update_regularizer()      # epoch end: the closing rounds' cadence
        print(pruner.gate_zero_share())   # share of gates at exactly 0
        pruner.step()        # rank by the gate scores, remove the gates, prune, sync attention
        train(model, loader, finetune_epochs)

    Defaults differ from :class:`ViTPruner`'s on purpose: ``ViTPruner`` mirrors tp's
    constructor and prunes nothing until given ratios, while VTP is a method with a budget
    (``pruning_ratio=0.4``) that ranks every gated dimension of the model together
    (``global_pruning=True``, head dims included), as the paper ranks its gates.

    Args:
        model: A timm ViT-family model (gates are attached at construction).
        example_inputs: Input for tp's graph tracing.
        importance: Defaults to :class:`~tp_vit_plugins.GateImportance` (third, as in tp's pruners).
        pruning_ratio: Share of dimensions removed, in ``[0, 1)`` (ignored with ``threshold``).
        config: The method's options (:class:`~tp_vit_plugins.vtp.VTPConfig`), or a preset's name
            (``"paper"``, ``"closing"`` = ``"recommended"``: :meth:`~tp_vit_plugins.vtp.VTPConfig.preset`).
        global_pruning: One ranking across all layers and structure types (heterogeneous widths).
        prune_mlp: MLP hidden dims may go.
        prune_head_dims: Dims inside heads may go (in rotary pairs for EVA02: see ``ViTPruner``).
        prune_embed_dim: Embedding (residual-stream) dims may go.
        **kwargs: :class:`~tp_vit_plugins.vtp.VTPConfig` fields (override ``config``), then
            :class:`ViTPruner` arguments (``head_pruning_ratio``, ``round_to``, ...).

    Raises:
        ValueError: Bad ratio or options, ``threshold`` without global pruning, or closing
            asked for (``close=True`` or ``close_params``) with settings it cannot serve
            (embedding dims, whole heads, rotary head dims, blocks without a two-layer MLP);
            the model is left as it was.
        TypeError: The model is not a supported ViT, a number where the importance goes, or an unknown keyword.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        importance: tp.importance.Importance | None = None,
        pruning_ratio: float = 0.4,
        config: VTPConfig | str | None = None,
        *,
        global_pruning: bool = True,
        prune_mlp: bool = True,
        prune_head_dims: bool = True,
        prune_embed_dim: bool = False,
        **kwargs: typing.Any,
    ) -> None:
        if isinstance(importance, (int, float)):
            raise TypeError(
                f"VTPPruner takes importance third, as tp's pruners do; got {importance!r}: "
                f"pass it as pruning_ratio={importance!r}"
            )
        pruning_ratio = check_ratio("pruning_ratio", pruning_ratio)
        cfg, kwargs = split_options(VTPConfig, config, kwargs, "VTPPruner")
        check_pruner_kwargs("VTPPruner", kwargs, ViTPruner.__init__, tp.pruner.BasePruner.__init__, config_cls=VTPConfig)
        self.config = cfg
        reg, gate_lr, sparse_steps, threshold, shrink = cfg.reg, cfg.gate_lr, cfg.sparse_steps, cfg.threshold, cfg.shrink
        fold_values, gated_layers, score, close, close_params = (
            cfg.fold_values, cfg.gated_layers, cfg.score, cfg.close, cfg.close_params,
        )  # fmt: skip
        if threshold is not None and not global_pruning:
            raise ValueError(f"threshold={threshold} needs global_pruning=True (one threshold across layers)")
        if cfg.prune_inputs and (prune_embed_dim or close is not False or not global_pruning):
            raise ValueError(
                "prune_inputs removes each block's own input dims by one global ranking of the gates: use "
                "prune_embed_dim=False, close=False and global_pruning=True (the paper preset)"
            )
        explicit = bool(close) or close_params is not None  # asked for: refuse what cannot close
        problem = _closing_problem(prune_embed_dim, float(kwargs.get("head_pruning_ratio", 0.0)))
        if problem and (explicit or (close is None and pruning_ratio > 0)):  # never a silent switch to plain L1 training
            raise ValueError(f"gate closing (the recommended selection): {problem}")
        closing = close is not False and (close_params is not None or pruning_ratio > 0) and not problem
        #: Why gate closing is off (``None`` when it is on): asked for ``close=False``, nothing to prune, or ``problem``.
        self.closing_off_reason = (
            None if closing else "close=False" if close is False else problem or "nothing to prune (pruning_ratio=0)"
        )
        plan = closing_schedule(sparse_steps, cfg.close_rounds) if closing and sparse_steps else []  # validates
        if closing and close_params is not None and threshold is None:
            threshold = 0.0  # a parameter budget: remove the closed (zero) gates
        total_params = count_params(model)
        before = ModuleSnapshot(model) if closing else None  # closing checks the built pruner: undo on refusal
        if gated_layers is None:
            heads_ranked = prune_head_dims or float(kwargs.get("head_pruning_ratio", 0.0)) > 0  # heads need gates too
            gated_layers = default_gated_layers(prune_mlp, heads_ranked, prune_embed_dim)
            if cfg.prune_inputs:
                gated_layers = (*gated_layers, *(n for n in ("qkv", "fc1") if n not in gated_layers))
        if not gated_layers:
            raise ValueError("nothing to gate: enable prune_mlp, prune_head_dims or prune_embed_dim (or give gated_layers)")
        #: What :meth:`fit_params` builds its trial pruners from (the keywords still refer to ``model``'s modules).
        self._rebuild = dict(
            example_inputs=example_inputs, config=cfg, global_pruning=global_pruning, prune_mlp=prune_mlp,
            prune_head_dims=prune_head_dims, prune_embed_dim=prune_embed_dim, gated_layers=gated_layers, **kwargs,
        )  # fmt: skip
        super().__init__(
            model,
            example_inputs,
            importance if importance is not None else GateImportance(),
            pruning_ratio=pruning_ratio,
            global_pruning=global_pruning,
            prune_mlp=prune_mlp,
            prune_head_dims=prune_head_dims,
            prune_embed_dim=prune_embed_dim,
            **kwargs,
        )
        if closing:
            problem = self._closable(gated_layers)
            if problem and explicit:
                before.restore()  # attention converted by the construction above (EVA / BEiT) goes back
                raise ValueError(f"gate closing: {problem}")
            closing = not problem
        #: Gates trained under L1 without ``sparse_steps`` or ``gate_lr``: the first epoch end sets the step size.
        self._pace_gate_lr = cfg.gate_lr is None and not closing and not sparse_steps
        if gate_lr is None:  # closing: the gates are probes and masks, held at 1 unless closed
            gate_lr = 0.0 if closing else shrink / (max(reg, 1e-12) * sparse_steps) if sparse_steps else 1e-2
        self.reg, self.gate_lr, self.threshold, self.shrink = float(reg), float(gate_lr), threshold, float(shrink)
        self.sparse_steps, self.steps_done = sparse_steps, 0
        self.fold_values, self.score = fold_values, score
        self.grad_ema_decay = 0.9
        ins, outs, positions = _block_linears(model, gated_layers)
        self.gates = GateSet(ins, outs)  # after tracing: tp never sees the gates
        #: The gates each running gradient mean covers (``grad_scale``): ``{name: [(layer, gate name)]}``.
        self._grad_groups = {
            "model": {"model": self.gates.pairs()}, "position": positions, "gate": {}, "capped": positions,
        }[cfg.grad_scale]  # fmt: skip
        #: ``grad_scale="gate"`` / ``"capped"``: per gate, the EMA of ``(dL/dg)^2`` (and its bias-correction weight).
        self._grad_sq: dict[nn.Parameter, torch.Tensor] | None = {} if cfg.grad_scale in ("gate", "capped") else None
        self._grad_sq_weight = 0.0
        #: Per group: ``[EMA of the mean |dL/dg|, its bias-correction weight]``.
        self._grad_ema = {name: [0.0, 0.0] for name in self._grad_groups}
        #: Running sums of ``|g * dL/dg|`` per gate entry (``score="taylor"``), and the steps summed.
        self._saliency: dict[nn.Parameter, torch.Tensor] = {}
        self._saliency_steps = 0
        #: Every gate value at the moment they were folded (``None`` before): for reports and histograms.
        self.trained_gates: torch.Tensor | None = None
        #: Whether gates close during sparse training (see ``close``), and with which budget.
        self.closing, self.close_params = closing, close_params
        #: Closing rounds still to come, ``[(step, share of the budget)]``; parameters closed so far.
        self._close_plan = plan if closing else []
        #: Closing rounds still to be placed once the epoch length is known (no ``sparse_steps``:
        #: the first falls at the first ``update_regularizer()`` call, the others half an epoch apart).
        self._epoch_rounds = cfg.close_rounds if closing and not sparse_steps else 0
        #: Steps between construction and the first ``update_regularizer()`` call (``None`` before it).
        self.epoch_steps: int | None = None
        self.closed_params = 0
        #: Per-block input dims removed at the prune (``prune_inputs``): ``[(attention inputs, MLP inputs)]``.
        self.prune_inputs = cfg.prune_inputs
        self.inputs_removed: list[tuple[int, int]] = []
        self._inputs: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None  # input-gate scores at folding
        self._total_params = total_params
        self._close_budget = (close_params or 0.0) * total_params

    @property
    def closed_share(self) -> float:
        """Parameters whose gates are closed, as a share of the model's parameters before gating."""
        return self.closed_params / max(1, self._total_params)

    def _closable(self, gated_layers: Sequence[str]) -> str | None:
        """Why gate closing cannot run on this model and these gates (``None``: it can)."""
        if self._rope_pairs:
            return "rotary head dims (EVA02) are not closed: use prune_head_dims=False or close=False"
        need = {"fc2"} if self._enabled_kinds["mlp"] else set()
        need |= {"proj"} if self._enabled_kinds["attention"] else set()
        if not need <= set(gated_layers):
            return f"it needs gates on {sorted(need)}, got gated_layers={list(gated_layers)}"
        for b in self.host.block_layers(self.model):
            if self._enabled_kinds["mlp"] and (b.fc1 is None or b.fc2 is None):
                return f"it needs a two-layer MLP in every block ({b.name} has none): use close=False"
        return None

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gate vectors (already in ``model.parameters()`` while attached)."""
        return self.gates.parameters()

    def regularize(self, model: nn.Module | None = None, loss: torch.Tensor | None = None) -> None:
        """The proximal L1 step on the gates (``step_hook``: after ``backward``, before the optimizer step).

        Gates move by ``-gate_lr * dL/dg / s`` (``s``: a bias-corrected EMA of the mean
        ``|dL/dg|``, or of each gate's own squared gradient, as ``grad_scale`` says), then are
        soft-thresholded by ``gate_lr * reg``; their gradients are cleared so the model's
        optimizer leaves them alone.
        """
        d, scales, rms = self.grad_ema_decay, {}, {}
        if self._grad_sq is not None:  # "gate" / "capped": each gate's own RMS gradient
            self._grad_sq_weight = d * self._grad_sq_weight + (1 - d)
            for lin, name in self.gates.pairs():
                g = lin._parameters.get(name)
                if g is None or g.grad is None:
                    continue
                sq = self._grad_sq.setdefault(g, torch.zeros_like(g, requires_grad=False))
                sq.mul_(d).add_(g.grad.detach().square(), alpha=1 - d)
                rms[(lin, name)] = (sq / self._grad_sq_weight).sqrt().clamp_min(1e-30)
        for name, pairs in self._grad_groups.items():
            ema = self._grad_ema[name]
            current = self.gates.mean_abs_grad(pairs)
            if current > 0:
                ema[0], ema[1] = d * ema[0] + (1 - d) * current, d * ema[1] + (1 - d)
            scale = ema[0] / ema[1] if ema[1] > 0 else 1.0  # a weight > 0 only after a gradient > 0
            scales.update({pair: rms[pair].clamp_min(scale) if pair in rms else scale for pair in pairs})
        if not self._grad_groups:
            scales = rms
        if self.score == "taylor":
            self._accumulate_saliency()
        self.gates.proximal_step(self.gate_lr, self.reg, grad_scale=scales)
        self.steps_done += 1
        while self._close_plan and self.steps_done >= self._close_plan[0][0]:
            self._close(self._close_plan.pop(0)[1])

    def update_regularizer(self) -> None:
        """Epoch end in tp's loop: without ``sparse_steps``, paces closing or the L1 step by the epoch length.

        The first call records the epoch length ``L`` (the steps ``regularize`` saw so far).
        With closing it runs the first of ``close_rounds`` rounds; the others follow every
        ``L // 2`` steps. With gates trained under L1 (``close=False``, the paper preset) and
        no ``gate_lr`` given, it sets ``gate_lr = shrink / (reg * 2 L)``: from then on the L1
        term alone moves a gate by ``shrink`` over two epochs, whatever the epoch length (before
        the first call the step is ``1e-2``). With ``sparse_steps`` it changes nothing.
        """
        if self.epoch_steps is not None or not self.steps_done:
            return
        self.epoch_steps = self.steps_done
        if self._pace_gate_lr:
            self.gate_lr = self.shrink / (max(self.reg, 1e-12) * 2 * self.epoch_steps)
        if self._epoch_rounds:
            rounds, gap = self._epoch_rounds, max(1, self.epoch_steps // 2)
            self._epoch_rounds = 0
            shares = closing_shares(rounds)
            self._close(shares[0])
            self._close_plan = [(self.steps_done + k * gap, share) for k, share in enumerate(shares[1:], 1)]

    @torch.no_grad()
    def _close(self, share: float) -> None:
        """Close the lowest-scoring dims that reach ``share`` of the closing budget.

        The budget is ``close_params`` of the model's parameters, or else the ``pruning_ratio``
        share of the ranked units counted as tp's global ranking counts them (one per MLP hidden
        dim, one per in-head index).
        """
        ins, _ = self.gate_scores()
        blocks = self.host.block_layers(self.model)
        mlp, dims = self._enabled_kinds["mlp"], self._enabled_kinds["attention"]
        neuron_scores = [ins[b.fc2] if mlp and b.fc2 in ins else None for b in blocks]
        layout = self.host.head_layout
        dim_scores = [ins[b.proj].view(*layout(b.attn)).mean(0) if dims and b.proj in ins else None for b in blocks]
        costs = [unit_param_costs(b) for b in blocks]  # (cell, neuron)
        neuron_costs = [neuron for _, neuron in costs]
        dim_costs = [cell * self.host.head_layout(b.attn)[0] for b, (cell, _) in zip(blocks, costs)]
        floors = [self.head_dim_floors.get(b.key, 1) for b in blocks]  # no head narrower than its floor
        if self.close_params is not None:
            chosen = select_closed(neuron_scores, dim_scores, neuron_costs, dim_costs, share * self._close_budget, floors)
        else:
            units = sum(int(t.numel()) for t in (*neuron_scores, *dim_scores) if t is not None)
            budget = units - int(units * (1 - float(self.pruning_ratio)))
            ones = [1] * len(blocks)
            chosen = select_closed(neuron_scores, dim_scores, ones, ones, share * budget, floors)
        params = 0
        for i, (b, neurons, head_dims) in enumerate(zip(blocks, chosen.neurons, chosen.head_dims)):
            if neurons:
                self.gates.close(b.fc2, neurons)
            if head_dims:
                H, d = self.host.head_layout(b.attn)
                self.gates.close(b.proj, [h * d + j for h in range(H) for j in head_dims])
            params += len(neurons) * neuron_costs[i] + len(head_dims) * dim_costs[i]
        self.closed_params = params

    @torch.no_grad()
    def _accumulate_saliency(self) -> None:
        """Add this step's ``|g * dL/dg|`` (first-order loss change of zeroing each gate) to the running sums."""
        touched = False
        for g in self.gates.parameters():
            if g.grad is None:
                continue
            s = (g.detach() * g.grad.detach()).abs().float()
            self._saliency[g] = self._saliency[g] + s if g in self._saliency else s.clone()
            touched = True
        self._saliency_steps += int(touched)

    def gate_scores(self) -> tuple[dict[nn.Linear, torch.Tensor], dict[nn.Linear, torch.Tensor]]:
        """``(input-gate scores, output-gate scores)`` per gated layer, as :class:`GateImportance` ranks them.

        ``score="magnitude"``: the gate values (the paper's rule). ``score="taylor"``: the mean
        over sparse-training steps of ``|g * dL/dg|``, times 0 where the gate is now exactly 0
        (so the threshold rule removes the same dims either way) — or, while closing, times 0
        where the gate was closed (gates the L1 step zeroed keep their mean, so a prune to the
        budget stops among them by evidence, not by ties); without any recorded step it falls
        back to the gate values.
        """
        ins, outs = self.gates.values(), self.gates.out_values()
        if self.score == "magnitude" or not self._saliency_steps:
            return ins, outs

        def taylor(table: dict[nn.Linear, torch.Tensor], name: str) -> dict[nn.Linear, torch.Tensor]:
            out = {}
            for lin, g in table.items():
                total = self._saliency.get(getattr(lin, name))
                alive = g != 0 if not self.closing else ~self.gates.closed.get(lin, torch.zeros_like(g, dtype=torch.bool))
                out[lin] = g.new_zeros(g.shape) if total is None else (total / self._saliency_steps).to(g) * alive
            return out

        return taylor(ins, GATE_NAME), taylor(outs, OUT_GATE_NAME)

    def _gate_values(self) -> torch.Tensor:
        if self.gates.active:
            return self.gates.flat()
        return self.trained_gates if self.trained_gates is not None else torch.zeros(0)

    def gate_sparsity(self, threshold: float = 1e-2) -> float:
        """Share of gate entries with ``|g| < threshold`` (live gates, or the values at folding)."""
        flat = self._gate_values()
        return float((flat.abs() < threshold).float().mean()) if flat.numel() else 0.0

    def gate_zero_share(self) -> float:
        """Share of gate entries that are exactly 0 (live gates, or the values at folding)."""
        flat = self._gate_values()
        return float((flat == 0).float().mean()) if flat.numel() else 0.0

    def save_gate_histogram(self, path: str, bins: int = 50) -> str:
        """Write a histogram of the gate values (PNG; needs ``matplotlib``) and return ``path``.

        Raises:
            ImportError: matplotlib is not installed (the ``[plot]`` extra).
        """
        try:
            import matplotlib
        except ImportError as e:
            raise ImportError(f"the gate histogram needs matplotlib: {install_hint('plot')}") from e
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        flat = self._gate_values().float()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(flat.numpy(), bins=bins, color="#4c72b0")
        ax.set_xlabel("gate value")
        ax.set_ylabel("gates")
        ax.set_yscale("log")
        ax.set_title(f"VTP gates: {100 * self.gate_zero_share():.1f}% exactly 0 of {flat.numel()}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def remove_gates(self, fold: bool = True) -> None:
        """Fold (by default) and detach the gates without pruning."""
        if self.gates.active:
            self.trained_gates = self.gates.flat()
        self.gates.remove(fold=fold)

    def fold_gates(self) -> None:
        """Hand the trained gate values to the :class:`GateImportance` and remove the gates.

        With ``fold_values=True`` the gate values are folded into the weights first (exact).

        :meth:`step` does this itself; call it directly to rank by the gates elsewhere, e.g. on
        copies of the model in :func:`~tp_vit_plugins.fit_budget`. No-op once folded.
        """
        if self.gates.active:
            if self.prune_inputs:
                self._inputs = self._input_scores()
            if isinstance(self.importance, GateImportance):
                self.importance.set_gates(*self.gate_scores())
            self.remove_gates(fold=self.fold_values)  # before tp changes any shape (folding W <- W * g is exact)

    def width_scores(self) -> torch.Tensor:
        """Every width score tp's global ranking compares, concatenated (1-D).

        MLP hidden dims and embedding dims one score each; head dims one score per in-head
        index, averaged over the heads (tp removes the same dims in every head). Disabled
        structures are left out.
        """
        attn_of = {m: a for _, a in self._attentions for m in self.host.in_projections(a)}
        scores = []
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=self.root_module_types):
            kind = self.group_kind(group)
            if not self._enabled_kinds[kind]:
                continue
            if kind == "attention":
                attn = attn_of[self._is_atten_group(group)[1][0]]
                dims = self._attn_dim(attn)
                group = self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, list(range(dims)))
                imp = self.importance(group)
                if imp is not None:
                    scores.append(imp.float().view(self.num_heads[self._key(attn)], -1).mean(0))
                continue
            imp = self.importance(group)
            if imp is not None:
                scores.append(imp.float())
        return torch.cat(scores) if scores else torch.zeros(0)

    def ratio_for_threshold(self, threshold: float) -> float:
        """The global width ratio that removes exactly the dims whose score is ``<= threshold``."""
        scores = self.width_scores()
        k = int((scores <= threshold).sum())
        return 0.0 if k == 0 else min((k - 0.5) / scores.numel(), 0.99)  # tp keeps int(n * (1 - r)) = n - k

    def fit_params(self, max_params: float, iterations: int = 10) -> float:
        """Set ``pruning_ratio`` so that :meth:`step` leaves at most ``max_params`` parameters; return it.

        Folds the gates (as :meth:`step` would first), then bisects the ratio on pruned copies of the
        model, each by a pruner of the same options ranking by these gates' scores (the per-block
        input dims of ``prune_inputs`` included, which a :class:`~tp_vit_plugins.ViTPruner` fitted by
        :func:`~tp_vit_plugins.fit_budget` does not remove). The model itself is not pruned.

        Args:
            max_params: Parameters to keep at most (a count, e.g. ``0.6 * count_params(model)``).
            iterations: Bisection steps (each prunes one copy).

        Raises:
            ValueError: Gate closing is on (it reaches ``close_params`` itself), the pruner has
                already pruned, ``score="taylor"`` (its saliency sums stay with this pruner), or no
                ratio below 1 reaches ``max_params``.
        """
        from ..budget import clone_with_grads, remap_state  # budget imports the pruners' module tree
        from ..core.search import bisect_threshold

        if self.closing:
            raise ValueError("fit_params: gate closing removes close_params itself; use step()")
        if self.current_step > 0:
            raise ValueError("fit_params: this pruner has already pruned; fit before step()")
        if self.score == "taylor":
            raise ValueError('fit_params ranks copies by the gate values: use score="magnitude" (the paper preset)')
        self.fold_gates()

        def params_after(ratio: float) -> int:
            twin = clone_with_grads(self.model)
            options = remap_state(self._rebuild, self.model, twin)
            trial = VTPPruner(twin, importance=remap_state(self.importance, self.model, twin), pruning_ratio=ratio, **options)
            trial.remove_gates(fold=False)  # its fresh gates (all 1) must not replace the folded scores
            trial._inputs = self._inputs
            for _ in range(trial.iterative_steps):
                trial.step()
            return count_params(twin)

        if count_params(self.model) <= max_params:
            ratio = 0.0
        else:  # the first upper end that reaches the budget (near 1 the count need not fall with the ratio)
            top = next((r for r in (0.5, 0.8, 0.9, 0.95, 0.99) if params_after(r) <= max_params), None)
            if top is None:
                raise ValueError(f"fit_params: even pruning_ratio=0.99 keeps more than {max_params:.0f} parameters")
            ratio = bisect_threshold(lambda r: params_after(r) > max_params, 0.0, top, iterations)[1]
        self.pruning_ratio = ratio
        self.per_step_pruning_ratio = self.iterative_pruning_ratio_scheduler(ratio, self.iterative_steps)
        self._width_active = ratio > 0
        return ratio

    def _prune(self) -> Generator[tp.Group, None, None]:
        if self.gates.active and self.closing and (self._close_plan or self._epoch_rounds) and self.steps_done:
            self._close(1.0)  # a sparse phase shorter than the closing rounds: the prune closes the whole budget
            self._close_plan, self._epoch_rounds = [], 0
        last = self.current_step >= self.iterative_steps
        self.fold_gates()  # records the input-gate scores first (prune_inputs)
        inputs = self._inputs if self.prune_inputs and last else None
        threshold = self.threshold
        if inputs is not None and threshold is None:  # one cut over every gated dim: tp's width units and the inputs
            threshold = self._shared_cut(inputs)
        if threshold is not None and self.current_step <= self.iterative_steps:
            ratio = self.ratio_for_threshold(threshold)
            self.pruning_ratio = ratio
            self.per_step_pruning_ratio = self.iterative_pruning_ratio_scheduler(ratio, self.iterative_steps)
            self._width_active = ratio > 0
        yield from super()._prune()
        if inputs is not None:
            self._prune_inputs(inputs, threshold)

    def _input_scores(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per block, ``(attention input scores [C], MLP input scores [C] or None)`` from the ``qkv`` / ``fc1`` input gates."""
        ins, _ = self.gate_scores()
        p = float(getattr(self.importance, "p", 1.0))
        out = []
        for b in self.host.block_layers(self.model):
            attn = torch.stack([ins[lin].detach().abs().float().cpu() for lin in b.in_projs]).mean(0) ** p
            mlp = ins[b.fc1].detach().abs().float().cpu() ** p if b.fc1 is not None and b.fc1 in ins else None
            out.append((attn, mlp))
        return out

    def _shared_cut(self, inputs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> float:
        """The score at or below which ``pruning_ratio`` of all gated units go (tp's width units and the block inputs)."""
        scores = torch.cat([self.width_scores(), *(t for pair in inputs for t in pair if t is not None)])
        n = scores.numel()
        k = n - int(n * (1 - float(self.pruning_ratio)))  # tp keeps int(n * (1 - r))
        return float(scores.sort().values[k - 1]) if k > 0 else float("-inf")

    @torch.no_grad()
    def _prune_inputs(self, inputs: list[tuple[torch.Tensor, torch.Tensor | None]], cut: float) -> None:
        """Remove, block by block, the input dims scored at or below ``cut`` (each block keeps its best one)."""

        def gone(scores: torch.Tensor | None) -> list[int]:
            if scores is None:
                return []
            idx = (scores <= cut).nonzero().flatten().tolist()
            return idx if len(idx) < scores.numel() else [i for i in idx if i != int(scores.argmax())]

        self.inputs_removed = []
        for b, (attn, mlp) in zip(self.host.block_layers(self.model), inputs):
            a, m = gone(attn), gone(mlp)
            prune_block_inputs(b, a, m)
            self.inputs_removed.append((len(a), len(m)))
