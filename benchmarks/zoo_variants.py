"""Method settings the zoo compares with the library defaults (registered by ``zoo_run.py``).

The installed package runs only the defaults (``gohsp``, ``vtp``, ``cpvit``, ``cpvit-random``)
and the peers; the alternatives below are the settings the defaults are measured against.
Append ``-1sched`` to a pipeline name to run its sparse phase and fine-tune under one
learning-rate schedule.
"""

from __future__ import annotations

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import finetune
from tp_vit_plugins.demo.methods import get_method
from tp_vit_plugins.demo.zoo_bench import PIPELINE_METHODS_EXTRA, head_importance, prune_to_params, register_variants

_DEFAULT_GOHSP = dict(rounds=10, calibrate="data")
GOHSP = {
    # the paper preset: ADMM, Euclidean projection, PageRank over the attention-correlation graph
    "gohsp-paper": {"rounds": 10, "calibrate": None, "preset": "paper"},
    "gohsp-paper-sgd": {"rounds": 10, "calibrate": None, "preset": "paper", "proximal": None},  # W-step through the gradient
    "gohsp-nograph": {**_DEFAULT_GOHSP, "graph_bias": 0.0},  # no graph guideline in the projection
    "gohsp-bias3": {**_DEFAULT_GOHSP, "graph_bias": 3.0},  # a stronger one
    "gohsp-euclid": {**_DEFAULT_GOHSP, "metric": "euclidean", "calibrate": None},  # the paper's (Euclidean) projection
    "gohsp-grad": {**_DEFAULT_GOHSP, "proximal": None},  # the ADMM term through the optimizer's gradient
    "gohsp-truefisher": {**_DEFAULT_GOHSP, "calibrate": "model"},  # labels drawn from the model: the true Fisher
    "gohsp-global": {**_DEFAULT_GOHSP, "per_block": False},  # flow-graph head scores over the model
}

_PLAIN = dict(reg=0.5, shrink=1.0, close=False)  # the paper's plain sparse training
VTP = {
    "vtp-paper": {"preset": "paper"},  # gates learned under L1, |g| ranking, folded
    "vtp-paper-model": {"preset": "paper", "grad_scale": "model"},  # one gradient scale for every gate, not per position
    "vtp-paper-gate": {"preset": "paper", "grad_scale": "gate"},  # each gate's own RMS gradient as its scale
    "vtp-paper-capped": {"preset": "paper", "grad_scale": "capped"},  # per position, no gate below its own RMS
    "vtp-noclose": {"close": False},
    "vtp-magnitude": {"score": "magnitude", "close": False},  # the paper's |g| ranking
    "vtp-fold": {**_PLAIN, "fold_values": True},  # the paper's folding
    "vtp-fold-close": {"fold_values": True},
    "vtp-trained-gates": {"gate_lr": "sparse"},  # closing with the gates trained by the L1 step
    "vtp-s0.5": {**_PLAIN, "fold_values": True, "shrink": 0.5},
    "vtp-s2": {**_PLAIN, "fold_values": True, "shrink": 2.0},
    "vtp-embed-mean": {**_PLAIN, "fold_values": True, "prune_embed_dim": True},
    "vtp-embed-max": {**_PLAIN, "fold_values": True, "prune_embed_dim": True, "aggregation": "max"},
}

_Q = "depth//4"  # the paper's start block, resolved per model
_BLOCK = dict(prune_at="block", weighted_pool=False)  # tokens leave after the whole block, plain mean pool
_RAMP_DROP = dict(start_block=_Q, schedule_steps=None, fold="drop", **_BLOCK)  # the paper's pipeline
CPVIT = {
    "cpvit-paper": {"preset": "paper"},  # mean-share cascade, dropped tokens, head skipping, attention range
    "cpvit-paper-random": {"preset": "paper", "score": "random"},
    "cpvit-paper-noheads": {"preset": "paper", "head_keep_ratio": 1.0},
    "cpvit-paper-noheads-random": {"preset": "paper", "head_keep_ratio": 1.0, "score": "random"},
    "cpvit-paper-cumheads": {"preset": "paper", "head_score": "cumulative"},  # heads weighted by the patch score
    "cpvit-paper-cumheads-random": {"preset": "paper", "head_score": "cumulative", "score": "random"},
    # the paper's two contributions the recommended preset leaves off, each added to it alone
    "cpvit-heads": {"head_keep_ratio": 0.75},  # per-input head skipping
    "cpvit-range": {"beta": 0.5},  # the calibrated attention-range adjustment
    "cpvit-notrim": dict(trim_last=False),
    "cpvit-notrim-random": dict(trim_last=False, score="random"),
    "cpvit-ramp": dict(schedule_steps=None, trim_last=False),
    "cpvit-ramp-random": dict(schedule_steps=None, score="random", trim_last=False),
    "cpvit-scoreprune": dict(score_at="prune", trim_last=False),
    "cpvit-scoreprune-random": dict(score_at="prune", score="random", trim_last=False),
    "cpvit-plainpool": dict(weighted_pool=False, trim_last=False),
    "cpvit-plainpool-random": dict(weighted_pool=False, score="random", trim_last=False),
    "cpvit-block": _BLOCK,
    "cpvit-block-random": {**_BLOCK, "score": "random"},
    "cpvit-ramp-drop": _RAMP_DROP,
    "cpvit-ramp-drop-random": {**_RAMP_DROP, "score": "random"},
    "cpvit-merge": {**_RAMP_DROP, "fold": "merge"},
    "cpvit-s0": {**_RAMP_DROP, "start_block": 0},
    "cpvit-s0-random": {**_RAMP_DROP, "start_block": 0, "score": "random"},
    "cpvit-stepped": {**_RAMP_DROP, "schedule_steps": 3},
}


def _isomorphic(criterion: str):
    """tp's isomorphic pruning (Fang et al., ECCV 2024) with a tp criterion, then the fine-tune."""

    def run(model, step):
        imp = head_importance(criterion, model, step.calib)
        return prune_to_params(model, step.example, imp, step.target_params, isomorphic=True), 0, {}

    return run


def _tp_loop(method: str, **graph):
    """The library default built as a tp user builds a pruner (model, example, importance, a ratio) and driven by
    tp's calls only: ``regularize`` after every backward, ``update_regularizer()`` per epoch of the sparse half, ``step()``.
    ``graph``: GOHSP's head-graph options (``flow_sketch=None``: the exact flow statistic)."""

    def run(model, step):
        if method == "gohsp":
            imp = tpv.GraphHeadImportance(progress=False, **graph).calibrate(model, step.calib)
            pruner = tpv.GOHSPPruner(model, step.example, imp, pruning_ratio=step.cut)
        else:  # the budget as VTP's parameter ratio (its pruning_ratio counts dims)
            pruner = tpv.VTPPruner(model, step.example, close_params=step.cut)
        sparse = step.epochs // 2
        span = (0, step.epochs) if step.one_schedule else None
        finetune(model, step.loader, epochs=sparse, step_hook=lambda m, loss: pruner.regularize(m),
                 epoch_hook=lambda epoch: pruner.update_regularizer(), schedule_span=span, **step.train)  # fmt: skip
        extra = get_method(method).stats(pruner)
        pruner.step()
        return model, sparse, extra

    return run


#: Pipeline methods the zoo's RESULTS sections compare with (tp's isomorphic pruning, the tp-loop driving).
PIPELINE = {
    "l2-iso": _isomorphic("l2"),
    "taylor-iso": _isomorphic("taylor"),
    "gohsp@tp": _tp_loop("gohsp"),
    "gohsp@tp-exactflow": _tp_loop("gohsp", flow_sketch=None),  # the sketch's twin
    "vtp@tp": _tp_loop("vtp"),
}


def register() -> None:
    """Make every setting above runnable by the zoo's protocols."""
    register_variants(gohsp=GOHSP, vtp=VTP, cpvit=CPVIT)
    PIPELINE_METHODS_EXTRA.update(PIPELINE)
