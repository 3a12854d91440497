"""GOHSP head ranking: a converged Markov chain over attention heads (Yin et al., AAAI 2023).

GOHSP ranks heads by the stationary distribution of a Markov chain over a graph of heads. What
the chain is built from is this library's reconstruction (the paper's abstract names the chain,
not its edges), in two versions (``graph=``):

* ``"flow"`` (default, chosen on the zoo): a **directed** graph of who reads whom. Every head,
  every MLP and the patch embedding write a term into the residual stream; every later head,
  MLP and the classifier read the stream through their norm and input weights. The edge
  ``reader -> writer`` carries how strongly the reader reads the writer's term on calibration
  tokens (:mod:`.flow`), and ``networkx.pagerank`` personalised on the classifier is the walk
  that starts at the classifier, steps back to what the current reader reads, and restarts at
  the classifier with probability ``1 - damping``. **A head's stationary mass is the share of
  those walks that pass through it: how much of what the classifier reads is computed, directly
  or through later heads and MLPs, from that head's output.**
* ``"similarity"`` (the ``"paper"`` preset): an undirected graph joining heads of consecutive
  blocks with the similarity of their attention maps (``statistic``, ``similarity``, ``mode``
  apply), the closest reading of the paper's "inter-head correlation". The chain's mass
  gathers on heads whose maps correlate most with their neighbours'; such a head is
  **redundant** (others carry its pattern), so by default this graph ranks heads by the
  inverse of their mass. On an undirected graph PageRank's stationary mass is close to each
  node's weighted degree (exactly proportional to it without restarts, ``damping -> 1``), so
  this ranking is near the sum of a head's similarities to its neighbours; the walk adds little
  beyond it (``mode="redundancy"``; the direction is this library's reading: the
  abstract does not give it). How each graph and direction rank heads on the zoo of models is
  in ``benchmarks/RESULTS.md``.

**One-shot use.** Used alone to remove heads (``ViTPruner(model, example, imp,
head_pruning_ratio=r)``), the flow graph leads tp's L2 criterion on the zoo mean at 30 / 50 / 70 %
of heads but not on every model and ratio, and neither does tp's Taylor criterion: which one-shot
ranking wins is model-dependent (``benchmarks/RESULTS.md``, "Presets", lists every model and
ratio where a ranking falls below L2, with paired intervals). The default is chosen on the zoo
mean; on a model of your own, compare it with ``tp.importance.GroupMagnitudeImportance(p=2)``
on held-out data before a one-shot prune, or prune with GOHSP's optimisation, which does not
depend on the ranking alone.

``normalize_per_layer``, ``combine``, ``head_weight``, ``base_importance`` decide how the head
scores meet weight information (see :class:`~tp_vit_plugins.core.head_importance.HeadImportance`).
Scores are normalised per block by default, so a global ranking across blocks compares heads
relative to their block.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import torch
import torch_pruning as tp
from torch import nn

from ..core.calibration import collect_attention
from ..core.distributed import all_reduce_counted, is_distributed
from ..core.head_importance import HeadImportance
from ..core.metrics import model_device
from ..hosts import host_for
from .config import PRESETS
from .flow import SKETCH_ROWS, FlowUsage
from .graph import SIMILARITIES, build_flow_graph, build_head_graph, flow_head_scores, head_similarity, pagerank_head_scores

__all__ = ["GraphHeadImportance", "STATISTICS", "GRAPH_MODES", "GRAPHS"]

#: Head graphs: ``"similarity"`` (undirected, attention-map similarity of consecutive blocks)
#: or ``"flow"`` (directed: who reads whose output; :mod:`.flow`).
GRAPHS = ("similarity", "flow")

#: Head summaries accepted by ``statistic``.
STATISTICS = ("mean_map", "per_image")
#: Directions accepted by ``mode``.
GRAPH_MODES = ("importance", "redundancy")


class _MapAccumulator:
    """Running per-head statistics from the attention callback."""

    def __init__(self, statistic: str, similarity: str) -> None:
        self.statistic, self.similarity = statistic, similarity
        self.sums: dict[int, torch.Tensor] = {}
        self.pair_sums: dict[int, torch.Tensor] = {}
        self.count = 0
        self._prev: torch.Tensor | None = None

    def __call__(self, block: int, probs: torch.Tensor) -> None:
        p = probs.double()  # [B, H, N, N]
        if block == 0:
            self.count += p.shape[0]
            self._prev = None
        self.sums[block] = self.sums.get(block, 0) + p.sum(0)
        if self.statistic == "per_image" and self._prev is not None:
            prev = self._prev.flatten(2)  # [B, H_prev, N*N]
            sims = torch.stack([head_similarity(a, b, self.similarity) for a, b in zip(prev, p.flatten(2))])
            self.pair_sums[block - 1] = self.pair_sums.get(block - 1, 0) + sims.sum(0)
        self._prev = p

    def all_reduce(self, device: torch.device | None = None) -> None:
        """Sum the statistics over ranks (no-op in one process).

        N processes on a split loader then rank exactly like one process on the whole loader; a
        rank that saw no batch adds zeros.
        """
        if not is_distributed():
            return
        stats = {("sum", k): v for k, v in self.sums.items()} | {("pair", k): v for k, v in self.pair_sums.items()}
        stats, count = all_reduce_counted(stats, self.count, device)
        self.count = int(count)
        self.sums = {k[1]: v for k, v in stats.items() if k[0] == "sum"}
        self.pair_sums = {k[1]: v for k, v in stats.items() if k[0] == "pair"}

    def similarities(self) -> list[torch.Tensor]:
        blocks = sorted(self.sums)
        if self.statistic == "per_image":
            return [self.pair_sums[b] / self.count for b in blocks[:-1]]
        means = [self.sums[b].flatten(1) / self.count for b in blocks]  # [H, N*N]
        return [head_similarity(means[i], means[i + 1], self.similarity) for i in range(len(means) - 1)]


class GraphHeadImportance(HeadImportance):
    """GOHSP graph-based head importance, a ``tp.importance.Importance``.

    Example::

        imp = tpv.GraphHeadImportance()
        imp.calibrate(model, calib_loader, max_batches=8)
        pruner = tpv.ViTPruner(model, example, imp, head_pruning_ratio=0.5, global_pruning=True)
        pruner.step()

    Args:
        damping: PageRank damping factor in ``(0, 1)``.
        similarity: Edge weight, one of :data:`~tp_vit_plugins.gohsp.graph.SIMILARITIES`.
        statistic: Head summary, one of :data:`STATISTICS`.
        mode: One of :data:`GRAPH_MODES`: ``"importance"`` keeps the heads with the most
            stationary mass, ``"redundancy"`` those with the least. ``None``: ``"importance"``
            for the flow graph, ``"redundancy"`` for the similarity graph (see module docs).
        base_importance: Criterion combined with the graph score and used for non-head groups.
        combine: ``"head"`` (default: heads ranked by the graph score alone, channels inside a
            head by the base criterion) or ``"product"`` (graph score ** head_weight × base,
            e.g. with a Taylor base).
        head_weight: Exponent of the graph score in ``"product"`` mode.
        normalize_per_layer: Normalise head scores within each block (default; see module docs).
        progress: Show a tqdm bar during calibration.
        graph: One of :data:`GRAPHS`. ``"flow"`` (default, chosen on the zoo): a directed chain
            from the classifier back through every head and MLP that reads an output to the
            output's writer, weighted by how strongly it reads it (:mod:`.flow`); a head's
            stationary mass is how much of what the classifier reads flows through it.
            ``"similarity"``: an undirected graph of attention-map similarities between heads
            of consecutive blocks (the paper's "inter-head correlation"); ``statistic`` and
            ``similarity`` apply to it only. ``None``: the preset's graph.
        config: A preset's name, the keyword every pruner and the cascade take:
            ``"paper"`` (``graph="similarity"``, ranked by redundancy) or ``"recommended"``
            (``graph="flow"``, the default); an explicit ``graph`` overrides it.
        flow_sketch: Sketch rows per reader head of the flow graph's usage (its cost grows like
            a forward pass; :mod:`.flow`); ``None``: the exact statistic.

    Attributes:
        head_scores: ``{key: [H]}`` normalised scores (higher = keep; key: the attention's ``qkv``,
            or its ``q_proj`` in a transformers model).
        pagerank: ``{key: [H]}`` raw PageRank values after :meth:`calibrate`.
        graph: The ``networkx.Graph`` of the last calibration.
    """

    def __init__(
        self,
        damping: float = 0.85,
        similarity: str = "abs_cosine",
        statistic: str = "mean_map",
        mode: str | None = None,
        base_importance: tp.importance.Importance | None = None,
        combine: str = "head",
        head_weight: float = 1.0,
        normalize_per_layer: bool = True,
        progress: bool = True,
        graph: str | None = None,
        config: str | None = None,
        flow_sketch: int | None = SKETCH_ROWS,
    ) -> None:
        super().__init__(base_importance, combine, head_weight, normalize_per_layer)
        if config is not None and config not in PRESETS:
            raise ValueError(f"config must be a preset's name, one of {PRESETS}, got {config!r}")
        #: ``graph`` left to the preset: a transformers model without a classifier (nothing to walk from) uses "similarity".
        self._graph_from_preset = graph is None
        if graph is None:  # the preset's graph: the paper's attention correlation, or the recommended flow graph
            graph = "similarity" if config == "paper" else "flow"
        #: The preset's name (``None``: the defaults).
        self.config = config
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
        self.graph_kind = graph
        if not 0.0 < damping < 1.0:
            raise ValueError(f"damping must lie in (0, 1), got {damping}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        self._mode_from_graph = mode is None
        if mode is None:  # what the chain's mass means depends on the graph
            mode = "redundancy" if graph == "similarity" else "importance"
        if mode not in GRAPH_MODES:
            raise ValueError(f"mode must be one of {GRAPH_MODES}, got {mode!r}")
        self.damping, self.similarity, self.statistic, self.mode = damping, similarity, statistic, mode
        self.progress = progress
        if flow_sketch is not None and (isinstance(flow_sketch, bool) or not isinstance(flow_sketch, int) or flow_sketch < 1):
            raise ValueError(f"flow_sketch must be an int >= 1 or None (exact), got {flow_sketch!r}")
        self.flow_sketch = flow_sketch
        self.pagerank: dict[nn.Module, torch.Tensor] = {}
        self.graph: nx.Graph | None = None

    def _compute_head_scores(self, model: nn.Module, loader: Iterable, max_batches: int | None) -> list[torch.Tensor]:
        host = host_for(model)
        attns = host.attention_modules(model)
        if self._graph_from_preset and self.graph_kind == "flow" and not host.readout(model):
            self.graph_kind = "similarity"  # e.g. a backbone without a classifier: nothing for the walk to start from
            self.mode = "redundancy" if self._mode_from_graph else self.mode
        if self.graph_kind == "flow":
            usage = FlowUsage(model, sketch=self.flow_sketch).run(loader, max_batches, progress=self.progress).usage()
            self.graph = build_flow_graph(usage)
            pr = flow_head_scores(self.graph, [host.head_layout(a)[0] for _, a in attns], self.damping)
            self.pagerank = {host.head_key(a): p for (_, a), p in zip(attns, pr)}
            return pr if self.mode == "importance" else [1.0 / p.clamp_min(1e-300) for p in pr]
        acc = _MapAccumulator(self.statistic, self.similarity)
        collect_attention(model, loader, acc, max_batches=max_batches, desc="GOHSP head graph: attention maps",
                          progress=self.progress, allow_empty=is_distributed())  # fmt: skip
        acc.all_reduce(model_device(model))
        if not acc.count:
            raise ValueError("the calibration loaders of all processes yielded no batches")
        sims = acc.similarities()
        heads = [host.head_layout(a)[0] for _, a in attns]
        self.graph = build_head_graph(sims) if sims else nx.Graph()
        pr = pagerank_head_scores(self.graph, heads, self.damping)
        self.pagerank = {host.head_key(a): p for (_, a), p in zip(attns, pr)}
        if self.mode == "importance":
            return pr
        return [1.0 / p for p in pr]
