"""Method names the CLI offers, kept free of heavy imports so ``tp-vit --help`` is instant.

:data:`tp_vit_plugins.demo.methods.METHODS` holds the recipes under exactly these names
(a test checks that the two agree).
"""

__all__ = ["PRUNE_METHODS", "BENCH_METHODS", "ZOO_PROTOCOLS", "ZOO_PIPELINE_METHODS", "ZOO_TOKEN_METHODS"]

#: ``tp-vit prune --method`` choices.
PRUNE_METHODS = ("random", "l1", "l2", "taylor", "gohsp", "vtp", "cpvit")
#: ``tp-vit bench --methods`` choices (``gohsp+cpvit`` / ``vtp+cpvit`` combine structure and tokens).
BENCH_METHODS = ("random", "l2", "taylor", "gohsp", "vtp", "cpvit", "gohsp+cpvit", "vtp+cpvit")
#: ``tp-vit bench --zoo --protocols`` choices (see :mod:`tp_vit_plugins.demo.zoo_bench`).
ZOO_PROTOCOLS = ("heads", "pipeline", "tokens", "latency")
#: Methods the zoo's pipeline protocol runs from the package (``--pipeline-methods``): the
#: "dense + same epochs" control, tp's criteria and the library's defaults (the settings they
#: are compared with live in ``benchmarks/zoo_variants.py``).
ZOO_PIPELINE_METHODS = ("dense+E", "l2", "taylor", "group_norm", "gohsp", "vtp")
#: Methods the zoo's tokens protocol runs (``--token-methods``): the cascade, its random-score
#: twin and the peers.
ZOO_TOKEN_METHODS = ("cpvit", "cpvit-random", "tome", "evit")
