"""GOHSP and VTP driven exactly like tp's sparse-training pruners: construct, regularize, update_regularizer, step.

Nothing beyond tp's calls: the pruners estimate the Fisher norm, the dual-update cadence and the
closing rounds from the training steps they see (the steps before the first
``update_regularizer()`` are the epoch length).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import count_params


def _tp_loop(model, pruner, x, y, epochs: int, steps_per_epoch: int, lr: float = 1e-3, on_step=None) -> None:
    """tp's loop: ``regularize`` after backward, ``update_regularizer`` after every epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            pruner.regularize(model)
            opt.step()
            if on_step is not None:
                on_step()
        pruner.update_regularizer()


@pytest.fixture
def xy(x):
    torch.manual_seed(0)
    return x, torch.arange(x.shape[0]) % 10


def test_gohsp_fisher_warmup_then_dual_updates_at_doubling_gaps_then_half_epochs(xy):
    x, y = xy
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.25, fisher_warmup=3)
    z0 = {p: z.clone() for p, z in pruner.Z.items()}
    seen = []

    def record():
        seen.append((pruner.steps_done, pruner.rounds, pruner._fisher_count))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "calibrate_fisher first" warning: the warm-up is the calibration
        _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=20, on_step=record)
    # Fisher counted from the first step; no dual update before 2 * warm-up = 6 steps, then gaps 6, 12 (6, 18),
    # the epoch end (20) a third
    assert [s[2] for s in seen[:3]] == [1, 2, 3]
    rounds = [r for _, r, _ in seen]
    assert rounds[4] == 0 and rounds[5] == 1 and rounds[16] == 1 and rounds[17] == 2 and rounds[19] == 2
    assert pruner.rounds == 3 and pruner.epoch_steps == 20
    assert [h["step"] for h in pruner.history] == [6, 18, 20]
    assert any(not torch.equal(z0[p], z) for p, z in pruner.Z.items())  # Z re-projected under the Fisher norm
    # after the first epoch: every L // 2 = 10 steps, and the epoch-end call after an automatic update is skipped
    _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=20)
    assert [h["step"] for h in pruner.history][3:] == [30, 40]
    pruner.update_regularizer()  # no step since the last dual update: nothing changes
    assert pruner.rounds == 5


def test_gohsp_warmup_does_not_pull_and_reprojects_z_from_the_training_fisher(xy):
    x, y = xy
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.25, fisher_warmup=2, proximal=0.5)
    w = {p: p.detach().clone() for p in pruner.Z}
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    pruner.regularize(model)  # a warm-up step: W untouched (the optimizer is the only thing that moves it)
    assert all(torch.equal(w[p], p.detach()) for p in pruner.Z)
    pruner.regularize(model)  # the warm-up ends: Z = the Fisher projection of W
    assert pruner._fisher_count == 2 and pruner.rounds == 0
    z = {p: t.clone() for p, t in pruner.Z.items()}
    pruner._set_z(pruner.project(use_dual=False), use_dual=False)  # W and F unchanged: the same Z again
    assert all(torch.equal(z[p], t) for p, t in pruner.Z.items())
    pruner.regularize(model)  # now the proximal pull moves W
    assert any(not torch.equal(w[p], p.detach()) for p in pruner.Z)


def test_gohsp_calibrated_or_with_an_interval_keeps_the_old_cadence(xy):
    x, y = xy
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.25, admm_interval=4)
    _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=9)
    assert [h["step"] for h in pruner.history] == [4, 8, 9]  # every 4 steps, plus the epoch-end call
    data = DataLoader(TensorDataset(x, y), batch_size=4)
    calibrated = tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x[:1], None, pruning_ratio=0.25)
    calibrated.calibrate_fisher(data, progress=False)
    assert calibrated._warmup_left == 0


def test_vtp_closes_in_tp_loop_without_sparse_steps_and_step_reaches_the_budget(xy):
    x, y = xy
    torch.manual_seed(0)
    model = make_model("vit")
    total = count_params(model)
    pruner = tpv.VTPPruner(model, x[:1], close_params=0.3)
    assert pruner.closing and pruner.gate_lr == 0.0
    _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=6)  # round 1 of 4 at the first epoch end
    assert pruner.epoch_steps == 6 and 0 < pruner.closed_share < 0.3
    first = pruner.closed_share
    assert pruner._close_plan == [(9, 1 - 0.5**3), (12, 1 - 0.25**3), (15, 1.0)]  # every L // 2 = 3 steps
    _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=3)  # round 2
    assert first < pruner.closed_share < 0.3 and len(pruner._close_plan) == 2
    assert pruner.gate_zero_share() > 0
    pruner.step()  # the rest of the budget closes at the prune
    assert count_params(model) <= total * 0.7 + 1e3
    assert count_params(model) >= total * 0.7 - 0.05 * total


def test_vtp_tp_loop_zeroes_gates_and_matches_the_sparse_steps_schedule_when_the_phase_is_long(xy):
    """At least 20 % of the gates exactly 0 by the end of the sparse phase, from tp's calls alone."""
    x, y = xy
    torch.manual_seed(0)
    model = make_model("vit")
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.4)
    _tp_loop(model, pruner, x, y, epochs=3, steps_per_epoch=4)
    assert not pruner._close_plan and pruner.gate_zero_share() >= 0.2
    twin = make_model("vit")
    recipe = tpv.VTPPruner(twin, x[:1], pruning_ratio=0.4, sparse_steps=12)
    _tp_loop(twin, recipe, x, y, epochs=3, steps_per_epoch=4)
    assert pruner.gate_zero_share() == pytest.approx(recipe.gate_zero_share())  # the same budget closed either way


def test_vtp_paper_preset_paces_its_l1_step_by_the_epoch_and_zeroes_gates_in_tp_loop(xy):
    """The paper's plain sparse training from tp's calls: after the first epoch the L1 step follows its length."""
    x, y = xy
    torch.manual_seed(0)
    model = make_model("vit")
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.4, config="paper")
    assert not pruner.closing and pruner.gate_lr == 1e-2
    _tp_loop(model, pruner, x, y, epochs=1, steps_per_epoch=8)
    assert pruner.gate_lr == pytest.approx(1.0 / (0.5 * 2 * 8))  # shrink / (reg * 2 L)
    _tp_loop(model, pruner, x, y, epochs=2, steps_per_epoch=8)
    gates = torch.cat([g.detach().flatten() for g in pruner.gate_parameters()])
    assert 0.05 <= pruner.gate_zero_share() < 1.0 and ((gates > 0) & (gates != 1)).any()  # learned, some exactly 0
    fixed = tpv.VTPPruner(make_model("vit"), x[:1], pruning_ratio=0.4, config="paper", gate_lr=0.02)
    fixed.update_regularizer()  # nothing seen yet: nothing paced
    fixed.steps_done = 5
    fixed.update_regularizer()
    assert fixed.gate_lr == 0.02  # a given gate_lr is kept


# ------------------------------------------------------------------------ end to end, real digits
@pytest.mark.slow
def test_tp_loop_defaults_reach_the_documented_recipe_on_real_digits():
    """GOHSP / VTP built from model, example, importance, ratio and driven by tp's calls alone reach the recipe.

    ``benchmarks/tp_loop.py``'s protocol, one seed: 3 sparse + 3 fine-tune epochs at -40 %.
    """
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    from tp_loop import run

    rows = run(seed=0)
    for method in ("GOHSP", "VTP"):
        (acc_tp, kept_tp, _), (acc_recipe, kept_recipe, _) = rows[f"{method} tp loop"], rows[f"{method} recipe"]
        assert kept_tp == pytest.approx(kept_recipe, abs=0.01)  # the same budget
        assert acc_tp >= acc_recipe - 0.02, rows  # within 2 points of the recipe, from tp's calls alone
    assert rows["GOHSP tp loop"][1] == pytest.approx(0.6, abs=0.01)
    assert rows["VTP tp loop"][2] >= 0.2  # gates exactly zero at the end of the sparse phase
