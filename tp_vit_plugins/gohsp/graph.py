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

__all__ = ["SIMILARITIES", "head_similarity", "build_head_graph", "pagerank_head_scores"]

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
