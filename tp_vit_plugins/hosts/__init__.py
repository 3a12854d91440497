"""Host adapters: the only code that reads a host library's internals, behind one interface.

:func:`host_for` returns the :class:`Host` that claims a model; the methods ask it, never a host
type. Registered here: the transformers host (Hugging Face ViT / DeiT / DINOv2), the torchvision host
(``VisionTransformer``) and the timm host (the fallback, whose check names what is supported). A
new host subclasses :class:`Host` in its own module and is added with :func:`register_host`
(``docs/extending.md``, "A new host").
"""

from . import transformers as _transformers
from .base import (
    AttentionMaps,
    BlockHalves,
    BlockLayers,
    Host,
    Readout,
    UnsupportedModelError,
    fused_attn_off,
    host_for,
    linear_macs,
    register_host,
    registered_hosts,
    resize_to_state,
    split_qkv,
    unit_param_costs,
)
from .timm.host import TimmHost
from .torchvision import TorchvisionHost

__all__ = [
    "Host",
    "host_for",
    "register_host",
    "registered_hosts",
    "UnsupportedModelError",
    "BlockLayers",
    "Readout",
    "BlockHalves",
    "AttentionMaps",
    "split_qkv",
    "unit_param_costs",
    "linear_macs",
    "resize_to_state",
    "fused_attn_off",
    "TimmHost",
    "TorchvisionHost",
]

register_host(_transformers.TransformersHost())
register_host(TorchvisionHost())
register_host(TimmHost())
