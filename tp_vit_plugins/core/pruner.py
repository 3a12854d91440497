"""``ViTPruner``: a ``tp.pruner.BasePruner`` that knows timm ViTs.

Differences from a bare ``BasePruner`` (public tp extension points, plus the private
``_prune`` / ``_is_atten_group`` seams listed and guarded in :mod:`.tp_seams`):

* fills :func:`~tp_vit_plugins.vit_pruning_kwargs` (head counts, classifier heads, prefix
  tokens, position embedding, LayerScale, per-head norms) itself;
* removes **exact** head counts, per layer (uniform) or globally (heterogeneous, at least
  ``min_heads`` per layer), and also when ``pruning_ratio == 0`` (tp 1.6.1 prunes no head
  then), by building head groups with ``DG.get_pruning_group``;
* lets you choose which structures the width ratio touches (MLP neurons, head dims,
  embedding dims) by returning no importance for the others;
* never leaves a head narrower than a floor (:func:`head_dim_floor`): where tp's head-dim
  ranking would, the cells go as whole heads instead (:meth:`ViTPruner._floored`);
* calls :func:`~tp_vit_plugins.sync_attention` after every step, and rolls the model back if
  a step fails.
"""

from __future__ import annotations

import typing
from collections.abc import Generator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..hosts import host_for
from .options import check_pruner_kwargs
from .search import round_half_up
from .snapshot import ModuleSnapshot
from .tp_seams import check_pruner_state, check_tp_seams

__all__ = ["ViTPruner", "check_ratio", "head_dim_floor", "MIN_HEAD_DIM"]

#: The narrowest head a pruner leaves by default (dims), unless the model's heads are narrower.
MIN_HEAD_DIM = 8


def head_dim_floor(head_dim: int, min_head_dim: int | None = None) -> int:
    """The fewest dims a head of original width ``head_dim`` keeps.

    Default: ``max(MIN_HEAD_DIM, ceil(head_dim / 4))``, at most ``head_dim``: a head narrower
    than that keeps the whole ``N x N`` attention cost (softmax, memory traffic) for few MACs,
    so it is slow for what it computes. ``min_head_dim`` replaces the rule (1 = no floor).

    Raises:
        ValueError: ``min_head_dim`` is not an int >= 1.
    """
    if min_head_dim is None:
        return min(head_dim, max(MIN_HEAD_DIM, -(-head_dim // 4)))
    if isinstance(min_head_dim, bool) or not isinstance(min_head_dim, int) or min_head_dim < 1:
        raise ValueError(f"min_head_dim must be an int >= 1 (1: no floor), got {min_head_dim!r}")
    return min(head_dim, min_head_dim)


_OWN_KWARGS = ("num_heads", "unwrapped_parameters", "customized_pruners", "head_pruning_ratio_dict")


def check_ratio(name: str, value: float) -> float:
    """Validate a pruning ratio in ``[0, 1)``.

    Raises:
        ValueError: ``value`` is not a real number in ``[0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class ViTPruner(tp.pruner.BasePruner):
    """Structured pruner for timm ViTs, a drop-in ``tp.pruner.BasePruner``.

    Example::

        imp = tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tpv.ViTPruner(model, torch.randn(1, 3, 224, 224), imp,
                               pruning_ratio=0.3, head_pruning_ratio=0.5)
        pruner.step()          # heads, MLP neurons removed; attention already synced

    Args:
        model: A timm ViT-family model (pruned in place).
        example_inputs: Input for tp's graph tracing, e.g. ``[1, C, H, W]``.
        importance: A ``tp.importance.Importance``; default group L2 magnitude.
        pruning_ratio: Share of width channels to remove, in ``[0, 1)``: MLP neurons (and
            head dims / embedding dims when enabled below).
        head_pruning_ratio: Share of attention heads to remove, in ``[0, 1)``. Per layer the
            count is ``round(ratio * H)`` (half up); globally ``round(ratio * sum H)``.
        global_pruning: Rank width channels across layers (tp's global pruning).
        global_head_pruning: Rank heads across layers (heterogeneous head counts); defaults
            to ``global_pruning``.
        prune_num_heads: Accepted for tp compatibility. ``None`` means "prune heads when
            ``head_pruning_ratio > 0``"; ``False`` with a positive head ratio is an error.
        prune_head_dims: Let the width ratio remove dims inside every head (in rotary models,
            EVA02: whole rotary pairs, the same share per block, see :meth:`_prune_rope_head_dims`).
        prune_mlp: Let the width ratio remove MLP hidden neurons.
        prune_embed_dim: Let the width ratio remove embedding (residual stream) dims.
        min_heads: Heads every layer keeps in global head pruning (at least 1).
        min_head_dim: The narrowest head left, in dims (:func:`head_dim_floor`: by default 8 or a
            quarter of the original width, whichever is larger; 1 = no floor). Where the width
            ranking would leave narrower heads, the block keeps that width and loses as many
            cells as whole heads (its lowest-scoring heads) instead.
        ignored_layers: Extra layers tp must not prune (classifier heads are added).
        **kwargs: Passed to ``tp.pruner.BasePruner`` (``iterative_steps``, ``round_to``,
            ``pruning_ratio_dict``, ``max_pruning_ratio``, ...).

    Raises:
        TypeError: The model has no timm attention, or a kwarg this class sets itself.
        ValueError: A ratio outside ``[0, 1)``, a head budget leaving a layer with fewer
            than ``min_heads`` heads, or ``prune_embed_dim=True`` on a model whose residual
            stream must keep its width (the host's :meth:`~tp_vit_plugins.hosts.Host.fixed_residual`).
            The model is untouched in every error case (EVA / BEiT / CaiT / Swin attention,
            converted at construction, is converted back).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence,
        importance: tp.importance.Importance | None = None,
        pruning_ratio: float = 0.0,
        head_pruning_ratio: float = 0.0,
        *,
        global_pruning: bool = False,
        global_head_pruning: bool | None = None,
        prune_num_heads: bool | None = None,
        prune_head_dims: bool = False,
        prune_mlp: bool = True,
        prune_embed_dim: bool = False,
        min_heads: int = 1,
        min_head_dim: int | None = None,
        ignored_layers: Sequence[nn.Module] | None = None,
        **kwargs: typing.Any,
    ) -> None:
        pruning_ratio = check_ratio("pruning_ratio", pruning_ratio)
        head_pruning_ratio = check_ratio("head_pruning_ratio", head_pruning_ratio)
        check_pruner_kwargs(type(self).__name__, kwargs, tp.pruner.BasePruner.__init__)
        for key in _OWN_KWARGS:
            if key in kwargs:
                raise TypeError(f"ViTPruner sets {key!r} itself; do not pass it")
        if prune_num_heads is False and head_pruning_ratio > 0:
            raise ValueError("prune_num_heads=False contradicts head_pruning_ratio > 0")
        if not isinstance(min_heads, int) or min_heads < 1:
            raise ValueError(f"min_heads must be an int >= 1, got {min_heads!r}")
        head_dim_floor(MIN_HEAD_DIM, min_head_dim)  # validates
        self.min_head_dim = min_head_dim
        check_tp_seams()
        before = ModuleSnapshot(model)  # EVA / BEiT attention is converted below: undone on any error here
        modes = {m: m.training for m in model.modules()}  # tp's tracing leaves the model in eval mode
        try:
            self._build(model, example_inputs, importance, pruning_ratio, head_pruning_ratio, global_pruning,
                        global_head_pruning, prune_head_dims, prune_mlp, prune_embed_dim, min_heads, ignored_layers,
                        kwargs)  # fmt: skip
        except Exception:
            before.restore()
            raise
        finally:
            for m in model.modules():
                m.training = modes.get(m, modes[model])

    def _build(
        self, model, example_inputs, importance, pruning_ratio, head_pruning_ratio, global_pruning,
        global_head_pruning, prune_head_dims, prune_mlp, prune_embed_dim, min_heads, ignored_layers, kwargs,
    ) -> None:  # fmt: skip
        self.host = host = host_for(model)
        vit_kw = host.pruning_kwargs(model)  # TypeError for non-ViT models
        reason = host.fixed_residual(model)
        if prune_embed_dim and reason is not None:
            raise ValueError(f"{reason}; use prune_embed_dim=False (heads, head dims and MLP dims still prune)")
        #: Rotary models: head dims go in rotary pairs, the same share per block (:meth:`_prune_rope_head_dims`).
        self._rope_pairs = bool(prune_head_dims and host.has_rope(model))
        self._attentions = host.attention_modules(model)
        self.global_head_pruning = global_pruning if global_head_pruning is None else bool(global_head_pruning)
        self.min_heads = min_heads
        self.target_head_pruning_ratio = head_pruning_ratio
        self._check_head_budget(head_pruning_ratio)
        self._enabled_kinds = {"attention": prune_head_dims and not self._rope_pairs, "mlp": prune_mlp, "embed": prune_embed_dim}
        self._embed_modules = set(host.embedding_modules(model))
        super().__init__(
            model,
            example_inputs,
            importance=importance if importance is not None else tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=global_pruning,
            pruning_ratio=pruning_ratio,
            ignored_layers=[*vit_kw["ignored_layers"], *(ignored_layers or [])],
            num_heads=vit_kw["num_heads"],
            prune_num_heads=False,  # heads are removed by _prune_heads, with exact counts
            prune_head_dims=prune_head_dims and not self._rope_pairs,
            head_pruning_ratio=0.0,
            unwrapped_parameters=vit_kw["unwrapped_parameters"],
            customized_pruners=vit_kw.get("customized_pruners", {}),
            **{k: v for k, v in vit_kw.items() if k == "output_transform"},  # transformers: trace ModelOutput.logits
            **kwargs,
        )
        check_pruner_state(self)
        #: The narrowest head each attention may keep (:func:`head_dim_floor` of its width now).
        self.head_dim_floors = {
            self._key(a): head_dim_floor(self.host.head_layout(a)[1], self.min_head_dim) for _, a in self._attentions
        }
        self._attention_of_proj = {self._out(a): a for _, a in self._attentions}
        self._rope_head_dim0 = {self._key(a): int(self.host.head_layout(a)[1]) for _, a in self._attentions}
        self._head_schedule = self.iterative_pruning_ratio_scheduler(head_pruning_ratio, self.iterative_steps)
        self._width_active = pruning_ratio > 0 or bool(kwargs.get("pruning_ratio_dict"))
        # tp skips a group its global ranking would empty (the layer keeps every channel, so a higher
        # ratio can keep more): such a group keeps its best channel instead (:meth:`_check_group`)
        self._tp_check = self.DG.check_pruning_group
        self.DG.check_pruning_group = self._check_group
        self._trimmed: tuple[tp.Group, tp.Group] | None = None  # (group tp checked, what replaces it)

    # ------------------------------------------------------------------ layout
    def _key(self, attn: nn.Module) -> nn.Module:
        """The layer keying ``attn`` in ``num_heads``, head scores and floors (the host's ``head_key``)."""
        return self.host.head_key(attn)

    def _out(self, attn: nn.Module) -> nn.Linear:
        """``attn``'s output projection: every attention group is rooted at its inputs."""
        return self.host.out_projection(attn)

    def _attn_dim(self, attn: nn.Module) -> int:
        """Channels of ``attn`` now (``H * d``): its output projection's inputs."""
        return int(self._out(attn).in_features)

    def _set_heads(self, attn: nn.Module, heads: int) -> None:
        """Record ``heads`` for every input projection of ``attn`` (tp reads each one's ``num_heads``)."""
        for m in self.host.in_projections(attn):
            if m in self.num_heads:
                self.num_heads[m] = heads
                self.out_channel_groups[m] = heads

    # ------------------------------------------------------------------ validation
    def _check_head_budget(self, ratio: float) -> None:
        heads = [self.host.head_layout(a)[0] for _, a in self._attentions]
        if self.global_head_pruning:
            removed = round_half_up(ratio * sum(heads))
            room = sum(h - self.min_heads for h in heads)
            if removed > room:
                raise ValueError(
                    f"head_pruning_ratio={ratio} removes {removed} of {sum(heads)} heads but only "
                    f"{room} can go while every layer keeps min_heads={self.min_heads}; lower the ratio"
                )
        else:
            for (name, _), h in zip(self._attentions, heads):
                if h - round_half_up(ratio * h) < 1:
                    raise ValueError(
                        f"head_pruning_ratio={ratio} would leave {name} with 0 of its {h} heads; "
                        "lower the ratio or use global_head_pruning=True"
                    )

    # ------------------------------------------------------------------ tp hooks
    def group_kind(self, group: tp.Group) -> str:
        """``"attention"`` (head dims), ``"embed"`` (residual stream) or ``"mlp"``."""
        if self._is_atten_group(group)[0]:
            return "attention"
        if any(dep.target.module in self._embed_modules for dep, _ in group):
            return "embed"
        return "mlp"

    def estimate_importance(self, group: tp.Group) -> torch.Tensor | None:
        """Tp's importance, or ``None`` (tp then skips the group) for disabled structures."""
        if not self._enabled_kinds[self.group_kind(group)]:
            return None
        return super().estimate_importance(group)

    def head_scores(self) -> dict[nn.Module, torch.Tensor]:
        """Current per-head scores ``{key: [H]}`` (key: :meth:`_key`): the importance averaged over each head's channels.

        Raises:
            RuntimeError: The importance returned no score or a wrongly sized one.
        """
        scores = {}
        for name, attn in self._attentions:
            heads, attn_dim = self.num_heads[self._key(attn)], self._attn_dim(attn)
            group = self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, list(range(attn_dim)))
            imp = self.importance(group)
            if imp is None or imp.numel() != attn_dim:
                raise RuntimeError(
                    f"{type(self.importance).__name__} returned "
                    f"{'no score' if imp is None else f'{imp.numel()} scores'} for the {attn_dim} "
                    f"channels of {name}; it cannot rank heads"
                )
            scores[self._key(attn)] = imp.detach().float().cpu().view(heads, -1).mean(1)
        return scores

    def _heads_to_remove(self, ratio: float) -> dict[nn.Module, list[int]]:
        scores = self.head_scores()
        qkvs = [self._key(a) for _, a in self._attentions]
        plan: dict[nn.Module, list[int]] = {q: [] for q in qkvs}
        if self.global_head_pruning:
            total0 = sum(self.init_num_heads[q] for q in qkvs)
            todo = round_half_up(ratio * total0) - (total0 - sum(self.num_heads[q] for q in qkvs))
            ranked = sorted((float(s), li, h) for li, q in enumerate(qkvs) for h, s in enumerate(scores[q].tolist()))
            left = {q: self.num_heads[q] for q in qkvs}
            for _, li, h in ranked:
                if todo <= 0:
                    break
                q = qkvs[li]
                if left[q] > self.min_heads:
                    plan[q].append(h)
                    left[q] -= 1
                    todo -= 1
        else:
            for q in qkvs:
                k = round_half_up(ratio * self.init_num_heads[q]) - (self.init_num_heads[q] - self.num_heads[q])
                if k > 0:
                    plan[q] = torch.argsort(scores[q], stable=True)[:k].tolist()
        return plan

    def _prune_heads(self) -> Generator[tp.Group, None, None]:
        ratio = self._head_schedule[min(self.current_step, self.iterative_steps)]
        if ratio <= 0:
            return
        plan = self._heads_to_remove(ratio)
        for _, attn in self._attentions:
            if plan[self._key(attn)]:
                yield from self.head_removal(attn, plan[self._key(attn)])

    def head_removal(self, attn: nn.Module, heads: Sequence[int]) -> Generator[tp.Group, None, None]:
        """Yield the tp group removing ``heads`` of ``attn``; once it is pruned, cut what tp cannot see.

        After the caller prunes the group (tp's ``step`` loop, or an interactive caller), the
        per-head parameters outside tp's graph lose the same heads: BEiT / Swin relative position
        table columns, CaiT talking-heads mixer rows and columns (the host's ``drop_heads``).
        """
        yield self.head_group(attn, heads)
        self.host.drop_heads(attn, heads)

    def head_group(self, attn: nn.Module, heads: Sequence[int]) -> tp.Group:
        """The tp group removing whole ``heads`` of ``attn``; head bookkeeping is updated.

        ``num_heads`` / ``out_channel_groups`` are decremented (as tp does for the groups it
        yields); tp's pruning history records which heads go (calibrated head importances follow it).
        """
        heads = sorted(int(h) for h in heads)
        key = self._key(attn)
        head_dim = self._attn_dim(attn) // self.num_heads[key]
        idxs = [h * head_dim + j for h in heads for j in range(head_dim)]
        group = self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, idxs)
        self._set_heads(attn, self.num_heads[key] - len(heads))
        return group

    def _prune(self) -> Generator[tp.Group, None, None]:
        if self.current_step > self.iterative_steps:
            yield from super()._prune()  # tp warns and yields nothing
            return
        yield from self._prune_heads()
        self.host.sync(self.model, self.num_heads)  # head norms need the new layout
        if self._width_active:
            for group in super()._prune():
                trimmed = self._trimmed[1] if self._trimmed is not None and self._trimmed[0] is group else group
                self._trimmed = None
                yield from self._floored(trimmed)
            if self._rope_pairs:
                yield from self._prune_rope_head_dims()
        self.host.sync(self.model, self.num_heads)
        follow = getattr(self.importance, "follow", None)
        if callable(follow):  # calibrated head scores: up to date with this step's prunes
            follow(self.DG)

    def _check_group(self, group: tp.Group) -> bool:
        """The check tp runs, passing a width group that would empty its layer; remembers its trimmed twin (:meth:`_keep_best`).

        tp yields the group right after checking it, so :meth:`_prune` takes the twin by identity.
        """
        if self._tp_check(group):
            return True
        trimmed = self._keep_best(group)
        self._trimmed = (group, trimmed) if trimmed is not None else None
        return trimmed is not None

    def _keep_best(self, group: tp.Group) -> tp.Group | None:
        """``group`` without its best root channel, where it would empty a width layer (``None``: not such a group).

        Attention groups are left to the head floor and ``min_heads``; the best channel is the
        group's highest importance.
        """
        dep, idxs = group[0]
        if dep.target.module in self._attention_of_proj or not self.DG.is_out_channel_pruning_fn(dep.handler):
            return None
        idxs = [int(i) for i in idxs]
        if len(set(idxs)) != self.DG.get_out_channels(dep.target.module) or len(idxs) < 2:
            return None
        imp = self.estimate_importance(group)
        best = idxs[int(torch.argmax(imp.detach().float().cpu()))] if imp is not None and len(imp) == len(idxs) else idxs[-1]
        trimmed = self.DG.get_pruning_group(dep.target.module, dep.handler, [i for i in idxs if i != best])
        return trimmed if self._tp_check(trimmed) else None

    def _floored(self, group: tp.Group) -> Generator[tp.Group, None, None]:
        """``group``, or, where it would leave heads narrower than their floor, whole heads and then fewer dims.

        tp removes the same in-head dims from every head of a block. When that leaves ``d'``
        dims below the floor ``f``, the block keeps ``f`` dims (the ``f - d'`` best of those tp
        chose, by the importance averaged over heads) and keeps ``round(H * d' / f)`` heads (at
        least ``min_heads``): about the cells tp asked for, as fewer heads of a fast width.
        """
        dep, idxs = group[0]
        attn = self._attention_of_proj.get(dep.target.module)
        if attn is None or dep.handler != tp.prune_linear_in_channels:
            yield group
            return
        H = int(self.num_heads[self._key(attn)])
        d = self._attn_dim(attn) // H
        idxs = [int(i) for i in idxs]
        dims = sorted({i % d for i in idxs})
        floor = self.head_dim_floors[self._key(attn)]
        if d - len(dims) >= floor or len(idxs) != H * len(dims) or len(dims) == d:
            yield group  # wide enough, or not tp's uniform head-dim removal
            return
        full = self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, list(range(H * d)))
        imp = self.estimate_importance(full)
        scores = imp.detach().float().cpu().view(H, d) if imp is not None else torch.zeros(H, d)
        keep_heads = min(H, max(self.min_heads, round(H * (d - len(dims)) / floor)))
        if keep_heads < H:
            yield from self.head_removal(attn, torch.argsort(scores.mean(1), stable=True)[: H - keep_heads].tolist())
        by_score = sorted(dims, key=lambda j: float(scores[:, j].mean()))
        gone = sorted(by_score[: d - floor])  # the lowest-scoring of tp's dims, down to the floor
        if gone:
            yield self.DG.get_pruning_group(
                self._out(attn), tp.prune_linear_in_channels, [h * d + j for h in range(keep_heads) for j in gone]
            )

    def _prune_rope_head_dims(self) -> Generator[tp.Group, None, None]:
        """Head dims of rotary models (EVA02): whole rotary pairs, the same share of every block's pairs.

        The rotary embedding is shared by all blocks and rotates dims in pairs, so a block's
        dims go two by two (the pair's two scores summed; each dim's score is the importance
        averaged over heads) and the attention records the original dims it keeps
        (``rope_dims``), whose rotary columns its forward selects. The share follows the
        width ratio of this step (``keep int(pairs * (1 - ratio))`` pairs, at least one) and is
        not ranked against the other structures in global pruning.
        """
        ratio = float(self.per_step_pruning_ratio[min(self.current_step, self.iterative_steps)])
        for _, attn in self._attentions:
            H, d = self.host.head_layout(attn)
            dims = list(attn.rope_dims) if getattr(attn, "rope_dims", None) is not None else list(range(d))
            pairs0 = self._rope_head_dim0[self._key(attn)] // 2
            remove = d // 2 - max(1, int(pairs0 * (1 - ratio)))
            if remove <= 0:
                continue
            group = self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, list(range(H * d)))
            imp = self.importance(group)
            if imp is None:
                continue
            per_dim = imp.detach().float().cpu().view(H, d).mean(0)
            pairs = self.host.rope_pairs(attn) or []
            scores = torch.stack([per_dim[a] + per_dim[b] for a, b in pairs])
            gone = {j for p in torch.argsort(scores, stable=True)[:remove].tolist() for j in pairs[p]}
            idxs = sorted(h * d + j for h in range(H) for j in gone)
            yield self.DG.get_pruning_group(self._out(attn), tp.prune_linear_in_channels, idxs)
            attn.rope_dims = [dims[j] for j in range(d) if j not in gone]  # ascending keeps the pair layout

    def step(self, interactive: bool = False) -> Generator | None:
        """One pruning step; attention modules are synced afterwards.

        With ``interactive=True`` a generator of groups is returned; prune each one and
        exhaust the generator (the final sync runs when it ends). Otherwise the model is
        restored to its state before the step if anything fails.
        """
        if interactive:
            return super().step(interactive=True)
        snapshot = ModuleSnapshot(self.model)
        books = (dict(self.num_heads), dict(self.out_channel_groups), self.current_step)
        history = len(self.DG.pruning_history())
        imp_state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self.importance).items()}
        try:
            super().step()
        except Exception:
            snapshot.restore()
            vars(self.importance).update(imp_state)
            self.num_heads.clear()
            self.num_heads.update(books[0])
            self.out_channel_groups.clear()
            self.out_channel_groups.update(books[1])
            self.current_step = books[2]
            del self.DG.pruning_history()[history:]  # the restored model never had those prunes
            raise
        return None

    def heads_per_layer(self) -> list[int]:
        """Current head count of every block, in order."""
        return [int(self.num_heads[self._key(a)]) for _, a in self._attentions]
