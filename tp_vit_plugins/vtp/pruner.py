"""VTP: Vision Transformer Pruning by learnable dimension gates (Zhu, Tang, Han, arXiv 2104.08500).

Pipeline (the paper's): insert gates (init 1) on the dimensions of every block; train with
``loss + reg * sum |g|``; prune the dimensions whose gates are small (MLP hidden dims, head
dims, embedding dims — tp removes coupled channels); fold the surviving gate values into the
weights; fine-tune.

What follows the paper: gates on every block's dimensions, the L1 penalty on them, pruning
by gate magnitude with a threshold (``threshold=``), folding, fine-tuning. This library's
choices (the paper's text is not available here; these are reconstructions):

* **Where the gates sit.** Input gates on ``qkv`` and ``fc1`` (embedding dims), on ``fc2``
  (MLP hidden dims), and head dims gated where they are removed: output gates on ``qkv``
  (``"qkv_out"``: q, k and v of each head dim, which tp removes together) or, as in the first
  versions of this library, the ``proj`` input gate (``"proj"``: the v side only).
* **How the L1 term is applied.** A proximal step (:meth:`GateSet.proximal_step`): the gates
  take their own plain-SGD step at ``gate_lr`` and a soft threshold ``gate_lr * reg``, outside
  the model's optimizer, so gates reach exactly 0 whatever that optimizer is.
* **Units.** Gate gradients of a mean loss are tiny and model-dependent (median ``|dL/dg|``
  1e-5 to 3e-4 on the zoo), so the gradient is divided by a running mean of ``|dL/dg|``
  over all gates (an EMA, one scalar): ``reg`` is then dimensionless — a gate whose mean
  gradient stays below ``reg`` times the average gate's is driven to 0 — and the same value
  transfers between models and datasets. ``gate_lr`` is per step; give ``sparse_steps``
  (the number of sparse-training steps) and it is set from ``shrink``, the distance the L1
  term alone moves a gate over the run (``gate_lr = shrink / (reg * sparse_steps)``), so
  a short run on a small dataset and a long one shrink gates alike.
* **Ratio as well as threshold.** ``pruning_ratio`` (default) ranks the dims globally across
  MLP, head and embedding dims (heterogeneous widths); ``threshold`` removes every dimension
  whose score is at most the threshold (``0.0``: exactly the gates the L1 step zeroed).
* **What ranks.** By default (``score="taylor"``, this library's extension, chosen on the zoo)
  the mean over sparse training of ``|g * dL/dg|`` — the first-order loss change of closing
  the gate — times 0 where the L1 step zeroed the gate; the paper's ``|g|`` is
  ``score="magnitude"``. Both remove the zeroed gates first.
* Residual-stream dims (``prune_embed_dim=True``) are scored by the mean of the ``qkv`` /
  ``fc1`` input gates of all blocks (see :mod:`.importance`; ``"max"`` gave the same zoo
  results to 0.1 pt). They are not pruned by default.
* **Closing** (``close``, on by default when ``sparse_steps`` is given): gates of the
  lowest-scoring dims are fixed at exactly 0 in a few rounds during sparse training, up to
  the pruning budget, so the end of the sparse phase already trains the pruned network
  (:mod:`.closing`). While closing, the other gates are held at exactly 1 by default
  (``gate_lr=0``): they only measure ``|g * dL/dg|`` and mask, so the prune changes nothing
  the sparse phase trained (trained gate values that revert to 1 at the prune, or a gate step
  that is large on a short run, cost accuracy on the zoo: see ``gate_lr``).
* **Gates rank, they are not folded** by default (``fold_values=False``): after the short
  sparse phases measured on the zoo, the shrunken gate values cost more accuracy than they
  carry; the paper's folding is ``fold_values=True``.
"""

from __future__ import annotations

import typing
from collections.abc import Generator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..core.metrics import count_params
from ..core.pruner import ViTPruner, check_ratio
from ..core.snapshot import ModuleSnapshot
from ..hosts.timm.structure import block_layers, head_layout, unit_param_costs
from .closing import closing_schedule, select_closed
from .gates import GATE_NAME, OUT_GATE_NAME, GateSet
from .importance import GateImportance

__all__ = ["VTPPruner", "GATED_LAYERS", "HEAD_DIM_GATES", "GATE_SCORES", "default_gated_layers"]

#: Gate positions of a block: input gates of ``qkv``, ``proj``, ``fc1``, ``fc2`` and the
#: output gate of ``qkv`` (``"qkv_out"``: q, k, v of every head dim).
GATED_LAYERS = ("qkv", "proj", "fc1", "fc2", "qkv_out")
#: Gate positions per prunable structure (the default: gate exactly what may be pruned).
GATES_FOR = {"mlp": ("fc2",), "embed": ("qkv", "fc1")}
#: Head-dim gate choices: ``"qkv_out"`` (q, k, v of each dim) or ``"proj"`` (the v side).
HEAD_DIM_GATES = ("qkv_out", "proj")
#: What ranks the dims at pruning time: ``"magnitude"`` (``|g|``, the paper's) or
#: ``"taylor"`` (mean ``|g * dL/dg|`` over sparse training; this library's extension).
GATE_SCORES = ("magnitude", "taylor")


def default_gated_layers(prune_mlp: bool, prune_head_dims: bool, prune_embed_dim: bool, head_dim_gate: str) -> tuple:
    """The gate positions that score the enabled structures, and no others."""
    names = [*(GATES_FOR["mlp"] if prune_mlp else ()), *(GATES_FOR["embed"] if prune_embed_dim else ())]
    if prune_head_dims:
        names.append(head_dim_gate)
    return tuple(names)


def _closing_problem(sparse_steps: int | None, prune_embed_dim: bool, head_ratio: float, head_dim_gate: str) -> str | None:
    """Why these settings rule out gate closing (``None``: they do not)."""
    if not sparse_steps:
        return "it needs sparse_steps (the closing rounds are spread over the sparse phase)"
    if prune_embed_dim or head_ratio > 0 or head_dim_gate != "proj":
        return (
            "it closes MLP hidden dims and head dims gated at proj: use prune_embed_dim=False, "
            "head_pruning_ratio=0 and head_dim_gate='proj' (or close=False)"
        )
    return None


def _block_linears(model: nn.Module, names: Sequence[str]) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """``(input-gated layers, output-gated layers)`` of every block."""
    ins, outs = [], []
    for b in block_layers(model):
        ins.extend(getattr(b, n) for n in names if n != "qkv_out" and isinstance(getattr(b, n), nn.Linear))
        if "qkv_out" in names and isinstance(b.qkv, nn.Linear):
            outs.append(b.qkv)
    return ins, outs


class VTPPruner(ViTPruner):
    """VTP as a ``tp.pruner.BasePruner``: gates + L1 sparse training + gate importance.

    Example::

        pruner = tpv.VTPPruner(model, example, pruning_ratio=0.4)
        train(model, loader, epochs, step_hook=pruner.regularize)   # proximal L1 step on the gates
        print(pruner.gate_zero_share())   # share of gates the L1 step drove to exactly 0
        pruner.step()        # score by |gate|, remove the gates, prune, sync attention
        train(model, loader, finetune_epochs)

    Args:
        model: A timm ViT-family model (gates are attached at construction).
        example_inputs: Input for tp's graph tracing.
        pruning_ratio: Share of dimensions to remove, in ``[0, 1)`` (ignored with ``threshold``).
        reg: L1 strength, relative to the running mean gate gradient (see module docs).
        gate_lr: Learning rate of the gates' own proximal SGD step (see :mod:`.gates`); one
            step shrinks a gate by ``gate_lr * reg`` besides the (normalised) loss gradient.
            Default: 0 while closing (the gates are held at 1 unless closed; ``reg`` then
            plays no part; chosen on the zoo over trained gates: +0.87 pt [+0.45, +1.30] /
            +1.28 [+0.22, +2.43] at -40 / -70 % params, 2 epochs, ``benchmarks/zoo_vtp4``),
            else from ``sparse_steps``, else 0.01.
        sparse_steps: Optimizer steps of the planned sparse training (sets ``gate_lr``).
        threshold: Prune every dimension whose gate score is ``<= threshold`` (the paper's
            rule; ``0.0`` = the gates sparse training zeroed) instead of a fixed ratio.
            Needs ``global_pruning=True``.
        importance: Defaults to :class:`~tp_vit_plugins.GateImportance`.
        global_pruning: One threshold across all layers and structure types (heterogeneous)
            instead of per-layer thresholds.
        prune_mlp, prune_head_dims, prune_embed_dim: Which dimensions may go (head dims of
            rotary models, EVA02, go in rotary pairs: see ``ViTPruner``). Embedding dims
            are off by default (chosen on the zoo: pruning the residual stream too, at equal
            parameters, cost 22.0 pt [16.8, 27.2] at -40 % params, ``benchmarks/zoo_vtp``).
        shrink: With ``sparse_steps``: how far the L1 term alone moves a gate over the whole
            sparse training (``gate_lr * reg * sparse_steps``); 1.0 lets it drive a gate
            without any loss gradient from 1 to exactly 0 by the last step.
        head_dim_gate: Where head dims are gated, one of :data:`HEAD_DIM_GATES`.
        fold_values: Fold the surviving gate values into the weights (the paper's VTP).
            Default ``False`` (chosen on the zoo: +2.16 pt [+0.87, +3.49] at -40 % and
            +1.11 pt [-0.33, +2.60] at -70 % parameters over folding, zoo means with paired
            95 % intervals, ``benchmarks/zoo_vtp``): the gates only choose what goes and the kept
            dims return to their ungated scale. Removing a zeroed gate's dims is exact either way.
        gated_layers: Explicit gate positions (subset of :data:`GATED_LAYERS`); default: the
            positions that score the enabled structures (:func:`default_gated_layers`).
        score: What ranks the dims, one of :data:`GATE_SCORES` (see :meth:`gate_scores`).
            Default ``"taylor"`` (chosen on the zoo over the paper's ``"magnitude"``:
            +0.17 [-0.25, +0.62] / +0.61 [-0.78, +2.13] pt at -40 / -70 % params with 2 epochs,
            +0.08 [-0.24, +0.42] / +1.61 [+0.02, +3.19] pt with 4 epochs; paired 95 % intervals,
            ``benchmarks/zoo_vtp2``). A gate the L1 step zeroed scores 0 either way.
        close: Close gates during sparse training (library extension, :mod:`.closing`): in
            ``close_rounds`` rounds over the first ``close_until`` of the ``sparse_steps``,
            the gates of the lowest-scoring MLP hidden dims and head dims (in-head indices,
            all heads) are fixed at exactly 0, a cubic-growing share of the budget each
            round, so the rest of the sparse phase trains the pruned network. The budget is
            ``close_params`` if given, else ``pruning_ratio`` of the ranked dims (counted as
            tp's global ranking counts them, so :meth:`step` at that ratio removes the closed
            dims first). ``None`` (default): on whenever ``sparse_steps`` is given and the
            settings allow it (no embedding dims, whole heads, ``qkv_out`` gates, rotary head
            dims or blocks without a two-layer MLP), the paper's plain sparse training
            otherwise; ``True``: refuse settings it cannot serve; ``False``: off. Chosen on
            the zoo (``benchmarks/zoo_vtp3``, 2 epochs, paired 95 % intervals: over no closing
            +0.78 pt [+0.31, +1.26] / +6.99 [+5.59, +8.29] at -40 / -70 % params). With the
            gates held at 1 and one learning-rate schedule over sparse phase and fine-tune
            (``benchmarks/zoo_vtp4``): against tp Taylor + fine-tune +0.98 [+0.51, +1.51] /
            +7.64 [+6.83, +8.44], against dense + the same epochs -0.05 [-0.33, +0.23] /
            -1.35 [-1.75, -0.94].
        close_params: A parameter budget for closing: the share of the model's parameters
            whose dims close. :meth:`step` then removes the zero gates (``threshold=0.0``
            unless given) instead of using ``pruning_ratio``.
        close_rounds: Closing rounds (see ``close``).
        close_until: Share of the sparse phase by which the last closing round has run.
        close_start: Share of the sparse phase before the first closing round.
        **kwargs: Passed to :class:`ViTPruner` (``head_pruning_ratio``, ``round_to``, ...).

    Raises:
        ValueError: Bad ratio, negative ``reg`` / ``gate_lr`` / ``threshold``, ``threshold``
            without global pruning, unknown gate positions, or closing asked for (``close=True``
            or ``close_params``) with settings it cannot serve (no ``sparse_steps``, embedding
            dims, whole heads, rotary head dims, ``qkv_out`` gates, blocks without a two-layer
            MLP); the model is left as it was.
        TypeError: The model is not a timm ViT.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        pruning_ratio: float = 0.4,
        reg: float = 0.5,
        gate_lr: float | None = None,
        sparse_steps: int | None = None,
        threshold: float | None = None,
        importance: tp.importance.Importance | None = None,
        global_pruning: bool = True,
        prune_mlp: bool = True,
        prune_head_dims: bool = True,
        prune_embed_dim: bool = False,
        shrink: float = 1.0,
        head_dim_gate: str = "proj",
        fold_values: bool = False,
        gated_layers: Sequence[str] | None = None,
        score: str = "taylor",
        close: bool | None = None,
        close_params: float | None = None,
        close_rounds: int = 4,
        close_until: float = 0.5,
        close_start: float = 0.0,
        **kwargs: typing.Any,
    ) -> None:
        pruning_ratio = check_ratio("pruning_ratio", pruning_ratio)
        if reg < 0 or (gate_lr is not None and gate_lr < 0):
            raise ValueError(f"reg and gate_lr must be >= 0, got reg={reg}, gate_lr={gate_lr}")
        if sparse_steps is not None and (not isinstance(sparse_steps, int) or sparse_steps < 1):
            raise ValueError(f"sparse_steps must be a positive int, got {sparse_steps!r}")
        if threshold is not None and (threshold < 0 or not global_pruning):
            raise ValueError(f"threshold={threshold} needs threshold >= 0 and global_pruning=True (one threshold across layers)")
        if head_dim_gate not in HEAD_DIM_GATES:
            raise ValueError(f"head_dim_gate must be one of {HEAD_DIM_GATES}, got {head_dim_gate!r}")
        if shrink <= 0:
            raise ValueError(f"shrink must be > 0, got {shrink}")
        if score not in GATE_SCORES:
            raise ValueError(f"score must be one of {GATE_SCORES}, got {score!r}")
        if close_params is not None:
            check_ratio("close_params", close_params)
        if close is False and close_params is not None:
            raise ValueError("close=False contradicts close_params (a closing budget); drop one of them")
        explicit = bool(close) or close_params is not None  # asked for: refuse what cannot close
        problem = _closing_problem(sparse_steps, prune_embed_dim, float(kwargs.get("head_pruning_ratio", 0.0)), head_dim_gate)
        if explicit and problem:
            raise ValueError(f"gate closing: {problem}")
        closing = close is not False and (close_params is not None or pruning_ratio > 0) and not problem
        #: Why gate closing is off (``None`` when it is on): asked for ``close=False``, nothing to prune, or ``problem``.
        self.closing_off_reason = (
            None if closing else "close=False" if close is False else problem or "nothing to prune (pruning_ratio=0)"
        )
        plan = closing_schedule(sparse_steps, close_rounds, close_until, close_start) if closing else []  # validates
        if closing and close_params is not None and threshold is None:
            threshold = 0.0  # a parameter budget: remove the closed (zero) gates
        total_params = count_params(model)
        before = ModuleSnapshot(model) if closing else None  # closing checks the built pruner: undo on refusal
        if gated_layers is None:
            heads_ranked = prune_head_dims or float(kwargs.get("head_pruning_ratio", 0.0)) > 0  # heads need gates too
            gated_layers = default_gated_layers(prune_mlp, heads_ranked, prune_embed_dim, head_dim_gate)
        bad = set(gated_layers) - set(GATED_LAYERS)
        if bad or not gated_layers:
            raise ValueError(f"gated_layers must be a non-empty subset of {GATED_LAYERS}, got {list(gated_layers)}")
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
        if gate_lr is None:  # closing: the gates are probes and masks, held at 1 unless closed
            gate_lr = 0.0 if closing else shrink / (max(reg, 1e-12) * sparse_steps) if sparse_steps else 1e-2
        self.reg, self.gate_lr, self.threshold = float(reg), float(gate_lr), threshold
        self.sparse_steps, self.steps_done = sparse_steps, 0
        self.fold_values, self.score = fold_values, score
        self.grad_ema_decay = 0.9
        self._grad_ema = self._grad_ema_weight = 0.0
        ins, outs = _block_linears(model, gated_layers)
        self.gates = GateSet(ins, outs)  # after tracing: tp never sees the gates
        #: Running sums of ``|g * dL/dg|`` per gate entry (``score="taylor"``), and the steps summed.
        self._saliency: dict[nn.Parameter, torch.Tensor] = {}
        self._saliency_steps = 0
        #: Every gate value at the moment they were folded (``None`` before): for reports and histograms.
        self.trained_gates: torch.Tensor | None = None
        #: Whether gates close during sparse training (see ``close``), and with which budget.
        self.closing, self.close_params = closing, close_params
        #: Closing rounds still to come, ``[(step, share of the budget)]``; parameters closed so far.
        self._close_plan = plan if closing else []
        self.closed_params = 0
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
        for b in block_layers(self.model):
            if self._enabled_kinds["mlp"] and (b.fc1 is None or b.fc2 is None):
                return f"it needs a two-layer MLP in every block ({b.name} has none): use close=False"
        return None

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gate vectors (already in ``model.parameters()`` while attached)."""
        return self.gates.parameters()

    def regularize(self, model: nn.Module | None = None, loss: torch.Tensor | None = None) -> None:
        """The proximal L1 step on the gates (``step_hook``: after ``backward``, before the optimizer step).

        Gates move by ``-gate_lr * dL/dg / s`` (``s``: bias-corrected EMA of the mean
        ``|dL/dg|``), then are soft-thresholded by ``gate_lr * reg``; their gradients are
        cleared so the model's optimizer leaves them alone.
        """
        current = self.gates.mean_abs_grad()
        if current > 0:
            d = self.grad_ema_decay
            self._grad_ema = d * self._grad_ema + (1 - d) * current
            self._grad_ema_weight = d * self._grad_ema_weight + (1 - d)
        scale = self._grad_ema / self._grad_ema_weight if self._grad_ema_weight > 0 else 1.0
        if self.score == "taylor":
            self._accumulate_saliency()
        self.gates.proximal_step(self.gate_lr, self.reg, grad_scale=scale)
        self.steps_done += 1
        while self._close_plan and self.steps_done >= self._close_plan[0][0]:
            self._close(self._close_plan.pop(0)[1])

    @torch.no_grad()
    def _close(self, share: float) -> None:
        """Close the lowest-scoring dims that reach ``share`` of the closing budget.

        The budget is ``close_params`` of the model's parameters, or else the ``pruning_ratio``
        share of the ranked units counted as tp's global ranking counts them (one per MLP hidden
        dim, one per in-head index).
        """
        ins, _ = self.gate_scores()
        blocks = block_layers(self.model)
        mlp, dims = self._enabled_kinds["mlp"], self._enabled_kinds["attention"]
        neuron_scores = [ins[b.fc2] if mlp and b.fc2 in ins else None for b in blocks]
        dim_scores = [ins[b.proj].view(*head_layout(b.attn)).mean(0) if dims and b.proj in ins else None for b in blocks]
        costs = [unit_param_costs(b) for b in blocks]  # (cell, neuron)
        neuron_costs = [neuron for _, neuron in costs]
        dim_costs = [cell * head_layout(b.attn)[0] for b, (cell, _) in zip(blocks, costs)]
        if self.close_params is not None:
            chosen = select_closed(neuron_scores, dim_scores, neuron_costs, dim_costs, share * self._close_budget)
        else:
            units = sum(int(t.numel()) for t in (*neuron_scores, *dim_scores) if t is not None)
            budget = units - int(units * (1 - float(self.pruning_ratio)))
            chosen = select_closed(neuron_scores, dim_scores, [1] * len(blocks), [1] * len(blocks), share * budget)
        params = 0
        for i, (b, neurons, head_dims) in enumerate(zip(blocks, chosen.neurons, chosen.head_dims)):
            if neurons:
                self.gates.close(b.fc2, neurons)
            if head_dims:
                H, d = head_layout(b.attn)
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
            ImportError: matplotlib is not installed (``pip install tp-vit-plugins[plot]``).
        """
        try:
            import matplotlib
        except ImportError as e:
            raise ImportError("the gate histogram needs matplotlib: pip install 'tp-vit-plugins[plot]'") from e
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
            if isinstance(self.importance, GateImportance):
                self.importance.set_gates(*self.gate_scores())
            self.remove_gates(fold=self.fold_values)  # before tp changes any shape (folding W <- W * g is exact)

    def width_scores(self) -> torch.Tensor:
        """Every width score tp's global ranking compares, concatenated (1-D).

        MLP hidden dims and embedding dims one score each; head dims one score per in-head
        index, averaged over the heads (tp removes the same dims in every head). Disabled
        structures are left out.
        """
        proj_of = {a.qkv: a.proj for _, a in self._attentions}
        scores = []
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=self.root_module_types):
            kind = self.group_kind(group)
            if not self._enabled_kinds[kind]:
                continue
            if kind == "attention":
                qkv = self._is_atten_group(group)[1][0]
                dims = qkv.out_features // 3
                group = self.DG.get_pruning_group(proj_of[qkv], tp.prune_linear_in_channels, list(range(dims)))
                imp = self.importance(group)
                if imp is not None:
                    scores.append(imp.float().view(self.num_heads[qkv], -1).mean(0))
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

    def _prune(self) -> Generator[tp.Group, None, None]:
        self.fold_gates()
        if self.threshold is not None and self.current_step <= self.iterative_steps:
            ratio = self.ratio_for_threshold(self.threshold)
            self.pruning_ratio = ratio
            self.per_step_pruning_ratio = self.iterative_pruning_ratio_scheduler(ratio, self.iterative_steps)
            self._width_active = ratio > 0
        yield from super()._prune()
