"""The protocol shared by the data-driven head criteria (GOHSP graph, CP-ViT cumulative).

``imp.calibrate(model, loader, max_batches=None)`` fills ``imp.head_scores``
(``{key: [H]}``, keyed by each attention's first input projection: timm's ``attn.qkv``,
transformers' ``q_proj``); ``imp(group)`` then returns tp's 1-D per-channel score:

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

**Alignment.** Scores belong to the heads that existed at calibration. tp records every group it
prunes in its dependency graph's pruning history (``DG.pruning_history()``: root layer, in / out,
indices); before scoring, the importance replays the entries it has not seen yet — of every graph
it was called from, so a new pruner built on the pruned model is followed too — and keeps, per
attention, which calibrated channel every current channel is. Head scores therefore follow the
surviving heads through any number of steps and any tp pruner (``iterative_steps > 1``, stock
``BasePruner`` / ``MetaPruner`` / ``GroupNormPruner`` / ``GrowingRegPruner``, ``tpv.ViTPruner``,
interactive ``group.prune()``) without recalibration. A change tp did not record (layers edited by
hand) is detected on the next call and raises, instead of applying old per-head scores to
whatever heads are left; calibrate again then.

**Groups.** An attention group is recognised by its key projection's output dependency, whatever
its root: ``proj`` inputs (tp's ``step``), ``qkv`` (or ``q`` / ``k`` / ``v``) outputs (tp's
``regularize`` walks ungrouped roots), or another layer; each root channel is mapped to its head
through tp's ``root_idxs``. A group whose root channels do not map onto the attention's channels
gets the base criterion.
"""

from __future__ import annotations

import weakref
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
        #: Normalised scores of the current heads, ``{key: [H]}`` (mean 1 at calibration).
        self.head_scores: dict[nn.Module, torch.Tensor] = {}
        #: Raw scores of the current heads, ``{key: [H]}``.
        self.raw_head_scores: dict[nn.Module, torch.Tensor] = {}
        #: ``key.out_features`` the tracked channels of each attention account for (see module docs).
        self.layout: dict[nn.Module, int] = {}
        #: Row blocks of each key layer: 3 for a fused ``qkv`` (the default), 1 for a separate ``q``.
        self.parts: dict[nn.Module, int] = {}
        self._raw0: dict[nn.Module, torch.Tensor] = {}  # calibrated raw scores [H0]
        self._norm0: dict[nn.Module, torch.Tensor] = {}  # calibrated normalised scores [H0]
        self._dim0: dict[nn.Module, int] = {}  # calibrated head width d0
        self._channels: dict[nn.Module, torch.Tensor] = {}  # calibrated channel id of every current channel
        self._proj_of: dict[nn.Module, nn.Module] = {}  # attn.proj -> key
        self._alias_of: dict[nn.Module, nn.Module] = {}  # separate k / v projections -> key (q)
        self._graphs: tuple[tuple[weakref.ref, int], ...] = ()  # (tp graph, history entries replayed)

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
        host = host_for(model)
        attns = host.attention_modules(model)
        scores = self._compute_head_scores(model, loader, max_batches)
        projs = {host.head_key(a): host.in_projections(a) for _, a in attns}
        parts = {k: 3 if len(p) == 1 else 1 for k, p in projs.items()}
        self.set_head_scores({host.head_key(a): s for (_, a), s in zip(attns, scores, strict=True)}, parts)
        self._proj_of = {host.out_projection(a): host.head_key(a) for _, a in attns}
        self._alias_of = {p: k for k, ps in projs.items() for p in ps[1:]}
        return self

    def set_head_scores(self, scores: dict[nn.Module, torch.Tensor], parts: dict[nn.Module, int] | None = None) -> None:
        """Install raw per-head scores ``{key: [H]}`` (higher = keep) for the heads the key layer has now, and normalise them.

        Args:
            scores: Per attention, keyed by its fused ``qkv`` (or its separate ``q`` projection).
            parts: Row blocks of each key layer (3: fused ``qkv``, the default; 1: a separate ``q``).
        """
        raw = {k: torch.as_tensor(v, dtype=torch.float64).flatten().clone() for k, v in scores.items()}
        for v in raw.values():
            if not torch.isfinite(v).all() or (v < 0).any():
                raise ValueError("head scores must be finite and non-negative")
        self.parts = {k: int((parts or {}).get(k, 3)) for k in raw}
        for k, v in raw.items():
            width = int(getattr(k, "out_features", 0)) // self.parts[k]
            if width and width % len(v):
                raise ValueError(f"{len(v)} head scores cannot split an attention of {width} channels into heads")
        self._raw0 = raw
        if self.normalize_per_layer:
            self._norm0 = {k: (v / v.mean().clamp_min(1e-12)).float() for k, v in raw.items()}
        else:
            mean = torch.cat(list(raw.values())).mean().clamp_min(1e-12) if raw else 1.0
            self._norm0 = {k: (v / mean).float() for k, v in raw.items()}
        self._dim0 = {k: self._width(k) // len(v) for k, v in raw.items() if hasattr(k, "out_features")}
        self._channels = {k: torch.arange(self._width(k)) for k in self._dim0}
        self._graphs = ()
        self._refresh()

    def _refresh(self) -> None:
        """Current heads' scores and layouts from the tracked channels."""
        self.raw_head_scores, self.head_scores, self.layout = {}, {}, {}
        for k, v in self._raw0.items():
            chans = self._channels.get(k)
            if chans is None:  # not a Linear: scores used as given
                self.raw_head_scores[k], self.head_scores[k] = v, self._norm0[k]
                continue
            heads = torch.unique_consecutive(chans // self._dim0[k])
            self.raw_head_scores[k], self.head_scores[k] = v[heads], self._norm0[k][heads]
            self.layout[k] = self.parts.get(k, 3) * len(chans)

    def _width(self, key: nn.Module) -> int:
        """Attention channels of a key layer now (``H * d``)."""
        return int(key.out_features) // self.parts.get(key, 3)

    # -- following tp ----------------------------------------------------------------------
    def follow(self, graph: tp.DependencyGraph | None = None) -> HeadImportance:
        """Bring ``head_scores`` up to date with what tp pruned since the last call (``pruner.DG`` for a new graph).

        Scoring a group does this by itself; call it to read the scores of the current heads
        after a pruner's last step. Returns ``self``.
        """
        self._follow(graph)
        return self

    def _follow(self, graph: object) -> None:
        """Replay the pruning-history entries of every tp graph seen so far (``graph`` included) not yet replayed."""
        known = [(ref, seen) for ref, seen in self._graphs if ref() is not None]
        if graph is not None and not any(ref() is graph for ref, _ in known):
            widths_match = all(self.layout.get(k) == int(k.out_features) for k in self._channels)
            # a graph first met: its earlier entries are ours to replay only if our layout is behind the model
            known.append((weakref.ref(graph), 0 if not widths_match else len(graph.pruning_history())))
        updated = []
        changed = False
        for ref, seen in known:
            g = ref()
            history = g.pruning_history()
            for name, is_out, idxs in history[seen:]:
                changed |= self._replay(g, name, bool(is_out), idxs)
            updated.append((ref, len(history)))
        self._graphs = tuple(updated)
        if changed:
            self._refresh()

    def _replay(self, graph: object, name: str, is_out: bool, idxs: Sequence[int]) -> bool:
        try:
            module = graph.model.get_submodule(name) if name else graph.model
        except AttributeError:
            return False
        if module in self._alias_of and is_out:  # separate k / v outputs: the same channels as q's
            module = self._alias_of[module]
        if module in self._channels and is_out:  # qkv outputs: q, k and v rows of the same channels
            chans = self._channels[module]
            gone = {int(i) % len(chans) for i in idxs}
        elif module in self._proj_of and not is_out and self._proj_of[module] in self._channels:
            module = self._proj_of[module]
            chans = self._channels[module]
            gone = {int(i) for i in idxs}
        else:
            return False
        keep = torch.as_tensor([j for j in range(len(chans)) if j not in gone], dtype=torch.long)
        self._channels[module] = chans[keep]
        return True

    def _attention_of(self, group: tp.Group) -> nn.Module | None:
        for dep, _ in group:
            if dep.target.module in self._raw0 and dep.handler == tp.prune_linear_out_channels:
                return dep.target.module
        return None

    def _head_index(self, group: tp.Group) -> tuple[nn.Module, torch.Tensor] | None:
        """``(key layer, head of every root channel [n])`` of an attention group; ``None`` for other groups."""
        qkv = self._attention_of(group)
        if qkv is None:
            return None
        parts = self.parts.get(qkv, 3)
        for dep, _ in group:  # learn the output projection (a user's set_head_scores names the key only)
            m = dep.target.module
            if dep.handler == tp.prune_linear_in_channels and m is not qkv and isinstance(m, nn.Linear):
                if m.in_features == qkv.out_features // parts:
                    self._proj_of.setdefault(m, qkv)
        self._follow(getattr(group, "_DG", None))
        num_heads = len(self.head_scores[qkv])
        attn_dim = self._width(qkv)
        if attn_dim % num_heads or self.layout.get(qkv, qkv.out_features) != qkv.out_features:
            raise RuntimeError(
                f"{type(self).__name__}: an attention now has {attn_dim} channels but its {num_heads} head "
                f"scores account for {self.layout.get(qkv, parts * attn_dim) // parts}: it was changed since calibrate() "
                "in a way tp's pruning history does not record (e.g. layers edited by hand). Calibrate again"
            )
        head_dim = attn_dim // num_heads
        # each root channel's head, through the qkv dependency (tp's root_idxs map its rows to root channels)
        n_root = len(group[0][1])
        heads = torch.full((n_root,), -1, dtype=torch.long)
        for i, (dep, idxs) in enumerate(group):
            if dep.target.module is qkv and dep.handler == tp.prune_linear_out_channels:
                rows = torch.as_tensor([int(j) for j in idxs], dtype=torch.long)
                roots = torch.as_tensor([int(r) for r in group[i].root_idxs], dtype=torch.long)
                ok = roots < n_root
                heads[roots[ok]] = (rows[ok] % attn_dim) // head_dim
                break
        if bool((heads < 0).any()):
            return None  # root channels that are not attention channels: the base criterion
        return qkv, heads

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
