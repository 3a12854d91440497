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
#: Methods the zoo's pipeline protocol can run (``--pipeline-methods``): peers, the seed
#: methods and the VTP settings the default was chosen among.
ZOO_PIPELINE_METHODS = (
    "dense+E", "l2", "taylor", "group_norm", "gohsp", "gohsp-grad", "gohsp-10-rounds", "gohsp-bias0", "gohsp-bias3",
    "gohsp-global", "gohsp-prox0.05", "gohsp-prox1", "gohsp-prox0.2-bias0", "gohsp-fisher",
    "gohsp-fisher-calib", "gohsp-fisher-frozen", "gohsp-block", "gohsp-euclid", "gohsp-nograph",
    "gohsp-truefisher", "gohsp-ramp", "gohsp-blocknorm",
    "group_norm-1sched", "gohsp-1sched", "gohsp-blocknorm-1sched", "gohsp-euclid-1sched", "gohsp-grad-1sched",
    "vtp", "vtp-fold", "vtp-qkv", "vtp-s0.5",
    "vtp-s2", "vtp-rank", "vtp-magnitude",
    "vtp-s0.5-rank", "vtp-noclose", "vtp-fold-close", "vtp-late", "vtp-trained-gates",
    "vtp-embed-mean", "vtp-embed-max",
)  # fmt: skip
#: Methods the zoo's tokens protocol can run (``--token-methods``): CP-ViT settings and the peers.
ZOO_TOKEN_METHODS = (
    "cpvit", "cpvit-random", "cpvit-notrim", "cpvit-notrim-random",
    "cpvit-ramp", "cpvit-ramp-random", "cpvit-scoreprune", "cpvit-scoreprune-random",
    "cpvit-plainpool", "cpvit-plainpool-random",
    "cpvit-ramp-plainpool", "cpvit-ramp-plainpool-random", "cpvit-block", "cpvit-block-random",
    "cpvit-ramp-drop", "cpvit-ramp-drop-random", "cpvit-merge", "cpvit-s0", "cpvit-s0-merge",
    "cpvit-s0-random", "cpvit-stepped", "cpvit-s0-stepped-merge", "cpvit-s0-stepped-merge-random", "tome", "evit",
)  # fmt: skip
