"""Budget search in MACs and in (faked and real) latency; CP-ViT keep-ratio fitting."""

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
    res = fit_budget(model, x, keep_ratio=0.6, structure=structure, prune_head_dims=True)
    assert state_equal(before, model.state_dict())  # the user's model is untouched
    assert abs(res.achieved - 0.6) / 0.6 <= 0.02
    assert res.achieved == pytest.approx(tpv.count_macs(res.model, x) / tpv.count_macs(model, x))
    assert 0 < res.ratio < 0.95 and res.evaluations <= 16


def test_budget_with_taylor_uses_the_gradients():
    model = make_model("vit", depth=3, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).mean().backward()
    res = fit_budget(model, x[:1], keep_ratio=0.7, importance=tp.importance.GroupTaylorImportance(), structure="width")
    assert abs(res.achieved - 0.7) / 0.7 <= 0.02
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_budget_remaps_calibrated_head_scores_onto_copies():
    model = make_model("vit", depth=2, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    imp = tpv.GraphHeadImportance()
    imp.set_head_scores({model.blocks[0].attn.qkv: [1.0, 9.0, 9.0, 9.0], model.blocks[1].attn.qkv: [9.0, 9.0, 9.0, 2.0]})
    res = fit_budget(model, x, keep_ratio=0.9, importance=imp, structure="heads", max_evaluations=1, max_ratio=0.25)
    v0 = model.blocks[0].attn.qkv.weight[96:]  # v rows of the dense model
    kept = res.model.blocks[0].attn.qkv.weight[2 * res.model.blocks[0].attn.attn_dim :]
    assert [b.attn.num_heads for b in res.model.blocks] == [3, 3]
    assert not any(torch.equal(v0[0], r) for r in kept)  # head 0 (score 1) went: the graph scores were used


def test_unreachable_budget_reports_the_closest():
    model = make_model("vit", depth=2, num_heads=3)
    x = torch.randn(1, 3, 32, 32)
    res = fit_budget(model, x, keep_ratio=0.05, structure="heads")  # heads alone cannot reach 5 % of the MACs
    assert res.achieved > 0.05 and res.relative_error > 0.02
    assert res.evaluations == 8  # the bound, then the 7-point scan for a ratio that reaches it


def test_budget_survives_a_cost_that_is_not_monotone_in_the_ratio():
    """tp can leave a group whole at large ratios; the bound then keeps more than smaller ratios do."""
    from tp_vit_plugins.budget import vit_prune_fn

    model = make_model("vit", depth=3, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    fn = vit_prune_fn(None, model, lambda r: 0.0, lambda r: r if r < 0.8 else 0.05, prune_head_dims=True)
    res = fit_budget(model, x, keep_ratio=0.6, prune_fn=fn)
    assert abs(res.achieved - 0.6) / 0.6 <= 0.02 and res.ratio < 0.8


def test_budget_errors():
    model = make_model()
    x = torch.randn(1, 3, 32, 32)
    for kwargs, msg in (
        (dict(keep_ratio=0.0), "keep_ratio"),
        (dict(keep_ratio=0.5, structure="tokens"), "structure"),
        (dict(keep_ratio=0.5, metric="flops"), "metric"),
        (dict(keep_ratio=0.5, max_ratio=1.0), "max_ratio"),
        (dict(keep_ratio=0.5, max_evaluations=0), "max_evaluations"),
        (dict(keep_ratio=0.5, metric="latency", latency_min_run_time=0), "latency_min_run_time"),
        (dict(keep_ratio=0.5, metric="latency", latency_rounds=0), "latency_rounds"),
    ):
        with pytest.raises(ValueError, match=msg):
            fit_budget(model, x, **kwargs)


def fake_latency(log: list):
    """A deterministic stand-in for measure_latency: 0.2 ms fixed overhead + 1 ms per 10 M MACs at the batch size."""

    def measure(model, example, batch_sizes, **kwargs):
        log.append(model)
        macs = tpv.count_macs(model, example[:1])
        return {b: 2e-4 + b * macs / 1e10 for b in batch_sizes}

    return measure


@pytest.mark.parametrize("structure", ["width", "both"])
def test_budget_hits_a_latency_target_with_the_dense_model_timed_alongside(monkeypatch, structure):
    from tp_vit_plugins import budget

    log: list = []
    monkeypatch.setattr(budget, "measure_latency", fake_latency(log))
    model = make_model("vit", depth=3, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    before = snapshot(model)
    res = fit_budget(model, x, keep_ratio=0.7, structure=structure, metric="latency", latency_batch_size=8, prune_head_dims=True)
    assert state_equal(before, model.state_dict())
    assert res.metric == "latency" and abs(res.achieved - 0.7) / 0.7 <= 0.02
    lat = fake_latency([])
    assert res.achieved == pytest.approx(lat(res.model, x, (8,))[8] / lat(model, x, (8,))[8])
    # the fixed overhead makes latency shrink slower than MACs: more MACs must go than latency
    assert res.macs_kept == pytest.approx(tpv.count_macs(res.model, x) / tpv.count_macs(model, x))
    assert res.macs_kept < res.achieved
    # dense re-timed in each of the 7 rounds per candidate, and once more for the reported value
    assert sum(m is model for m in log) == 7 * (res.evaluations + 1)
    assert len(log) == 2 * 7 * (res.evaluations + 1) and log[-2] is res.model
    assert [m is model for m in log[:4]] == [False, True, False, True]  # alternated


def test_budget_latency_with_the_real_timer_runs_and_reports():
    """No timing assertion: the real timer path builds, times and returns a pruned copy."""
    model = make_model("vit", depth=2, num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    res = fit_budget(
        model,
        x,
        keep_ratio=0.5,
        structure="width",
        metric="latency",
        latency_batch_size=2,
        latency_min_run_time=0.02,
        max_evaluations=2,
    )
    assert 1 <= res.evaluations <= 2 and res.achieved > 0 and 0 < res.macs_kept < 1
    assert tpv.utils.count_params(res.model) < tpv.utils.count_params(model)


def test_fit_keep_ratio_matches_the_cascade_macs():
    from tp_vit_plugins.cpvit import apply_cascade, fit_keep_ratio, remove_cascade

    model = make_model("vit", depth=4, img_size=64)
    x = torch.randn(1, 3, 64, 64)
    dense = tpv.count_macs(model, x)
    for target in (0.9, 0.7):
        keep = fit_keep_ratio(model, (3, 64, 64), target, start_block=0)
        apply_cascade(model, keep_ratio=keep, start_block=0, beta=0.0)
        kept = tpv.count_macs(model, x) / dense
        remove_cascade(model)
        assert kept <= target and target - kept < 0.05  # tokens are discrete: 64 patches here
    assert fit_keep_ratio(model, (3, 64, 64), 1.0) == 1.0
    assert fit_keep_ratio(model, (3, 64, 64), 0.01) == pytest.approx(1e-3)  # unreachable: the smallest keep
    with pytest.raises(ValueError, match="macs_keep_ratio"):
        fit_keep_ratio(model, (3, 64, 64), 0.0)
    # one options dict serves apply_cascade and fit_keep_ratio: token-choice options do not move the MACs
    neutral = dict(score="cls", seed=3, weighted_pool=False, score_at="prune", mode="drop")
    assert fit_keep_ratio(model, (3, 64, 64), 0.7, **neutral) == fit_keep_ratio(model, (3, 64, 64), 0.7)
    with pytest.raises(ValueError, match="mask"):
        fit_keep_ratio(model, (3, 64, 64), 0.7, mode="mask")
    with pytest.raises(TypeError):
        fit_keep_ratio(model, (3, 64, 64), 0.7, keep_tokens=3)  # unknown options are not swallowed


def test_fit_budget_keep_ratio_counts_what_is_kept():
    model = make_model(num_heads=4)
    x = torch.randn(1, 3, 32, 32)
    new = fit_budget(model, x, keep_ratio=0.8, structure="width")
    assert new.achieved <= 0.8 + 0.01 * 0.8 and new.target == 0.8
    with pytest.raises(TypeError, match="keep_ratio"):
        fit_budget(model, x)
