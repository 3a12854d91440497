"""Deprecated: the timm adapter is :mod:`tp_vit_plugins.hosts.timm` (support, structure, pruning, sync, attention)."""

from ._moved import moved

_HOST = "tp_vit_plugins.hosts.timm."
__getattr__ = moved(__name__, [_HOST + m for m in ("support", "structure", "pruning", "sync", "attention", "families")])
