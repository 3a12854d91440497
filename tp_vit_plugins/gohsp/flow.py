"""Calibration of GOHSP's directed head graph: how strongly each reader reads each output.

Every head, every MLP and the patch embedding *write* a term into the residual stream; every
head and MLP of a later block, and the classifier, *read* the stream through their norm and
their input weights. On calibration data, for a sample of tokens, the usage of contributor
``u`` by reader ``r`` is

    usage(u -> r) = mean over tokens of || W_r ( gamma_r * (o_u - mean(o_u)) / sigma_r ) ||_2

where ``o_u`` is ``u``'s term in the stream (a head's slice of the output projection, times
LayerScale), ``gamma_r`` / ``sigma_r`` are the reader's norm weight and the standard deviation
of the stream the norm actually saw at that token (LayerNorm is linear once ``sigma`` is fixed),
and ``W_r`` are the reader's input weights (a head's q, k, v rows; an MLP's first layer; the
classifier on the pooled token). This is the reconstruction of GOHSP's "inter-head
correlation": the paper's text is not available here, and its statistic is replaced by one
that measures what each head's output is used for; :func:`~.graph.flow_head_scores` turns it
into a converged Markov chain (personalised PageRank from the classifier) whose stationary
mass ranks heads.

**Cost.** Every reader reads every earlier contributor, so the exact statistic costs a matmul
of each contributor's term with each later reader's input weights: it grows with depth² ×
heads, while a forward grows with depth. By default each reader's weights are replaced by
``sketch`` rows (an MLP's by ``4 * sketch``) that estimate ``||W_h x||`` of a head's ``3d`` q, k, v
rows without bias: half are exact, ``U^T W_h`` for ``W_h``'s top left singular directions ``U``,
half a Gaussian sketch (Johnson–Lindenstrauss, ``E ||Pi v||^2 = ||v||^2``) of the remainder
``(I - U U^T) W_h``, whose energy is small on trained weights, so the estimate's variance is too.
The sketch is drawn once per calibration from a fixed seed (deterministic). A head's term is
its output projection applied to its ``d`` inputs, so the reader's (sketched) weights, norm
weight and the centring are folded into that projection first (``M = P_r diag(gamma) W~_o,h``,
``P_r`` the reader's rows; ``1 / sigma`` is a per-token scalar): a contributor head then costs
``d`` rather than ``C`` per token and sketch row. ``sketch=None`` is the exact statistic.
``benchmarks/calibration_cost.py`` measures both against a forward pass and the rankings' agreement.

Maths on captured tensors; the layers come from the model's host (:meth:`~tp_vit_plugins.hosts.Host.block_layers`,
:meth:`~tp_vit_plugins.hosts.Host.readout`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..core.calibration import iter_batches
from ..core.distributed import all_reduce_counted, is_distributed
from ..core.metrics import model_device
from ..hosts import host_for
from .graph import EMBED, OUT

__all__ = ["FlowUsage", "TOKENS_PER_IMAGE", "SKETCH_ROWS"]

#: Tokens per image the usage is measured on (a fixed stride over the sequence).
TOKENS_PER_IMAGE = 16
#: Sketch rows per reader head (an MLP reader gets 4x); ``FlowUsage(sketch=None)``: exact.
SKETCH_ROWS = 24


def _norm_map(norm: nn.Module | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(gamma [C], 1 / sigma [..., 1], centred)`` of the norm ``norm`` applied to the stream ``x [..., C]``."""
    if norm is None:
        return x.new_ones(x.shape[-1]), x.new_ones(*x.shape[:-1], 1), False
    eps = float(getattr(norm, "eps", 1e-6) or 1e-6)
    centred = isinstance(norm, nn.LayerNorm) or type(norm).__name__ == "LayerNorm"
    xc = x - x.mean(-1, keepdim=True) if centred else x
    inv = (xc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    w = getattr(norm, "weight", None)
    return (w.detach() if isinstance(w, torch.Tensor) else x.new_ones(x.shape[-1])), inv, centred


class FlowUsage:
    """Accumulates ``usage(contributor -> reader)`` over calibration batches (see module docs).

    Args:
        model: A timm ViT-family model with a plain linear readout.
        sketch: Sketch rows per reader head (see module docs); ``None``: the exact statistic.
        seed: Seed of the sketch.

    Raises:
        TypeError: A windowed model (Swin) or one whose readout the adapter does not know
            (the host's :meth:`~tp_vit_plugins.hosts.Host.readout` is empty).
    """

    def __init__(self, model: nn.Module, sketch: int | None = SKETCH_ROWS, seed: int = 0) -> None:
        if sketch is not None and (isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 1):
            raise ValueError(f"sketch must be an int >= 1 (rows per reader head) or None (exact), got {sketch!r}")
        self.sketch, self.seed = sketch, seed
        self._projections: dict[tuple[str, int], torch.Tensor] = {}
        self.host = host = host_for(model)
        host.check_global_sequence(model, "the GOHSP flow graph")
        self.model = model
        self.blocks = host.block_layers(model)
        self.readouts = host.readout(model)
        if not self.readouts:
            raise TypeError(
                f"the flow graph needs to know how {type(model).__name__}'s classifier reads the residual stream "
                "(the host's readout); use graph='similarity'"
            )
        self.sums: dict[tuple, dict[tuple, float]] = {}
        self.count = 0

    def _add(self, reader, contributor, value: float) -> None:
        row = self.sums.setdefault(reader, {})
        row[contributor] = row.get(contributor, 0.0) + value

    def _add_block(self, readers, contributors: list, values: torch.Tensor) -> None:
        """Add ``values [contributors, readers]`` (one transfer to the CPU, then plain floats)."""
        table = values.double().cpu().tolist()
        for j, reader in enumerate(readers):
            row = self.sums.setdefault(reader, {})
            for i, c in enumerate(contributors):
                row[c] = row.get(c, 0.0) + table[i][j]

    def _reader_weights(self, b) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        mlp = getattr(b.block, "mlp", None)
        firsts = [getattr(mlp, n, None) for n in ("fc1", "fc1_x", "fc1_g")]
        w = [m.weight.detach() for m in firsts if isinstance(m, nn.Linear)]
        return b.qkv_weight(), (torch.cat(w) if w else None)

    def _projection(self, kind: str, r: int, w: torch.Tensor, H: int, d: int) -> tuple[torch.Tensor, int]:
        """``(P [groups * rows, C], rows per group)``: the reader's weights, grouped by head (attention), sketched.

        ``||P_g x||`` estimates ``||W_g x||`` for every group ``g`` (a head's q, k, v rows; the
        whole MLP); exact (``P = W`` regrouped) without a sketch or where the sketch is not smaller.
        """
        key = (kind, r)
        if key in self._projections:
            P = self._projections[key]
            return P, P.shape[0] // (H if kind == "attn" else 1)
        C = w.shape[-1]
        groups = w.view(-1, H, d, C).permute(1, 0, 2, 3).reshape(H, -1, C) if kind == "attn" else w[None]  # [G, R, C]
        rows = groups.shape[1]
        k = None if self.sketch is None else (self.sketch if kind == "attn" else 4 * self.sketch)
        if k is not None and k < rows:
            groups = self._sketch(groups, k, seed=self.seed * 1_000_003 + 2 * r + (kind == "mlp"))
        P = groups.reshape(-1, C).contiguous()
        self._projections[key] = P
        return P, groups.shape[1]

    @staticmethod
    def _sketch(groups: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        """``[G, k, C]`` rows whose norms on any ``x`` estimate ``||W_g x||`` of ``groups [G, R, C]`` without bias.

        The first ``k // 2`` rows are exact: ``U^T W_g`` for an orthonormal ``U [R, k // 2]`` spanning
        (approximately: a randomized range finder) ``W_g``'s top left singular directions; the rest is a
        Gaussian sketch of the remainder ``(I - U U^T) W_g``. Since ``||W_g x||^2 = ||U^T W_g x||^2 +
        ||(I - U U^T) W_g x||^2`` for any orthonormal ``U``, only the remainder's (small) energy is estimated.
        """
        G, R, C = groups.shape
        a = k // 2
        w = groups.detach().double().cpu()  # float64: the same rows whatever the thread count (ranks agree)
        gen = torch.Generator().manual_seed(seed)
        # randomized range finder with one power iteration: U spans W_g's top left singular directions
        U = torch.linalg.qr(w @ torch.randn(G, C, a, generator=gen, dtype=torch.float64)).Q  # [G, R, a]
        U = torch.linalg.qr(w @ (w.transpose(-1, -2) @ U)).Q
        top = U.transpose(-1, -2) @ w  # [G, a, C]
        pi = torch.randn(G, k - a, R, generator=gen, dtype=torch.float64) / math.sqrt(k - a)
        return torch.cat([top, pi @ w - (pi @ U) @ top], 1).to(groups)

    @torch.no_grad()
    def run(self, loader: Iterable, max_batches: int | None = None, progress: bool = True) -> FlowUsage:
        """Run calibration batches and accumulate the usage; hooks are removed on every path."""
        captured: dict[tuple, torch.Tensor] = {}
        handles = []

        def pre(key):
            return lambda m, args: captured.__setitem__(key, args[0].detach())

        def post(key):
            return lambda m, args, out: captured.__setitem__(key, out.detach())

        was_training = self.model.training
        try:
            for i, b in enumerate(self.blocks):
                handles.append(b.proj.register_forward_pre_hook(pre(("proj", i))))
                for name, norm in (("norm1", b.norm1), ("norm2", b.norm2)):
                    if norm is not None:
                        handles.append(norm.register_forward_pre_hook(pre((name, i))))
                if b.fc2 is not None:
                    handles.append(b.fc2.register_forward_hook(post(("fc2", i))))
            norms = {id(n): n for ro in self.readouts for n in (ro.norm, ro.fc_norm) if n is not None}
            for key, norm in norms.items():
                handles.append(norm.register_forward_pre_hook(pre(("readout", key))))
            self.model.eval()
            device = model_device(self.model)
            empty_ok = is_distributed()  # the total is checked after the sum over processes
            for x in iter_batches(
                loader, max_batches, desc="GOHSP flow graph: who reads each head", progress=progress, allow_empty=empty_ok
            ):
                captured.clear()
                self.model(x.to(device))
                self._accumulate(captured)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        self._all_reduce()
        if not self.count:
            raise ValueError("calibration loader yielded no batches")
        return self

    def _all_reduce(self) -> None:
        """Sum the usage over processes (no-op in one process): N ranks on a split loader equal one on all of it.

        A rank that saw no batch adds zeros (the ranks agree on the union of the entries first).
        """
        if not is_distributed():
            return
        stats = {(r, c): torch.tensor(v, dtype=torch.float64) for r, row in self.sums.items() for c, v in row.items()}
        stats, count = all_reduce_counted(stats, self.count, model_device(self.model))
        self.count = int(count)
        self.sums = {}
        for (r, c), v in stats.items():
            self.sums.setdefault(r, {})[c] = float(v)

    def _accumulate(self, cap: dict[tuple, torch.Tensor]) -> None:
        x0 = cap[("norm1", 0)] if ("norm1", 0) in cap else None
        if x0 is None:
            raise TypeError("the flow graph needs every block to read the stream through norm1")
        B, N, C = x0.shape
        stride = max(1, math.ceil(N / TOKENS_PER_IMAGE))
        sel = torch.tensor(sorted({*range(min(N, 2)), *range(0, N, stride)}), device=x0.device)  # tokens 0, 1 always
        # contributors in forward order: (node, block, kind, term [K, B, S, C]) with kind 'embed' / 'attn' / 'mlp'
        terms: list[tuple[int, str, torch.Tensor]] = [(-1, "embed", x0[:, sel][None])]
        heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block -> (head inputs [B, S, H, d], writer [C, H, d])
        for i, b in enumerate(self.blocks):
            a = cap[("proj", i)][:, sel]  # [B, S, A]
            H, d = self.host.head_layout(b.attn)
            wp = b.proj.weight.detach().view(-1, H, d)  # [C, H, d]
            g1, g2 = self.host.residual_scales(b.block)
            wp = wp * g1[:, None, None] if g1 is not None else wp  # LayerScale folded into the writer
            heads[i] = (a.reshape(B, len(sel), H, d), wp)
            o = torch.einsum("bshd,chd->hbsc", heads[i][0], wp)  # [H, B, S, C]
            terms.append((i, "attn", o))
            if ("fc2", i) in cap:
                m = cap[("fc2", i)][:, sel]
                terms.append((i, "mlp", (m * g2 if g2 is not None else m)[None]))
        for r, b in enumerate(self.blocks):
            w_qkv, w_mlp = self._reader_weights(b)
            H, d = self.host.head_layout(b.attn)
            readers = [("attn", b.norm1, w_qkv, ("norm1", r))]
            if w_mlp is not None and ("norm2", r) in cap:
                readers.append(("mlp", b.norm2, w_mlp, ("norm2", r)))
            for kind, norm, w, key in readers:
                gamma, inv, centred = _norm_map(norm, cap[key][:, sel])
                P, rows = self._projection(kind, r, w, H, d)
                groups = P.shape[0] // rows
                Q = P * gamma  # [groups * rows, C]: the norm's weight folded into the reader
                before = [(blk, ck, t) for blk, ck, t in terms if blk < r or (kind == "mlp" and blk == r and ck == "attn")]
                nodes = [self._node(blk, ck, k) for blk, ck, t in before for k in range(t.shape[0])]
                uses = []
                for blk, ck, t in before:
                    if ck == "attn":  # a head's term is W_o,h a_h: fold the writer into the reader, y = a_h (Q W~_o,h)^T / sigma
                        a_h, wp = heads[blk]
                        wc = wp - wp.mean(0, keepdim=True) if centred else wp  # centring over C is linear in a_h
                        M = torch.einsum("rc,chd->hdr", Q, wc)  # [H', d', groups * rows]
                        y = torch.einsum("bshd,hdr->hbsr", a_h, M) * inv  # [H', B, S, groups * rows]
                    else:
                        t = t - t.mean(-1, keepdim=True) if centred else t
                        y = (t * inv) @ Q.T  # [1, B, S, groups * rows]
                    uses.append(y.view(*y.shape[:-1], groups, rows).pow(2).sum(-1).sqrt().sum((1, 2)))  # [u, groups]
                self._add_block((("head", r, h) for h in range(H)) if kind == "attn" else [("mlp", r)], nodes,
                                torch.cat(uses))  # fmt: skip
        self._accumulate_out(cap, terms, sel)
        self.count += B * len(sel)

    @staticmethod
    def _node(block: int, kind: str, k: int):
        return EMBED if kind == "embed" else ("head", block, k) if kind == "attn" else ("mlp", block)

    def _accumulate_out(self, cap, terms, sel) -> None:
        """The classifier side (:data:`OUT`) reads every readout of :func:`readout` (rows are normalised by the walk)."""
        for ro in self.readouts:
            w = torch.cat([lin.weight.detach() for lin in ro.layers])
            w = w if ro.columns is None else w[:, ro.columns[0] : ro.columns[1]]
            key = ("readout", id(ro.norm)) if ro.norm is not None else None
            if ro.pool == "token":
                at = int((sel == ro.index).nonzero()[0, 0])
                pooled = [(blk, kind, t[:, :, at : at + 1]) for blk, kind, t in terms]  # [K, B, 1, C]
                stream, norm = (cap[key][:, ro.index : ro.index + 1] if key else None), ro.norm
            elif ro.pool == "avg" and ro.fc_norm is None and key is not None:  # a norm per token, then the mean (DINOv2)
                keep = sel >= ro.num_prefix
                gamma, inv, centred = _norm_map(ro.norm, cap[key][:, sel][:, keep])  # inv [B, S', 1]
                pooled = []
                for blk, kind, t in terms:
                    t = t[:, :, keep]
                    t = t - t.mean(-1, keepdim=True) if centred else t
                    pooled.append((blk, kind, (t * gamma * inv).mean(2, keepdim=True)))  # [K, B, 1, C]
                stream, norm = pooled[0][2][0], None  # already normalised
            elif ro.pool == "avg":
                keep = sel >= ro.num_prefix
                pooled = [(blk, kind, t[:, :, keep].mean(2, keepdim=True)) for blk, kind, t in terms]
                fc = ("readout", id(ro.fc_norm)) if ro.fc_norm is not None else None
                stream, norm = (cap[fc][:, None] if fc else None), ro.fc_norm
            else:  # "all": every sampled token is read
                pooled = terms
                stream, norm = (cap[key][:, sel] if key else None), ro.norm
            if stream is None:
                stream = pooled[0][2][0]  # no norm: its scale does not matter
            gamma, inv, centred = _norm_map(norm, stream)
            for blk, kind, t in pooled:
                t = t - t.mean(-1, keepdim=True) if centred else t
                use = ((t * gamma * inv) @ w.T).pow(2).sum(-1).sqrt().sum((1, 2))  # [K]
                for k in range(use.shape[0]):
                    self._add(OUT, self._node(blk, kind, k), float(use[k]))

    def usage(self) -> dict[tuple, dict[tuple, float]]:
        """``{reader: {contributor: mean usage}}`` over every sampled token of every batch."""
        return {r: {c: v / self.count for c, v in row.items()} for r, row in self.sums.items()}
