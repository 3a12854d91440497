"""GOHSP head-graph maths: similarities between heads of consecutive blocks and PageRank.

Pure tensor / networkx code (no timm). Nodes are ``(block, head)`` pairs; an undirected edge
joins every head of block ``l`` to every head of block ``l + 1`` with a non-negative weight,
the similarity of their attention statistics. ``networkx.pagerank`` on this graph is the
stationary distribution of the random walk that follows edges proportionally to their
weights and teleports uniformly with probability ``1 - damping`` — the converged Markov
chain GOHSP uses to rank heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import torch

__all__ = [
    "SIMILARITIES",
    "head_similarity",
    "build_head_graph",
    "pagerank_head_scores",
    "OUT",
    "EMBED",
    "build_flow_graph",
    "flow_head_scores",
]

#: Node of the classifier (where the backward walk of the flow graph starts and restarts).
OUT = "out"
#: Node of the patch embedding (the residual stream's first term).
EMBED = "embed"

#: Names accepted by :func:`head_similarity`.
SIMILARITIES = ("abs_cosine", "relu_cosine", "abs_pearson")


def head_similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "abs_cosine") -> torch.Tensor:
    """Non-negative similarity between every head of two consecutive blocks.

    Args:
        a: Statistics of block ``l``, ``[H_l, D]`` (e.g. flattened mean attention maps).
        b: Statistics of block ``l + 1``, ``[H_{l+1}, D]``.
        kind: ``abs_cosine`` (|cos|), ``relu_cosine`` (max(cos, 0)) or ``abs_pearson``
            (|correlation|: cosine after centring each row).

    Returns:
        ``[H_l, H_{l+1}]`` weights in ``[0, 1]``.

    Raises:
        ValueError: Unknown ``kind`` or mismatched feature sizes.
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; choose one of {SIMILARITIES}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [H1, D] and [H2, D] statistics, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    if kind == "abs_pearson":
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    cos = torch.nn.functional.normalize(a, dim=1, eps=1e-12) @ torch.nn.functional.normalize(b, dim=1, eps=1e-12).T
    return cos.clamp(min=0) if kind == "relu_cosine" else cos.abs()


def build_head_graph(similarities: Sequence[torch.Tensor]) -> nx.Graph:
    """Weighted graph over all heads; edges between heads of consecutive blocks.

    Args:
        similarities: ``L - 1`` matrices, entry ``l`` of shape ``[H_l, H_{l+1}]``.

    Returns:
        An undirected ``networkx.Graph`` with nodes ``(block, head)`` and edge attribute
        ``weight``. Zero-weight edges are kept out.

    Raises:
        ValueError: Consecutive matrices disagree on a block's head count, or a weight is
            negative / not finite.
    """
    g = nx.Graph()
    for layer, sim in enumerate(similarities):
        if layer and similarities[layer - 1].shape[1] != sim.shape[0]:
            raise ValueError(
                f"block {layer} has {similarities[layer - 1].shape[1]} heads in one matrix, {sim.shape[0]} in the next"
            )
        if not torch.isfinite(sim).all() or (sim < 0).any():
            raise ValueError("edge weights must be finite and non-negative")
        g.add_nodes_from((layer, h) for h in range(sim.shape[0]))
        g.add_nodes_from((layer + 1, h) for h in range(sim.shape[1]))
        for i, j in torch.nonzero(sim > 0).tolist():
            g.add_edge((layer, i), (layer + 1, j), weight=float(sim[i, j]))
    return g


def pagerank_head_scores(
    graph: nx.Graph,
    heads_per_block: Sequence[int],
    damping: float = 0.85,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> list[torch.Tensor]:
    """PageRank of every head, grouped by block.

    Args:
        graph: Graph from :func:`build_head_graph`.
        heads_per_block: Head count of each block (isolated heads get the teleport mass only).
        damping: PageRank damping factor ``alpha`` in ``(0, 1)``.
        max_iter: Power-iteration limit passed to ``networkx.pagerank``.
        tol: Convergence tolerance passed to ``networkx.pagerank``.

    Returns:
        One ``[H_l]`` float64 tensor per block; all entries sum to 1.

    Raises:
        ValueError: ``damping`` outside ``(0, 1)``.
    """
    if not 0.0 < damping < 1.0:
        raise ValueError(f"damping must lie in (0, 1), got {damping}")
    g = graph.copy()
    g.add_nodes_from((layer, h) for layer, n in enumerate(heads_per_block) for h in range(n))
    pr = nx.pagerank(g, alpha=damping, weight="weight", max_iter=max_iter, tol=tol)
    return [torch.tensor([pr[(layer, h)] for h in range(n)], dtype=torch.float64) for layer, n in enumerate(heads_per_block)]


def build_flow_graph(usage: dict[tuple, dict[tuple, float]]) -> nx.DiGraph:
    """Directed graph of who reads whom: an edge ``reader -> contributor`` per usage entry.

    Args:
        usage: ``{reader: {contributor: weight}}`` with non-negative weights — how strongly
            the reader (a head ``("head", block, h)``, an MLP ``("mlp", block)`` or
            :data:`OUT`) reads the contributor's output (a head, an MLP or :data:`EMBED`).

    Returns:
        A ``networkx.DiGraph``; a walker at a reader moves to one of its contributors with
        probability proportional to the weight (networkx normalises the out-weights).

    Raises:
        ValueError: A weight is negative or not finite.
    """
    g = nx.DiGraph()
    g.add_node(OUT)
    for reader, row in usage.items():
        g.add_node(reader)
        for contributor, w in row.items():
            if not (w >= 0 and w < float("inf")):
                raise ValueError(f"usage weights must be finite and non-negative, got {w} for {reader} -> {contributor}")
            if w > 0:
                g.add_edge(reader, contributor, weight=float(w))
    return g


def flow_head_scores(
    graph: nx.DiGraph, heads_per_block: Sequence[int], damping: float = 0.85, max_iter: int = 1000, tol: float = 1e-10
) -> list[torch.Tensor]:
    """Stationary mass of every head under the backward walk from the classifier.

    The walk starts at :data:`OUT`; at each step it moves from the current reader to one of
    the outputs that reader reads, in proportion to how strongly it reads them, and with
    probability ``1 - damping`` (or at a node that reads nothing: the patch embedding, the
    first block's readers once they chose it) it restarts at the classifier. This is
    ``networkx.pagerank`` with the personalisation on :data:`OUT`. A head's stationary mass is
    then the share of the walks from the classifier that pass through it: how much of what the
    classifier reads is computed, directly or through later heads and MLPs, from that head.

    Returns:
        One ``[H_l]`` float64 tensor per block (heads absent from the graph get 0).

    Raises:
        ValueError: ``damping`` outside ``(0, 1)``.
    """
    if not 0.0 < damping < 1.0:
        raise ValueError(f"damping must lie in (0, 1), got {damping}")
    restart = {OUT: 1.0}
    pr = nx.pagerank(graph, alpha=damping, personalization=restart, dangling=restart, weight="weight",
                     max_iter=max_iter, tol=tol)  # fmt: skip
    return [
        torch.tensor([pr.get(("head", b, h), 0.0) for h in range(n)], dtype=torch.float64) for b, n in enumerate(heads_per_block)
    ]
