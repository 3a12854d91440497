"""Token-reduction peers for the zoo bench, written here from their papers (nothing vendored).

* **ToMe-style merging** (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023): in
  every block, between attention and MLP, the patch tokens are split alternately into two
  sets A and B; each A token's most similar B token (cosine of the attention keys averaged
  over heads) is an edge; the ``r`` strongest edges merge their A token into its B token by a
  size-weighted average; token sizes are tracked and attention is *proportional*
  (``log(size)`` added to the logits). Prefix tokens are never merged. ``r`` may be
  fractional: block ``l`` merges ``floor(r (l + 1)) - floor(r l)`` tokens.
* **EViT-style pruning with fusion** (Liang et al., "Not All Patches are What You Need",
  ICLR 2022): at a few blocks (a quarter, half and three quarters of the depth), after
  attention, the patch tokens the class token attends to least (mean over heads; models
  without a class token use the mean attention a token receives) are removed and fused into
  one token, their attention-weighted average, appended after the kept ones; ``keep`` is the
  share kept at each of those blocks.

Both run per image with a fixed token count per batch, so an image's output never depends on
the rest of its batch. Attention runs through
:func:`tp_vit_plugins.cpvit.patch.cascade_attention` (locked to timm's ``Attention.forward``
by the tests). Demo code for the bench: it patches ``Block.forward`` of timm ViTs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..cpvit.patch import find_cascade
from ..hosts.timm.blocks import cascade_attention, token_blocks
from ..hosts.timm.structure import prefix_tokens

__all__ = ["TokenPeer", "apply_tome", "apply_evit", "remove_peer", "bipartite_merge"]


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` patch tokens of each image into their most similar partner (ToMe's bipartite soft matching).

    Args:
        x: Patch tokens ``[B, P, C]`` (no prefix tokens).
        size: How many original patches each token stands for, ``[B, P, 1]``.
        metric: Matching features ``[B, P, D]`` (the keys averaged over heads).
        r: Tokens to remove, ``0 <= r <= P // 2``.

    Returns:
        ``(x, size)`` with ``P - r`` tokens: the unmerged A tokens (in their order), then the B tokens.
    """
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [B, Pa, Pb]
    best, partner = scores.max(dim=-1)  # [B, Pa]
    order = best.argsort(dim=-1, descending=True)
    src, unm = order[:, :r], order[:, r:].sort(dim=-1).values  # merged A tokens / kept A tokens (original order)
    dst = partner.gather(1, src)  # [B, r]
    C = x.shape[-1]

    def merge(t: torch.Tensor) -> torch.Tensor:
        ta, tb = t[:, ::2], t[:, 1::2]
        kept = ta.gather(1, unm[..., None].expand(-1, -1, t.shape[-1]))
        moved = ta.gather(1, src[..., None].expand(-1, -1, t.shape[-1]))
        return torch.cat([kept, tb.scatter_add(1, dst[..., None].expand(-1, -1, t.shape[-1]), moved)], dim=1)

    summed = merge(x * size)  # size-weighted sums
    new_size = merge(size)
    return summed[..., :C] / new_size, new_size


class TokenPeer:
    """A token-reduction peer attached to a model's blocks (see :func:`apply_tome`, :func:`apply_evit`)."""

    def __init__(self, model: nn.Module, block_fn: Callable[[TokenPeer, int, nn.Module, torch.Tensor], torch.Tensor]) -> None:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):  # merged tokens have no grid position for rope / relative bias
            raise TypeError(f"the token-reduction peers run on timm VisionTransformer blocks only, got {type(model).__name__}")
        self.model, self.blocks = model, token_blocks(model)
        if any("forward" in vars(blk) for blk in self.blocks) or find_cascade(model) is not None:
            raise TypeError("a token reduction is already applied to this model; remove it first")
        self.num_prefix = prefix_tokens(model)
        self.size: torch.Tensor | None = None  # [B, N, 1] per forward
        self.counts: list[int] = []  # patch tokens entering each block in the latest forward
        self._block_fn = block_fn
        self._handles = [self.blocks[0].register_forward_pre_hook(self._reset)]
        for i, blk in enumerate(self.blocks):
            blk.forward = _PeerBlock(self, i, blk)

    def _reset(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        self.size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
        self.counts = []

    def detach(self) -> None:
        """Restore every block's own forward."""
        for h in self._handles:
            h.remove()
        for blk in self.blocks:
            if isinstance(blk.__dict__.get("forward"), _PeerBlock):
                del blk.forward


class _PeerBlock:
    def __init__(self, peer: TokenPeer, index: int, block: nn.Module) -> None:
        self.peer, self.index, self.block = peer, index, block

    def __call__(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("token-reduction peers do not support attention masks")
        self.peer.counts.append(x.shape[1] - self.peer.num_prefix)
        return self.peer._block_fn(self.peer, self.index, self.block, x)


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def apply_tome(model: nn.Module, r: float) -> TokenPeer:
    """Attach ToMe-style token merging, ``r`` tokens merged per block (fractional allowed).

    Raises:
        ValueError: ``r < 0``.
    """
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")

    def block_fn(peer: TokenPeer, i: int, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        keys: list[torch.Tensor] = []
        bias = peer.size.log().transpose(1, 2)[:, None]  # [B, 1, 1, N]: proportional attention
        h = cascade_attention(blk.attn, blk.norm1(x), peer.num_prefix, logit_bias=bias, observe_keys=keys.append)
        x = x + blk.drop_path1(blk.ls1(h))
        p = peer.num_prefix
        n_merge = min(math.floor(r * (i + 1)) - math.floor(r * i), (x.shape[1] - p) // 2)
        if n_merge > 0:
            metric = keys[0].mean(1)[:, p:]  # [B, P, d]
            patches, size = bipartite_merge(x[:, p:], peer.size[:, p:], metric, n_merge)
            x = torch.cat([x[:, :p], patches], dim=1)
            peer.size = torch.cat([peer.size[:, :p], size], dim=1)
        return _mlp(blk, x)

    return TokenPeer(model, block_fn)


def evit_blocks(depth: int) -> list[int]:
    """Blocks where EViT-style reorganisation happens: about 1/4, 1/2 and 3/4 of the depth."""
    return sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75)} - {depth})


def apply_evit(model: nn.Module, keep: float) -> TokenPeer:
    """Attach EViT-style pruning with fusion, keeping ``keep`` of the patch tokens at each reorganisation block.

    Raises:
        ValueError: ``keep`` outside ``(0, 1]``.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    reorg = set(evit_blocks(len(token_blocks(model))))
    has_cls = getattr(model, "cls_token", None) is not None

    def block_fn(peer: TokenPeer, i: int, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        probs: list[torch.Tensor] = []
        h = cascade_attention(blk.attn, blk.norm1(x), peer.num_prefix, observe=probs.append)
        x = x + blk.drop_path1(blk.ls1(h))
        p, P = peer.num_prefix, x.shape[1] - peer.num_prefix
        k = max(1, math.ceil(keep * P))
        if i in reorg and k < P:
            a = probs[0]  # [B, H, N, N]
            attention = (a[:, :, 0] if has_cls else a.mean(2))[..., p:].mean(1)  # [B, P]
            order = attention.argsort(dim=-1, descending=True)
            top = order[:, :k].sort(dim=-1).values
            rest = order[:, k:]
            patches = x[:, p:]
            kept = patches.gather(1, top[..., None].expand(-1, -1, x.shape[-1]))
            w = attention.gather(1, rest)[..., None]  # [B, P - k, 1]
            dropped = patches.gather(1, rest[..., None].expand(-1, -1, x.shape[-1]))
            fused = (w * dropped).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-12)
            x = torch.cat([x[:, :p], kept, fused], dim=1)
        return _mlp(blk, x)

    return TokenPeer(model, block_fn)


def remove_peer(peer: TokenPeer) -> None:
    """Detach ``peer``: the model is exactly as before."""
    peer.detach()
