"""The timm adapter: where the library reads timm's internals.

* :mod:`.support` — which models are supported, and the parts that stay whole;
* :mod:`.structure` — attention modules, block layers, head layouts, prefix tokens;
* :mod:`.families` — EVA / BEiT / CaiT / Swin attention converted into prunable forms;
* :mod:`.pruning` — :func:`vit_pruning_kwargs` and the tp layer pruners it supplies;
* :mod:`.sync` — :func:`sync_attention` after any tp step;
* :mod:`.attention` — eager attention and attention-map capture;
* :mod:`.blocks` — what the CP-ViT cascade replaces: block halves and the scoring attention.
"""
