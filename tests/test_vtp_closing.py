"""VTP gate closing: the schedule, the budgeted selection, closed gates held at 0, exact removal, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import count_params
from tp_vit_plugins.hosts.timm.structure import block_layers, unit_param_costs
from tp_vit_plugins.vtp.closing import closing_schedule, select_closed
from tp_vit_plugins.vtp.gates import GATE_NAME


def test_closing_schedule_closed_form():
    # round k after ceil(k / 4 * 0.5 * 10) steps, cubic share 1 - (1 - k / 4)^3
    assert closing_schedule(10, 4, 0.5) == [(2, 1 - 0.75**3), (3, 1 - 0.5**3), (4, 1 - 0.25**3), (5, 1.0)]
    assert closing_schedule(3, 1, 1.0) == [(3, 1.0)]
    assert closing_schedule(8, 2, 0.75, start=0.25) == [(4, 0.875), (6, 1.0)]  # (0.25 + k / 2 * 0.5) * 8
    assert closing_schedule(1, 3, 0.5)[0][0] == 1  # never before the first step
    for bad in ((0, 4, 0.5), (10, 0, 0.5), (10, 4, 0.0), (10, 4, 1.5), (10, 4, 0.5, 0.5)):
        with pytest.raises(ValueError):
            closing_schedule(*bad)


def test_select_closed_takes_lowest_scores_up_to_the_budget_and_leaves_one_of_each():
    neurons = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.05, 0.6])]
    dims = [torch.tensor([0.2, 0.3]), None]
    costs_n, costs_d = [10, 10], [25, 25]
    # ascending: (0.05, b1 n0) 10, (0.1, b0 n1) 10, (0.2, b0 d0) 25 -> 45 >= 40: stop
    out = select_closed(neurons, dims, costs_n, costs_d, budget=40)
    assert out.neurons == [[1], [0]] and out.head_dims == [[0], []] and out.params == 45
    # a large budget: every block keeps one neuron and one in-head index
    out = select_closed(neurons, dims, costs_n, costs_d, budget=1e9)
    assert out.neurons == [[0, 1], [0]] and out.head_dims == [[0], []] and out.params == 3 * 10 + 25
    assert select_closed(neurons, dims, costs_n, costs_d, budget=0).params == 0
    with pytest.raises(ValueError):
        select_closed(neurons, dims[:1], costs_n, costs_d, budget=1)


def _train(model, pruner, x, y, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.regularize(model, loss)
        opt.step()


def test_closed_gates_stay_exactly_zero_and_reach_the_budget(x):
    model = make_model("vit")
    y = torch.arange(x.shape[0]) % 10
    total = count_params(model)
    pruner = tpv.VTPPruner(model, x[:1], sparse_steps=8, close_params=0.3, close_rounds=2)
    assert not pruner.fold_values and pruner.threshold == 0.0  # a parameter budget: remove the zero gates
    _train(model, pruner, x, y, 2)  # round 1 after step 2: 1 - 0.5^3 = 87.5 % of the budget
    cell, neuron = unit_param_costs(block_layers(model)[0])
    largest = max(neuron, cell * 3)
    assert 0.875 * 0.3 * total <= pruner.closed_params < 0.875 * 0.3 * total + largest
    first = {lin: mask.clone() for lin, mask in pruner.gates.closed.items()}
    _train(model, pruner, x, y, 6)  # round 2 after step 4, then steps that must not reopen a gate
    assert 0.3 * total <= pruner.closed_params < 0.3 * total + largest
    for lin, mask in pruner.gates.closed.items():
        assert bool(mask[first.get(lin, torch.zeros_like(mask))].all())  # closed units stay closed
        assert bool((getattr(lin, GATE_NAME)[mask] == 0).all()) and bool((getattr(lin, GATE_NAME)[~mask] != 0).any())
    for b in block_layers(model):
        if b.proj in pruner.gates.closed:  # an in-head index closes in every head
            rows = pruner.gates.closed[b.proj].view(b.attn.num_heads, -1)
            assert all(torch.equal(rows[0], r) for r in rows)


def test_removing_closed_mlp_dims_is_exact_and_removes_their_parameters(x):
    model = make_model("vit")
    y = torch.arange(x.shape[0]) % 10
    total = count_params(model)
    # reg 0: the L1 step zeroes nothing, so the zero gates are exactly the closed ones
    pruner = tpv.VTPPruner(model, x[:1], sparse_steps=4, reg=0.0, gate_lr=1e-3, close_params=0.2, close_rounds=2,
                           prune_head_dims=False, fold_values=True)  # fmt: skip
    _train(model, pruner, x, y, 4)
    model.eval()
    with torch.no_grad():
        gated = model(x)
    closed = pruner.closed_params
    pruner.step()
    assert total - count_params(model) == closed
    with torch.no_grad():
        torch.testing.assert_close(model(x), gated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(close_params=0.3, sparse_steps=4, prune_embed_dim=True), "prune_embed_dim=False"),
        (dict(close_params=1.2, sparse_steps=4), "close_params"),
        (dict(close_params=0.3, sparse_steps=4, close_rounds=0), "rounds"),
        (dict(close_params=0.3, sparse_steps=4, gated_layers=("fc2",)), "proj"),
    ],
)
def test_bad_closing_settings_are_refused_before_anything_changes(x, kwargs, match):
    model = make_model("vit")
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        tpv.VTPPruner(model, x[:1], **kwargs)
    assert state_equal(before, snapshot(model)) and not any(hasattr(m, GATE_NAME) for m in model.modules())


def test_closing_refuses_rotary_models_and_leaves_them_as_they_were(x):
    model = make_model("eva02")
    twin = copy.deepcopy(model)
    with pytest.raises(ValueError, match="rotary"):
        tpv.VTPPruner(model, x[:1], sparse_steps=4, close_params=0.3, prune_mlp=False)
    assert state_equal(snapshot(twin), snapshot(model)) and type(model.blocks[0].attn) is type(twin.blocks[0].attn)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_default_closing_follows_pruning_ratio_and_step_removes_exactly_the_closed_dims(x):
    model = make_model("vit")
    y = torch.arange(x.shape[0]) % 10
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.25, sparse_steps=4, reg=0.0, gate_lr=1e-3, prune_head_dims=False,
                           fold_values=True)  # fmt: skip
    assert pruner.closing and pruner.threshold is None  # on by default with sparse_steps
    _train(model, pruner, x, y, 4)
    units = sum(b.mlp.fc2.in_features for b in model.blocks)
    zero = sum(int((getattr(b.mlp.fc2, GATE_NAME) == 0).sum()) for b in model.blocks)
    assert zero == units - int(units * 0.75)  # tp's count for ratio 0.25
    model.eval()
    with torch.no_grad():
        gated = model(x)
    pruner.step()
    assert sum(b.mlp.fc2.in_features for b in model.blocks) == units - zero
    with torch.no_grad():
        torch.testing.assert_close(model(x), gated, atol=1e-5, rtol=1e-5)


def test_closing_refuses_what_it_cannot_close_instead_of_becoming_plain_l1_training(x):
    without_steps = tpv.VTPPruner(make_model("vit"), x[:1], pruning_ratio=0.25)  # tp's loop: closes all the same
    embed = tpv.VTPPruner(make_model("vit"), x[:1], pruning_ratio=0.25, sparse_steps=4, prune_embed_dim=True, close=False)
    off = tpv.VTPPruner(make_model("vit"), x[:1], pruning_ratio=0.25, sparse_steps=4, close=False)
    assert without_steps.closing and not (embed.closing or off.closing)
    assert not (without_steps.fold_values or off.fold_values or embed.fold_values)  # the zoo-chosen default
    model = make_model("vit")
    before = snapshot(model)
    for close in (None, True):  # the default refuses in one line too: never a silent switch to another method
        with pytest.raises(ValueError, match="prune_embed_dim=False"):
            tpv.VTPPruner(model, x[:1], pruning_ratio=0.25, sparse_steps=4, prune_embed_dim=True, close=close)
        with pytest.raises(ValueError, match="head_pruning_ratio=0"):
            tpv.VTPPruner(model, x[:1], pruning_ratio=0.25, head_pruning_ratio=0.5, close=close)
    with pytest.raises(ValueError, match="contradicts"):
        tpv.VTPPruner(model, x[:1], sparse_steps=4, close=False, close_params=0.2)
    assert state_equal(before, snapshot(model))


def test_closing_holds_the_other_gates_at_one_so_the_default_prune_is_exact(x):
    model = make_model("vit")
    y = torch.arange(x.shape[0]) % 10
    pruner = tpv.VTPPruner(model, x[:1], sparse_steps=4, close_params=0.2, close_rounds=2, prune_head_dims=False)
    assert pruner.closing and pruner.gate_lr == 0.0 and not pruner.fold_values  # gates: probes and masks
    _train(model, pruner, x, y, 4)
    for lin, mask in pruner.gates.closed.items():
        g = getattr(lin, GATE_NAME)
        assert bool((g[mask] == 0).all()) and bool((g[~mask] == 1).all())
    assert pruner._saliency_steps == 4  # the gates still measured |g * dL/dg| every step
    model.eval()
    with torch.no_grad():
        gated = model(x)
    pruner.step()  # unfolded gates: kept dims return to 1, which they never left
    with torch.no_grad():
        torch.testing.assert_close(model(x), gated, atol=1e-5, rtol=1e-5)
    # an explicit gate_lr trains the gates while closing (the zoo's "vtp-trained-gates")
    trained = tpv.VTPPruner(make_model("vit"), x[:1], sparse_steps=4, close_params=0.2, gate_lr=0.1)
    assert trained.closing and trained.gate_lr == 0.1
    assert tpv.VTPPruner(make_model("vit"), x[:1], sparse_steps=4, close=False).gate_lr == pytest.approx(1 / (0.5 * 4))
