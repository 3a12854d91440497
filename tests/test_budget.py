"""Budget search in MACs."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from conftest import make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.budget import fit_budget


@pytest.mark.parametrize("structure", ["width", "both"])
def test_budget_hits_a_macs_target_within_two_percent(structure):
    model = make_model("vit", depth=3, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    before = snapshot(model)
    res = fit_budget(model, x, target=0.6, structure=structure, prune_head_dims=True)
    assert state_equal(before, model.state_dict())  # the user's model is untouched
    assert abs(res.achieved - 0.6) / 0.6 <= 0.02
    assert res.achieved == pytest.approx(tpv.count_macs(res.model, x) / tpv.count_macs(model, x))
    assert 0 < res.ratio < 0.95 and res.evaluations <= 16


def test_budget_with_taylor_uses_the_gradients():
    model = make_model("vit", depth=3, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).mean().backward()
    res = fit_budget(model, x[:1], target=0.7, importance=tp.importance.GroupTaylorImportance(), structure="width")
    assert abs(res.achieved - 0.7) / 0.7 <= 0.02
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_budget_remaps_calibrated_head_scores_onto_copies():
    model = make_model("vit", depth=2, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    imp = tpv.GraphHeadImportance()
    imp.set_head_scores({model.blocks[0].attn.qkv: [1.0, 9.0, 9.0, 9.0], model.blocks[1].attn.qkv: [9.0, 9.0, 9.0, 2.0]})
    res = fit_budget(model, x, target=0.9, importance=imp, structure="heads", max_evaluations=1, max_ratio=0.25)
    v0 = model.blocks[0].attn.qkv.weight[96:]  # v rows of the dense model
    kept = res.model.blocks[0].attn.qkv.weight[2 * res.model.blocks[0].attn.attn_dim :]
    assert [b.attn.num_heads for b in res.model.blocks] == [3, 3]
    assert not any(torch.equal(v0[0], r) for r in kept)  # head 0 (score 1) went: the graph scores were used


def test_unreachable_budget_reports_the_closest():
    model = make_model("vit", depth=2, num_heads=3)
    x = torch.randn(1, 3, 32, 32)
    res = fit_budget(model, x, target=0.05, structure="heads")  # heads alone cannot reach 5 % of the MACs
    assert res.achieved > 0.05 and res.relative_error > 0.02 and res.evaluations == 1


def test_budget_errors():
    model = make_model()
    x = torch.randn(1, 3, 32, 32)
    for kwargs, msg in (
        (dict(target=0.0), "target"),
        (dict(target=0.5, structure="tokens"), "structure"),
        (dict(target=0.5, metric="flops"), "metric"),
    ):
        with pytest.raises(ValueError, match=msg):
            fit_budget(model, x, **kwargs)
