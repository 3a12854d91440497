"""Apply / remove the CP-ViT cascade on a timm or transformers ViT (host details come from the adapters).

``apply_cascade`` replaces every block's ``attn.forward`` with an instance attribute (the
class and its weights are untouched):

* blocks whose scores are needed compute attention eagerly (on CPU in cache-sized batch
  chunks that only keep each image's token statistic, :data:`CHUNK_BYTES`), feed the
  cumulative token / head statistics (:mod:`tp_vit_plugins.cpvit.maths`), and, where head skipping is on,
  compute ``attn @ v`` and the output projection only for each input's kept heads;
* other blocks call the module's own forward (fused SDPA stays fused);
* at each pruning point the lowest-scoring patch tokens are gathered out (``mode="drop"``:
  later layers really run on fewer tokens; ``fold="merge"``: merged into kept ones) or
  recorded as masked keys (``mode="mask"``: shapes unchanged, for analysis). By default
  (``prune_at="mlp"``) this happens inside the pruning block, between its attention and its
  MLP: the block's ``forward`` is replaced by its two residual halves (:func:`block_halves`,
  a table of timm's block types, each locked to the block's own forward by the tests) with
  the pruning in between; ``prune_at="block"`` prunes in a forward hook after the whole block
  (any block type). With dropped tokens both give the same outputs (the MLP works per
  token); pruning before the MLP saves the MLP of the tokens that go.
* with merged tokens, an average-pool head weighs every token by the patches it stands for
  (``model.forward_head`` replaced; ``weighted_pool``).

**Per-image determinism.** An image's output never depends on the other images in its batch:
token scores, top-k and head skipping are per image, the ``"random"`` baseline scores a fixed
random value per grid position, and the token counts are one fixed schedule. The paper's
layer-aware attention-range adjustment (``beta > 0``) measures how local attention is; at run
time that would be an average over the batch, so here it is **calibrated** once on calibration
data (:meth:`Cascade.calibrate`, or ``apply_cascade(..., calib=loader)``) into fixed per-block
counts (this library's reading: the abstract calls the adjustment dynamic without saying over
what it averages; one that followed each batch would make an image's output depend on its batch).

``remove_cascade`` deletes the instance attributes and hooks: the model behaves exactly as
before. Works on tp-pruned models (any ``num_heads`` / ``head_dim``).

**Families.** Every family with one global token sequence: ViT / DeiT / DeiT3 / SigLIP-style
(the attention pool reads the tokens that are left), BEiT and EVA02 (their relative position
bias and rotary embedding are gathered at each kept token's grid position, so dropping a
token equals masking it as a key), CaiT (talking heads: the proportional-attention bias and
the key mask apply after the ``proj_l`` mixing, masked keys get no weight from ``proj_w``,
no head skipping; the class-attention blocks read the tokens that are left). Swin is
refused (windows over a 2-D grid: no global sequence). Merged tokens (``fold="merge"``)
keep the grid position of the kept token they merge into.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..core.calibration import iter_batches
from ..hosts import BlockHalves, Host, UnsupportedModelError, host_for
from .config import CascadeConfig, with_options
from .maths import (
    _merge,
    attention_range,
    cumulative_head_scores,
    gather_tokens,
    head_scores,
    heads_kept,
    keep_schedule,
    range_adjusted_counts,
    split_ranked,
    token_scores,
    topk_sorted,
)

__all__ = ["Cascade", "CascadeState", "apply_cascade", "remove_cascade", "find_cascade", "restore_cascade"]


def select_heads(probs: torch.Tensor, num_prefix: int, k: int) -> torch.Tensor:
    """CP-ViT's per-input head choice: the ``k`` heads of highest score (:func:`~.maths.head_scores`), ascending ``[B, k]``."""
    return topk_sorted(head_scores(probs, num_prefix), k)


@dataclass
class CascadeState:
    """What one forward pass carries from block to block; :attr:`Cascade.last` is the latest one.

    Attributes:
        counts: Patch tokens entering each block, one entry per block (``len == depth``; the
            same for every image of the batch).
        heads_kept: Heads each head-skipping block ran (one entry per such block, in order).
        localities: Attention range measured at each pruning point (calibration only).
        scores: ``[B, P_cur]`` cumulative token scores of the tokens still alive.
        positions: ``[B, P_cur]`` original grid index of each patch token still alive.
        key_mask: ``[B, P]`` True = masked (``mode="mask"``).
        sizes: ``[B, P_cur]`` patches each token stands for (``fold="merge"``).
        bias: ``[B, 1, 1, N]`` ``log(size)`` attention logit bias, made once per merge.
    """

    scores: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    counts: list[int] = field(default_factory=list)
    localities: list[float] = field(default_factory=list)
    heads_kept: list[int] = field(default_factory=list)
    sizes: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class _AfterBlock:
    """Forward hook of block ``index`` calling its cascade (an object, so ``copy.deepcopy`` of the model copies it too)."""

    def __init__(self, cascade: Cascade, index: int) -> None:
        self.cascade, self.index = cascade, index

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        return self.cascade._prune(self.index, out)


class _CascadeBlock:
    """Replacement ``block.forward`` of a pruning block (``prune_at="mlp"``): attention, prune, MLP."""

    def __init__(self, cascade: Cascade, index: int, block: nn.Module, halves: BlockHalves) -> None:
        self.cascade, self.index, self.block, self.halves = cascade, index, block, halves

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.halves.attn(self.block, x, *args, **kwargs)
        pruned = self.cascade._prune(self.index, h)
        return self.halves.mlp(self.block, h if pruned is None else pruned)


class _CascadeAttention:
    """Replacement ``attn.forward`` bound to one block."""

    def __init__(self, cascade: Cascade, index: int, attn: nn.Module) -> None:
        self.cascade, self.index, self.attn = cascade, index, attn

    def __call__(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: torch.Tensor | None = None,
        shared_rel_pos_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c, a = self.cascade, self.attn
        if attn_mask is not None or is_causal or shared_rel_pos_bias is not None:
            raise ValueError(
                "the CP-ViT cascade does not support attn_mask / is_causal / a shared position bias (dropping tokens "
                "changes the sequence length they were built for); call cascade.remove() first"
            )
        bias = c.state.bias  # proportional attention: a merged token counts as many patches
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        st = c.state
        dropped = x.shape[1] < c.num_prefix + c.num_patches
        positions = st.positions if dropped else None  # grid order while nothing was dropped
        plain = self.index not in c.score_blocks and self.index not in c.head_blocks and st.key_mask is None
        if plain and bias is None and positions is None:
            forward = c.host.attention_forward(a)
            return forward(a, x) if rope is None else forward(a, x, rope=rope)
        kept = None
        if self.index in c.head_blocks:
            kept = heads_kept(c.host.head_layout(a)[0], c.head_keep_ratio)
            st.heads_kept.append(kept)
        observe, reduce = None, None
        if self.index in c.score_blocks and c._calibrating is None:  # the token statistic alone
            observe, reduce = partial(c._accumulate, self.index), c._statistic
        elif self.index in c.score_blocks:  # calibration also measures the attention range
            observe = partial(c._observe, self.index)
        return c.host.cascade_attention(a, x, c.num_prefix, st.key_mask, kept, observe, logit_bias=bias, positions=positions,
                                 rope=rope, reduce_probs=reduce, select_heads=c._select_heads)  # fmt: skip


class _SizeWeightedHead:
    """Replacement ``model.forward_head`` of an average-pool model with merged tokens.

    Scales every pooled token by ``n * size / sum(sizes)`` before the model's own head averages
    the ``n`` tokens, so the pool is the size-weighted mean: each original patch counts once,
    as it does in the dense model (with proportional attention, this library's extension of
    the merge fold). ``forward_features`` is untouched.
    """

    def __init__(self, cascade: Cascade, include_prefix: bool) -> None:
        self.cascade, self.include_prefix = cascade, include_prefix

    def __call__(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        c = self.cascade
        sizes = c.state.sizes  # [B, P_cur] or None (nothing merged in this forward)
        if sizes is not None and x.shape[1] == c.num_prefix + sizes.shape[1]:
            p = c.num_prefix
            if self.include_prefix:
                sizes = torch.cat([sizes.new_ones(sizes.shape[0], p), sizes], dim=1)
            w = (sizes * (sizes.shape[1] / sizes.sum(1, keepdim=True))).to(x.dtype)[..., None]
            x = x * w if self.include_prefix else torch.cat([x[:, :p], x[:, p:] * w], dim=1)
        return type(c.model).forward_head(c.model, x, pre_logits)


class Cascade:
    """A CP-ViT cascade attached to one model (see :func:`apply_cascade`)."""

    def __init__(self, model: nn.Module, config: CascadeConfig) -> None:
        self.model = model
        self.config = config
        c = config
        self.fold, self.prune_at, self.weighted_pool, self.score = c.fold, c.prune_at, c.weighted_pool, c.score
        self._generator = torch.Generator().manual_seed(c.seed)
        self.host: Host = host_for(model)
        self.blocks = self.host.token_blocks(model)
        self.depth = len(self.blocks)
        #: Position-indexed attention terms (BEiT's relative bias, EVA's rope) follow the kept tokens.
        self.positional = self.host.positional_attention(model)
        #: The first token is a class token (the ``"cls"`` score reads its attention row).
        self.class_token = self.host.has_class_token(model)
        self.num_prefix = self.host.prefix_tokens(model)
        rows, self.grid_width = self.host.patch_grid(model)
        self.num_patches = rows * self.grid_width
        keep_ratio, head_keep_ratio, beta = c.keep_ratio, c.head_keep_ratio, c.beta
        start_block, head_start_block = c.start_blocks(self.depth)
        mode, prune_at, trim_last, score_at, score = c.mode, c.prune_at, c.trim_last, c.score_at, c.score
        self.keep_ratio, self.head_keep_ratio = keep_ratio, head_keep_ratio
        self.start_block, self.head_start_block = start_block, head_start_block
        self.mode, self.beta, self.radius = mode, beta, c.radius
        self.schedule = keep_schedule(self.num_patches, self.depth, keep_ratio, start_block, steps=c.schedule_steps,
                                      mean=c.keep_mean)  # fmt: skip
        self.head_score = c.head_score
        self.final_count = self.schedule[-1]
        prune_points = [i for i in range(self.depth - 1) if self.schedule[i + 1] < self.schedule[i]]
        self.last_point = prune_points[-1] if prune_points else -1
        #: The last block's MLP runs on the prefix tokens alone (see ``apply_cascade(trim_last=)``); only a
        #: cascade that prunes trims, so ``keep_ratio=1.0`` stays bit-identical to the model.
        pruning = prune_at == "mlp" and mode == "drop" and bool(prune_points)
        self.trim_last = trim_last and pruning and self.host.reads_prefix_only(model)
        #: Blocks whose attention feeds the token score (they run eager attention). The ``"random"``
        #: baseline reads no attention (only a calibration of ``beta`` does).
        scoring = set(prune_points) if score_at == "prune" else set(range(self.last_point + 1))
        self.score_blocks = scoring if score != "random" or beta > 0 else set()
        self.head_blocks = set(range(head_start_block, self.depth)) if head_keep_ratio < 1.0 else set()
        self.state = CascadeState()
        self._handles: list = []
        #: Fixed patch-token count entering every block (``beta`` calibrated in; see :meth:`calibrate`).
        self.counts = list(self.schedule) if beta == 0 else None
        #: Calibrated attention range of every pruning point (``{block: share of local attention}``; empty without ``beta``).
        self.localities: dict[int, float] = {}
        self._calibrating: dict[int, list[tuple[float, int]]] | None = None
        self._random_table = torch.rand(self.num_patches, generator=self._generator)

    @property
    def last(self) -> CascadeState:
        """What the latest forward did: ``counts`` (patch tokens entering each of the ``depth`` blocks), ``heads_kept``, ..."""
        st = self.state
        if st.counts and len(st.counts) < self.depth:  # blocks after the last pruning point keep the last count
            return dataclasses.replace(st, counts=st.counts + [st.counts[-1]] * (self.depth - len(st.counts)))
        return st

    def record(self) -> dict:
        """The cascade as JSON data: its options, fixed counts and calibrated attention ranges.

        :func:`~tp_vit_plugins.save_pruned` stores it; :func:`restore_cascade` (and
        :func:`~tp_vit_plugins.load_pruned`) apply it again without calibration data.

        Raises:
            ValueError: A custom token scorer (a function is not data) or an uncalibrated ``beta > 0``.
        """
        if callable(self.config.score):
            raise ValueError(
                "a cascade with a custom token scorer cannot be saved (a function is not data): "
                "cascade.remove() first, save, and apply the cascade again after loading"
            )
        if self.counts is None:
            raise ValueError("this cascade has beta > 0 and is not calibrated: call cascade.calibrate(loader) first")
        return {
            "config": dataclasses.asdict(self.config),
            "counts": [int(c) for c in self.counts],
            "localities": {str(k): float(v) for k, v in self.localities.items()},
        }

    # -------------------------------------------------------------- lifecycle
    def _attach(self) -> None:
        for i, blk in enumerate(self.blocks):
            attn = self.host.block_attention(blk)
            attn.forward = self.host.wrap_attention_call(attn, _CascadeAttention(self, i, attn))
            if i > self.last_point and not (self.trim_last and i == self.depth - 1):  # later blocks never prune
                continue
            if self.prune_at == "mlp":
                blk.forward = _CascadeBlock(self, i, blk, self.host.block_halves(blk))
            else:
                self._handles.append(blk.register_forward_hook(_AfterBlock(self, i)))
        self._handles.append(self.blocks[0].register_forward_pre_hook(self._reset))
        own_head = "forward_head" in vars(self.model)  # someone's own replacement: left alone
        merged = self.fold == "merge" and self.mode == "drop"
        if self.weighted_pool and merged and self.host.averages_patch_tokens(self.model) and not own_head:
            include = bool(getattr(self.model, "pool_include_prefix", False))
            self.model.forward_head = _SizeWeightedHead(self, include)

    def detach(self) -> None:
        """Remove every hook and patched forward; the model is exactly as before.

        Hooks are found in the blocks' own hook dicts (not through the handles), so a
        ``copy.deepcopy`` of a cascaded model detaches its own copies.
        """
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for blk in self.blocks:
            for hooks in (blk._forward_hooks, blk._forward_pre_hooks):
                mine = [
                    k for k, hook in hooks.items() if isinstance(hook, _AfterBlock) or getattr(hook, "__self__", None) is self
                ]
                for key in mine:
                    del hooks[key]
        for blk in self.blocks:
            attn = self.host.block_attention(blk)
            if _cascade_of(self.host, attn) is self:
                del attn.forward
            if isinstance(blk.__dict__.get("forward"), _CascadeBlock):
                del blk.forward
        if isinstance(self.model.__dict__.get("forward_head"), _SizeWeightedHead):
            del self.model.forward_head

    def remove(self) -> None:
        """Take the cascade off its model (the same as :meth:`detach`)."""
        self.detach()

    @torch.no_grad()
    def calibrate(self, loader: Iterable, max_batches: int | None = 8) -> list[int]:
        """Fix the attention-range adjustment into per-block token counts from calibration data.

        Every batch runs on the plain schedule; each pruning point's attention range is averaged
        over all images, and :func:`~.maths.range_adjusted_counts` turns the averages into
        :attr:`counts` (a point more local than the others prunes less, a more global one more),
        used for every later input. Without ``beta`` there is nothing to calibrate (the counts
        are the schedule).

        Args:
            loader: Yields image tensors or ``(images, target)`` tuples.
            max_batches: Use at most this many batches (``None``: all).

        Returns:
            The fixed counts ``[n_0, ..., n_{L-1}]``.

        Raises:
            ValueError: The loader yields no batch.
        """
        if self.beta == 0:
            return list(self.counts)
        was_training = self.model.training
        self.model.eval()
        self._calibrating = {}
        try:
            seen = 0
            for x in iter_batches(loader, max_batches, progress=False):
                self.model(x)
                seen += 1
            if not seen:
                raise ValueError("calibration loader yielded no batches")
            records = self._calibrating
        finally:
            self._calibrating = None
            self.model.train(was_training)
        locs = {i: sum(v * b for v, b in pairs) / max(1, sum(b for _, b in pairs)) for i, pairs in records.items() if pairs}
        self.localities = locs
        self.counts = range_adjusted_counts(self.schedule, locs, self.beta)
        return list(self.counts)

    # -------------------------------------------------------------- per forward
    def _reset(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self.counts is None and self._calibrating is None:
            raise RuntimeError(
                "this cascade has beta > 0 and is not calibrated: call cascade.calibrate(loader) (or "
                "apply_cascade(..., calib=loader)) so the attention-range adjustment becomes a fixed schedule"
            )
        B = x.shape[0]
        if x.shape[1] != self.num_prefix + self.num_patches:
            raise ValueError(f"expected {self.num_prefix + self.num_patches} tokens, got {x.shape[1]}")
        pos = None
        if self.score == "random" or self._calibrating is not None or self.positional:  # these read grid positions
            pos = torch.arange(self.num_patches, device=x.device).expand(B, -1)
        self.state = CascadeState(positions=pos, counts=[self.num_patches])

    def _statistic(self, probs: torch.Tensor) -> torch.Tensor | None:
        """The token statistic ``[b, P]`` from probabilities ``[b, H, N, N]`` (per image)."""
        if callable(self.score):  # a custom scorer (CascadeConfig.score), summed like the cumulative score
            out = self.score(probs, self.num_prefix)
            want = (probs.shape[0], probs.shape[-1] - self.num_prefix)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the token scorer must return a [B, patch tokens] = {list(want)} tensor, got {got}")
            return out
        if self.score == "cumulative":
            return token_scores(probs, self.num_prefix)
        if self.score == "cls":  # EViT-style: the class token's attention in this block
            rows = probs[:, :, 0] if self.class_token else probs.mean(2)
            return rows[..., self.num_prefix :].mean(1)
        return None  # "random": scores come from the fixed table at the pruning point

    def _select_heads(self, probs: torch.Tensor, num_prefix: int, k: int) -> torch.Tensor:
        """The ``k`` heads each input keeps, ascending ``[B, k]``: by its block's attention or its cumulative score."""
        if self.head_score == "cumulative":
            return topk_sorted(cumulative_head_scores(probs, self.state.scores, num_prefix), k)
        return select_heads(probs, num_prefix, k)

    def _accumulate(self, index: int, s: torch.Tensor | None) -> None:
        """Fold block ``index``'s statistic ``[B, P]`` into the running token scores."""
        st = self.state
        if s is not None:
            st.scores = s if self.score == "cls" or st.scores is None else st.scores + s
        if self.mode == "mask" and st.key_mask is not None and st.scores is not None:
            st.scores = st.scores.masked_fill(st.key_mask, 0.0)

    def _observe(self, index: int, probs: torch.Tensor) -> None:
        """Full-probability observer (calibration: the token statistic and the attention range)."""
        self._accumulate(index, self._statistic(probs))
        if self._calibrating is not None:
            st = self.state
            st.localities.append(attention_range(probs, st.positions, self.grid_width, self.num_prefix, self.radius))

    def _prune(self, index: int, out: torch.Tensor) -> torch.Tensor | None:
        """Drop, merge or mask tokens at block ``index``'s pruning point (``None``: ``out`` unchanged).

        Called with the block's output (``prune_at="block"``) or with the stream after its
        attention, before its MLP (``prune_at="mlp"``).
        """
        st = self.state
        if index == self.depth - 1 and self.trim_last:  # the head reads the prefix tokens alone
            return out[:, : self.num_prefix]
        if index > self.last_point or index + 1 >= self.depth:
            return None
        current = st.counts[-1]
        if self._calibrating is not None:  # calibration: the plain schedule, each point's attention range recorded
            loc = st.localities[-1] if st.localities else 0.0
            self._calibrating.setdefault(index, []).append((loc, out.shape[0]))
            n = self.schedule[index + 1]
        else:
            n = self.counts[index + 1]
        if n >= current:
            st.counts.append(current)
            return None
        st.counts.append(n)
        if self.score == "random":  # a fixed random value per grid position: per image, whatever the batch
            st.scores = self._random_table.to(out.device)[st.positions]
        if self.mode == "drop":
            dropped = None
            if self.fold == "merge":  # one ranking gives both sides
                keep, dropped = split_ranked(st.scores, n)
            else:
                keep = topk_sorted(st.scores, n)
            st.scores = st.scores.gather(1, keep)
            if st.positions is not None:
                st.positions = st.positions.gather(1, keep)
            if self.fold == "merge":
                out, merged_sizes = _merge(out, st.sizes, keep, self.num_prefix, dropped)
                st.sizes = merged_sizes[:, self.num_prefix :]
                st.bias = merged_sizes.log()[:, None, None, :]
                return out
            return gather_tokens(out, keep, self.num_prefix)
        alive = ~st.key_mask if st.key_mask is not None else torch.ones_like(st.scores, dtype=torch.bool)
        masked_scores = st.scores.masked_fill(~alive, float("-inf"))
        keep = topk_sorted(masked_scores, n)
        st.key_mask = torch.ones_like(alive).scatter_(1, keep, False)
        return None


def _cascade_of(host: Host, attn: nn.Module | None) -> Cascade | None:
    """The cascade whose forward replaced ``attn``'s (directly, or wrapped in the host's call convention)."""
    fwd = vars(attn).get("forward") if isinstance(attn, nn.Module) else None
    fwd = host.unwrap_attention_call(fwd) if fwd is not None else None
    return fwd.cascade if isinstance(fwd, _CascadeAttention) else None


def find_cascade(model: nn.Module) -> Cascade | None:
    """The cascade currently applied to ``model``, if any (``None`` also for a model no host supports)."""
    try:
        host = host_for(model)
        blocks = host.token_blocks(model)
    except TypeError:
        return None
    for blk in blocks:
        cascade = _cascade_of(host, host.block_attention(blk))
        if cascade is not None:
            return cascade
    return None


def apply_cascade(
    model: nn.Module,
    config: CascadeConfig | str | None = None,
    *,
    calib: Iterable | None = None,
    calib_batches: int | None = 8,
    counts: Sequence[int] | None = None,
    **options: Any,
) -> Cascade:
    """Attach a CP-ViT cascade to a timm ViT (inference-time, per input).

    Example::

        cascade = tpv.apply_cascade(model, keep_ratio=0.6)          # the defaults, 60 % of tokens kept
        cfg = tpv.cpvit.CascadeConfig(keep_ratio=0.6, head_keep_ratio=0.75)
        cascade = tpv.apply_cascade(model, cfg)                      # the same options as an object
        logits = model(images)
        cascade.remove()                                             # the model is exactly as before

    The defaults (:class:`~tp_vit_plugins.cpvit.CascadeConfig`) were chosen on the zoo of
    models (``benchmarks/RESULTS.md``); the paper's own pipeline (a ramp from ``depth // 4``,
    dropped tokens after whole blocks, head skipping, the attention-range adjustment) is the
    ``"paper"`` preset: ``apply_cascade(model, "paper", calib=loader)``.

    Args:
        model: timm ``VisionTransformer`` family model (DeiT, distilled, register tokens,
            LayerScale, EVA02, BEiT, CaiT, tp-pruned ones included), or a transformers ViT /
            DeiT / DINOv2 model (its attention is converted exactly first; DINOv2's classifier
            averages the tokens that are left, unweighted).
        config: The options; default ``CascadeConfig()``; a string names a preset
            (:meth:`~tp_vit_plugins.cpvit.CascadeConfig.preset`: ``"paper"`` or ``"recommended"``).
        calib: Calibration batches, required when ``beta > 0`` (the attention-range
            adjustment is calibrated once into fixed per-block counts).
        calib_batches: Use at most this many of them.
        counts: Fixed patch-token counts per block from an earlier calibration of the same
            model and options (``cascade.counts``), used instead of calibrating: ``calib`` is
            then not needed.
        **options: :class:`~tp_vit_plugins.cpvit.CascadeConfig` fields overriding ``config``
            (e.g. ``keep_ratio=0.6``).

    Returns:
        The :class:`Cascade` (``cascade.last`` holds the counts of the latest forward;
        ``cascade.remove()`` takes it off).

    Raises:
        TypeError: Not a supported timm ViT, an unknown option, or a cascade is already applied.
        ValueError: Invalid option values, block indices or ``counts``, or ``beta > 0`` without
            ``calib`` or ``counts``.
    """
    cfg = with_options(config, options)
    host = host_for(model)
    blocks = host.token_blocks(model)
    if find_cascade(model) is not None:
        raise TypeError("a cascade is already applied; call cascade.remove() (or remove_cascade(model)) first")
    if any("forward" in vars(b) for b in blocks):
        raise TypeError("a token reduction already replaced a block's forward (e.g. a token-merging peer); remove it first")
    odd = sorted({type(b).__name__ for b in blocks if host.block_halves(b) is None})
    if cfg.prune_at == "mlp" and odd:
        raise UnsupportedModelError(
            f"prune_at='mlp' needs the block's forward split at its MLP, which is not known for {', '.join(odd)}; "
            "use prune_at='block' (tokens leave after the whole block). Nothing was changed."
        )
    depth = len(blocks)
    start_block, head_start_block = cfg.start_blocks(depth)
    if not 0 <= head_start_block < depth:
        raise ValueError(f"head_start_block must lie in [0, {depth - 1}], got {head_start_block}")
    if cfg.beta > 0 and calib is None and counts is None:
        raise ValueError(
            f"beta={cfg.beta} adjusts the schedule by attention range, which is calibrated once so every image gets "
            "the same counts whatever its batch: pass calib=<calibration loader>, counts from an earlier calibration, "
            "or beta=0"
        )
    keep_schedule(1, depth, cfg.keep_ratio, start_block, steps=cfg.schedule_steps, mean=cfg.keep_mean)  # validates the schedule
    talking = [host.head_layout(a)[0] for b in blocks if host.head_mixers(a := host.block_attention(b))]
    if any(heads_kept(h, cfg.head_keep_ratio) < h for h in talking):
        raise ValueError(
            f"head_keep_ratio={cfg.head_keep_ratio} skips heads, which talking-heads attention (CaiT) mixes; use 1.0"
        )
    cascade = Cascade(model, cfg)
    if counts is not None:
        fixed = [int(c) for c in counts]
        n = cascade.num_patches
        if len(fixed) != depth or fixed[0] != n or any(not 1 <= b <= a for a, b in zip(fixed, fixed[1:])):
            raise ValueError(
                f"counts must be {depth} non-increasing patch-token counts starting at {n} (this model's patches), "
                f"got {list(counts)}; were they calibrated on another model?"
            )
        cascade.counts = fixed
    cascade._attach()
    if cfg.beta > 0 and counts is None:
        try:
            cascade.calibrate(calib, calib_batches)
        except Exception:
            cascade.detach()
            raise
    return cascade


def remove_cascade(model: nn.Module) -> None:
    """Remove the cascade from ``model`` (no-op if none is applied)."""
    cascade = find_cascade(model)
    if cascade is not None:
        cascade.detach()


def restore_cascade(model: nn.Module, record: dict) -> Cascade:
    """Apply a cascade from :meth:`Cascade.record` (what :func:`~tp_vit_plugins.save_pruned` stores).

    Args:
        model: The model the record was made on (or one loaded from its save).
        record: ``{"config": CascadeConfig fields, "counts": [...], "localities": {...}}``.

    Returns:
        The applied :class:`Cascade`, with the recorded counts (no calibration).

    Raises:
        ValueError: The record is malformed or does not fit ``model``.
    """
    try:
        cfg = CascadeConfig(**record["config"])
        counts = record["counts"]
        localities = {int(k): float(v) for k, v in (record.get("localities") or {}).items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a cascade record ({e}); it is written by Cascade.record()") from e
    cascade = apply_cascade(model, cfg, counts=counts)
    cascade.localities = localities
    return cascade
