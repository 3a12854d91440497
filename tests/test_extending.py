"""Extension points: a new head importance (HeadImportance subclass) and a new token scorer (CascadeConfig.score)."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch
import torch_pruning as tp
from conftest import make_model

import tp_vit_plugins as tpv
from tp_vit_plugins.core.head_importance import HeadImportance
from tp_vit_plugins.cpvit.maths import token_scores


class FixedHeads(HeadImportance):
    """Head scores given up front: block ``l`` ranks its heads as ``scores[l]``."""

    def __init__(self, scores, **kwargs):
        super().__init__(**kwargs)
        self.fixed = scores

    def _compute_head_scores(self, model, loader, max_batches):
        return [torch.tensor(s, dtype=torch.float64) for s in self.fixed]


def test_a_new_head_importance_drives_vitpruner_and_a_stock_tp_pruner(x):
    scores = [[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]]  # the lowest head per block: 1, then 0
    model = make_model("vit")
    qkv_before = [b.attn.qkv.weight.detach().clone() for b in model.blocks]
    imp = FixedHeads(scores, normalize_per_layer=True).calibrate(model, [x[:2]])
    tpv.ViTPruner(model, x[:1], imp, head_pruning_ratio=0.34).step()
    d = model.blocks[0].attn.head_dim
    for b, w, gone in zip(model.blocks, qkv_before, (1, 0)):
        keep = [h for h in range(3) if h != gone]
        rows = w.view(3, 3, d, -1)[:, keep].reshape(-1, w.shape[1])  # q, k, v of the kept heads
        assert b.attn.num_heads == 2 and torch.equal(b.attn.qkv.weight.detach(), rows)
    assert model(x).shape == (x.shape[0], 10)
    # a stock tp pruner reads it as any tp importance (tp prunes heads alongside some width)
    model = make_model("vit")
    imp = FixedHeads(scores, normalize_per_layer=True).calibrate(model, [x[:2]])
    kwargs = dict(pruning_ratio=0.25, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.34)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, **kwargs, **tpv.vit_pruning_kwargs(model))
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    assert model(x).shape == (x.shape[0], 10) and all(b.attn.num_heads < 3 for b in model.blocks)


def test_a_token_scorer_equal_to_the_cumulative_score_gives_the_same_cascade(x):
    model = make_model("vit").eval()
    with torch.no_grad():
        cascade = tpv.apply_cascade(model, keep_ratio=0.5)
        ref = model(x)
        cascade.remove()
        cascade = tpv.apply_cascade(model, keep_ratio=0.5, score=lambda probs, prefix: token_scores(probs, prefix))
        mine = model(x)
        counts = cascade.last.counts
        cascade.remove()
    assert torch.equal(ref, mine) and counts[-1] < counts[0]


def test_a_token_scorer_of_the_wrong_shape_is_refused_and_the_model_stays_whole(x):
    model = make_model("vit").eval()
    with torch.no_grad():
        dense = model(x)
        cascade = tpv.apply_cascade(model, keep_ratio=0.5, score=lambda probs, prefix: probs.mean((1, 2)))  # prefix kept
        with pytest.raises(ValueError, match="token scorer"):
            model(x)
        cascade.remove()
        assert torch.equal(model(x), dense)
    with pytest.raises(ValueError, match="score"):
        tpv.cpvit.CascadeConfig(score="entropy")


@pytest.mark.slow
def test_the_extending_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["extend.py"])
    runpy.run_path("examples/extend.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "per image: True" in out and "-> [1, 1, 1" in out
