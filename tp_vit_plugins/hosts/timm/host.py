"""The timm host: :class:`TimmHost`, the :class:`~tp_vit_plugins.hosts.base.Host` of timm ViT-family models.

Its methods are the timm adapter's functions (:mod:`.support`, :mod:`.structure`,
:mod:`.pruning`, :mod:`.sync`, :mod:`.attention`, :mod:`.blocks`, :mod:`.families`, :mod:`.io`).
It is the fallback host: a model no other host claims is checked here, and refused with the
list of what is supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..base import BlockHalves, BlockLayers, Host, Readout
from . import attention, blocks, families, io, pruning, structure, support, sync


class TimmHost(Host):
    """timm ``VisionTransformer`` and its families (DeiT, DeiT3, EVA02, BEiT, CaiT, Swin, SigLIP-style pools)."""

    name = "timm"
    fallback = True

    def claims(self, model: nn.Module) -> bool:
        return True  # the fallback: check() refuses what is not a supported timm model

    def check(self, model: nn.Module) -> None:
        support.check_supported(model)

    def is_supported(self, model: nn.Module) -> bool:
        return support.is_supported(model)

    def check_global_sequence(self, model: nn.Module, what: str) -> None:
        support.check_global_sequence(model, what)

    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return structure.attention_modules(model)

    def block_layers(self, model: nn.Module) -> list[BlockLayers]:
        return structure.block_layers(model)

    def head_layout(self, attn: nn.Module) -> tuple[int, int]:
        return structure.head_layout(attn)

    def prefix_tokens(self, model: nn.Module) -> int:
        return structure.prefix_tokens(model)

    def classifier_heads(self, model: nn.Module) -> list[nn.Module]:
        return structure.classifier_heads(model)

    def readout(self, model: nn.Module) -> list[Readout]:
        return structure.readout(model)

    def residual_scales(self, block: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return structure.residual_scales(block)

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        return structure.embedding_modules(model)

    def fixed_residual(self, model: nn.Module) -> str | None:
        return support.fixed_residual(model)

    def pruning_kwargs(self, model: nn.Module) -> dict[str, Any]:
        return pruning.vit_pruning_kwargs(model)

    def sync(self, model: nn.Module, num_heads: Any = None) -> nn.Module:
        return sync.sync_attention(model, num_heads)

    def drop_heads(self, attn: nn.Module, heads: Sequence[int]) -> None:
        families.drop_heads(attn, heads)

    def has_rope(self, model: nn.Module) -> bool:
        return families.has_rope(model)

    def rope_pairs(self, attn: nn.Module) -> list[tuple[int, int]] | None:
        return families.rope_pairs(int(attn.head_dim), bool(getattr(attn, "rotate_half", False)))

    def attention_maps(self, model: nn.Module, store: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None):
        return attention.attention_maps(model, store, callback)

    def eager_attention(self, model: nn.Module):
        return attention.eager_attention(model)

    def token_blocks(self, model: nn.Module) -> list[nn.Module]:
        return blocks.token_blocks(model)

    def block_halves(self, block: nn.Module) -> BlockHalves | None:
        return blocks.block_halves(block)

    def block_attention(self, block: nn.Module) -> nn.Module | None:
        return blocks.block_attention(block)

    def cascade_attention(self, attn: nn.Module, x: torch.Tensor, num_prefix: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        return blocks.cascade_attention(attn, x, num_prefix, *args, **kwargs)

    def attention_forward(self, attn: nn.Module) -> Callable[..., torch.Tensor]:
        return blocks.attention_forward(attn)

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        return blocks.patch_grid(model)

    def patch_embed_macs(self, model: nn.Module) -> int:
        return blocks.patch_embed_macs(model)

    def reads_prefix_only(self, model: nn.Module) -> bool:
        return blocks.reads_prefix_only(model)

    def averages_patch_tokens(self, model: nn.Module) -> bool:
        return blocks.averages_patch_tokens(model)

    def readout_macs(self, model: nn.Module, tokens: int, patches: int) -> int:
        return blocks.readout_macs(model, tokens, patches)

    def has_class_token(self, model: nn.Module) -> bool:
        return getattr(model, "cls_token", None) is not None

    def positional_attention(self, model: nn.Module) -> bool:
        return type(model).__name__ in ("Eva", "Beit")

    def head_mixers(self, attn: nn.Module) -> list[nn.Linear]:
        return families.head_mixers(attn)

    def attention_pool(self, model: nn.Module) -> nn.Module | None:
        return support.attention_pool(model)

    def save_spec(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return io.save_spec(model)

    def rebuild(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
        return io.rebuild(spec, tensors)
