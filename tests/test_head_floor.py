"""No pruner leaves a head narrower than its floor: below it, the cells go as whole heads."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_and_eager, make_model

import tp_vit_plugins as tpv
from tp_vit_plugins.core.pruner import head_dim_floor
from tp_vit_plugins.hosts import host_for
from tp_vit_plugins.vtp.closing import select_closed


def _layout(model) -> list[tuple[int, int]]:
    h = host_for(model)
    return [h.head_layout(a) for _, a in h.attention_modules(model)]


def test_the_floor_rule():
    assert [head_dim_floor(d) for d in (128, 64, 32, 16, 8, 4)] == [32, 16, 8, 8, 8, 4]
    assert head_dim_floor(64, 1) == 1 and head_dim_floor(64, 24) == 24 and head_dim_floor(16, 24) == 16
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="min_head_dim"):
            head_dim_floor(64, bad)
    with pytest.raises(ValueError, match="min_head_dim"):
        tpv.ViTPruner(make_model(), torch.randn(1, 3, 32, 32), min_head_dim=0)


def test_head_dims_stop_at_the_floor_and_whole_heads_go_instead(x):
    model = make_model()  # 3 heads x 16 dims: floor 8
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.75, prune_mlp=False, prune_head_dims=True).step()
    # tp asked for 4 dims in each of 3 heads (12 cells); the floor keeps 8 dims in round(3 * 4 / 8) = 2 heads
    assert _layout(model) == [(2, 8), (2, 8)]
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    unfloored = make_model()
    tpv.ViTPruner(unfloored, x[:1], pruning_ratio=0.75, prune_mlp=False, prune_head_dims=True, min_head_dim=1).step()
    assert _layout(unfloored) == [(3, 4), (3, 4)]


def test_the_floor_leaves_a_wide_enough_ranking_alone(x):
    a, b = make_model(), make_model()
    tpv.ViTPruner(a, x[:1], pruning_ratio=0.25, prune_head_dims=True).step()
    tpv.ViTPruner(b, x[:1], pruning_ratio=0.25, prune_head_dims=True, min_head_dim=1).step()
    assert _layout(a) == _layout(b) == [(3, 12), (3, 12)]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_gohsp_plans_no_head_below_the_floor(x):
    model = make_model(depth=3)
    pruner = tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.2, structures=("heads", "head_dims"), graph_bias=0.0)
    assert all(16 - len(dims) >= 8 for dims in pruner.project(use_dual=False).head_dims)
    pruner.step()
    assert all(d >= 8 for _, d in _layout(model)) and any(h < 3 for h, _ in _layout(model))
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_vtp_closing_keeps_the_floor():
    dims = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.5, 0.6, 0.7, 0.8])]
    chosen = select_closed([None, None], dims, [1, 1], [1, 1], budget=8, min_dims=[3, 1])
    assert chosen.head_dims == [[0], [0, 1, 2]] and chosen.params == 4
    with pytest.raises(ValueError, match="one entry per block"):
        select_closed([None, None], dims, [1, 1], [1, 1], budget=8, min_dims=[3])
