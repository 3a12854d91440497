"""Deprecated: EVA / BEiT / CaiT / Swin attention conversion is :mod:`tp_vit_plugins.hosts.timm.families`."""

from ._moved import moved

__getattr__ = moved(__name__, ["tp_vit_plugins.hosts.timm.families"])
