"""VTP: gates, the proximal L1 step, gate importance, folding, threshold selection and the VTPPruner."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import fc1_of, hidden, make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import finetune
from tp_vit_plugins.vtp.gates import GATE_NAME, OUT_GATE_NAME, GateSet, soft_threshold


def hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def randomise_gates(pruner, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pruner.gate_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.05)


def test_gates_at_one_are_exact_identity(family, x):
    model = make_model(family)
    with torch.no_grad():
        ref = model(x)
    pruner = tpv.VTPPruner(model, x, pruning_ratio=0.3)
    assert len(pruner.gate_parameters()) == 2 * 2  # fc2 (MLP dims) and proj (head dims) inputs per block
    assert all(any(p is q for q in model.parameters()) for p in pruner.gate_parameters())  # any optimizer sees them
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_positional_arguments_follow_tp_model_example_importance_ratio(x):
    a = tpv.VTPPruner(make_model(), x, tpv.GateImportance(), 0.3)
    b = tpv.VTPPruner(make_model(), x, pruning_ratio=0.3)
    assert isinstance(a.importance, tpv.GateImportance) and a.pruning_ratio == b.pruning_ratio == 0.3


def test_folding_preserves_kept_dims_exactly(family, x):
    """Pruned model == gated dense model with the pruned gates set to 0 (MLP dims)."""
    model = make_model(family)
    pruner = tpv.VTPPruner(model, x, pruning_ratio=0.25, prune_head_dims=False, prune_embed_dim=False, global_pruning=False,
                           fold_values=True)  # fmt: skip
    randomise_gates(pruner)
    gated = copy.deepcopy(model)
    pruner.step()
    assert all(hidden(b) == 144 for b in model.blocks)
    with torch.no_grad():
        for b_dense, b_pruned in zip(gated.blocks, model.blocks):
            gate = getattr(b_dense.mlp.fc2, GATE_NAME)
            assert not hasattr(fc1_of(b_dense), GATE_NAME)  # only the dims that may go are gated
            folded_fc1 = fc1_of(b_dense).weight
            kept = set()
            for row in fc1_of(b_pruned).weight:
                kept |= {i for i in range(192) if torch.equal(folded_fc1[i], row)}
            assert len(kept) == 144
            dropped = sorted(set(range(192)) - kept)
            assert gate[dropped].max() <= gate[sorted(kept)].min()  # the smallest gates went
            gate[dropped] = 0
        torch.testing.assert_close(model(x), gated(x), atol=1e-5, rtol=1e-5)


def test_soft_threshold_closed_form():
    g = torch.tensor([0.5, -0.2, 0.0, 0.05, -0.05])
    assert soft_threshold(g, 0.1).tolist() == pytest.approx([0.4, -0.1, 0.0, 0.0, 0.0])


def test_proximal_step_closed_form_and_model_optimizer_skips_gates(x):
    model = make_model()
    pruner = tpv.VTPPruner(model, x, reg=0.5, gate_lr=0.2)
    gates = pruner.gate_parameters()
    with torch.no_grad():
        gates[0][:3] = torch.tensor([0.5, -0.2, 0.04])
    before = [g.detach().clone() for g in gates]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.zero_grad()
    model(x).square().mean().backward()
    grads = [g.grad.clone() for g in gates]
    scale = sum(float(gr.abs().sum()) for gr in grads) / sum(gr.numel() for gr in grads)  # first EMA value
    pruner.regularize(model)
    assert all(g.grad is None for g in gates)
    after = [g.detach().clone() for g in gates]
    opt.step()  # AdamW (with weight decay) must not move the gates
    for b, gr, a, g in zip(before, grads, after, gates):
        torch.testing.assert_close(a, soft_threshold(b - 0.2 * gr / scale, 0.2 * 0.5), rtol=1e-5, atol=1e-6)
        assert torch.equal(g.detach(), a)


def _gated_step_inputs(x, grad_scale: str):
    """A paper-style pruner (every input gated, ``gate_lr=0.2``, ``reg=0.5``) after one backward: model, pruner, gates, grads."""
    model = make_model()
    pruner = tpv.VTPPruner(model, x, reg=0.5, gate_lr=0.2, close=False, prune_inputs=True, grad_scale=grad_scale)
    before = {pair: getattr(*pair).detach().clone() for pair in pruner.gates.pairs()}
    model(x).square().mean().backward()
    grads = {pair: getattr(*pair).grad.clone() for pair in before}
    return model, pruner, before, grads


def test_position_grad_scale_measures_each_gate_position_against_its_own_mean_gradient(x):
    model, pruner, before, grads = _gated_step_inputs(x, "position")
    gated = list(before)
    positions = {
        "qkv": [b.attn.qkv for b in model.blocks], "proj": [b.attn.proj for b in model.blocks],
        "fc1": [b.mlp.fc1 for b in model.blocks], "fc2": [b.mlp.fc2 for b in model.blocks],
    }  # fmt: skip
    scale = {}
    for layers in positions.values():
        gs = [grads[(lin, GATE_NAME)] for lin in layers]
        mean = float(torch.cat(gs).abs().mean())  # the first EMA value of this position
        scale.update({(lin, GATE_NAME): mean for lin in layers})
    assert len(set(scale.values())) == 4 and set(scale) == set(gated)  # four positions, four scales
    pruner.regularize(model)
    for pair in gated:
        want = soft_threshold(before[pair] - 0.2 * grads[pair] / scale[pair], 0.2 * 0.5)
        torch.testing.assert_close(getattr(*pair).detach(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grad_scale must be one of"):
        tpv.vtp.VTPConfig(grad_scale="layer")


def test_gate_grad_scale_divides_each_gate_by_its_own_rms_gradient(x):
    model = make_model()
    pruner = tpv.VTPPruner(model, x, reg=0.5, gate_lr=0.2, close=False, prune_inputs=True, grad_scale="gate")
    gated = pruner.gates.pairs()
    d = pruner.grad_ema_decay
    sq = {pair: torch.zeros_like(getattr(*pair)) for pair in gated}
    for step in range(1, 3):  # the second step checks the bias-corrected EMA of the squares
        before = {pair: getattr(*pair).detach().clone() for pair in gated}
        model(x * step).square().mean().backward()
        grads = {pair: getattr(*pair).grad.clone() for pair in gated}
        pruner.regularize(model)
        for pair in gated:
            sq[pair] = d * sq[pair] + (1 - d) * grads[pair].square()
            rms = (sq[pair] / (1 - d**step)).sqrt()
            want = soft_threshold(before[pair] - 0.2 * grads[pair] / rms, 0.2 * 0.5)
            torch.testing.assert_close(getattr(*pair).detach(), want, rtol=1e-5, atol=1e-6)
            if step == 1:  # one step: each gate moves by exactly gate_lr against its gradient's sign
                torch.testing.assert_close(want, soft_threshold(before[pair] - 0.2 * grads[pair].sign(), 0.1))
        model.zero_grad(set_to_none=True)


def test_capped_grad_scale_is_the_position_mean_raised_to_each_gates_rms(x):
    model, pruner, before, grads = _gated_step_inputs(x, "capped")
    pruner.regularize(model)
    capped = 0
    for lin_name in ("qkv", "proj", "fc1", "fc2"):
        layers = [getattr(b.attn if lin_name in ("qkv", "proj") else b.mlp, lin_name) for b in model.blocks]
        mean = float(torch.cat([grads[(lin, GATE_NAME)] for lin in layers]).abs().mean())  # the position's scale
        for lin in layers:
            gr = grads[(lin, GATE_NAME)]
            scale = gr.abs().clamp_min(mean)  # after one step a gate's RMS gradient is |dL/dg|
            want = soft_threshold(before[(lin, GATE_NAME)] - 0.2 * gr / scale, 0.1)
            torch.testing.assert_close(getattr(lin, GATE_NAME).detach(), want, rtol=1e-5, atol=1e-6)
            moved = (getattr(lin, GATE_NAME).detach() - before[(lin, GATE_NAME)]).abs()
            assert bool((moved <= 0.2 + 0.1 + 1e-6).all())  # no gate moves more than gate_lr (+ the L1 step)
            capped += int((gr.abs() > mean).sum())
    assert capped > 0  # some gates' gradients exceed their position's mean: the cap is exercised


def test_short_run_drives_dead_units_gates_to_exactly_zero(tmp_path):
    """Hidden units with no input get no gate gradient: the L1 step alone moves them, 1 -> 0 in 4 steps."""
    torch.manual_seed(0)
    model = make_model()
    dead = list(range(0, 192, 4))  # a known 25 % of every block's MLP hidden units
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.fc1.weight[dead] = 0
            b.mlp.fc1.bias[dead] = 0  # GELU(0) = 0: fc2 sees exact zeros there
            b.mlp.fc1.requires_grad_(False)  # ... for the whole run (AdamW would revive them)
    xs, ys = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=8)
    pruner = tpv.VTPPruner(model, xs[:1], prune_head_dims=False, prune_embed_dim=False, reg=1.0, gate_lr=0.3)
    finetune(model, loader, epochs=1, lr=1e-3, warmup_epochs=0.0, progress=False, step_hook=pruner.regularize)
    assert pruner.steps_done == 4
    for b in model.blocks:
        g = getattr(b.mlp.fc2, GATE_NAME).detach()
        assert torch.equal(g[dead], torch.zeros(len(dead)))  # max(1 - 4 * 0.3, 0) = 0, exactly
        alive = g[[i for i in range(192) if i not in dead]]
        assert bool((alive != 0).any())
    assert pruner.gate_zero_share() >= 0.25
    png = pruner.save_gate_histogram(str(tmp_path / "gates.png"))
    assert (tmp_path / "gates.png").stat().st_size > 1000 and png.endswith("gates.png")
    without = tpv.VTPPruner(make_model(), xs[:1], prune_head_dims=False, prune_embed_dim=False, reg=0.0, gate_lr=0.3)
    assert without.gate_zero_share() == 0.0


def test_taylor_score_is_mean_gate_times_gradient_and_zero_for_zeroed_gates(x):
    """``score="taylor"``: mean over steps of |g * dL/dg| (raw gradient), times 0 where the gate ended at 0."""
    torch.manual_seed(0)
    model = make_model()
    pruner = tpv.VTPPruner(model, x, score="taylor", reg=0.5, gate_lr=0.05, prune_head_dims=False, close=False)
    gates = pruner.gate_parameters()
    expected = [torch.zeros_like(g) for g in gates]
    for step in range(2):
        model.zero_grad(set_to_none=True)
        model(x * (step + 1)).square().mean().backward()
        for e, g in zip(expected, gates):
            e += (g.detach() * g.grad).abs() / 2
        pruner.regularize(model)
    with torch.no_grad():
        gates[0][:5] = 0  # as if the L1 step had zeroed them: the threshold rule removes them first
    ins, _ = pruner.gate_scores()
    final = [g.detach() for g in gates]
    assert list(ins) == [b.mlp.fc2 for b in model.blocks]
    for score, e, g in zip(ins.values(), expected, final):
        torch.testing.assert_close(score, e * (g != 0), rtol=1e-5, atol=1e-9)
    assert torch.equal(ins[model.blocks[0].mlp.fc2][:5], torch.zeros(5)) and bool((expected[0][:5] > 0).all())
    assert bool((ins[model.blocks[0].mlp.fc2][5:] > 0).all())
    magnitude = tpv.VTPPruner(make_model(), x, prune_head_dims=False)
    assert torch.equal(magnitude.gate_scores()[0][magnitude.model.blocks[0].mlp.fc2], torch.ones(192))
    with pytest.raises(ValueError, match="score"):
        tpv.VTPPruner(make_model(), x, score="hessian")


def test_gate_lr_from_sparse_steps(x):
    pruner = tpv.VTPPruner(make_model(), x, reg=0.5, shrink=2.0, sparse_steps=40, close=False)
    assert pruner.gate_lr == pytest.approx(2.0 / (0.5 * 40))
    assert tpv.VTPPruner(make_model(), x, reg=0.5, shrink=2.0, sparse_steps=40).gate_lr == 0.0  # closing: gates held


def test_threshold_selection_removes_exactly_the_zeroed_gates(x):
    model = make_model()
    pruner = tpv.VTPPruner(model, x, threshold=0.0, prune_head_dims=False, prune_embed_dim=False, fold_values=True)
    zeros = [list(range(0, 30)), list(range(100, 110))]  # 30 and 10 zero gates
    with torch.no_grad():
        for b, z in zip(model.blocks, zeros):
            gate = getattr(b.mlp.fc2, GATE_NAME)
            gate.uniform_(0.2, 1.0)
            gate[z] = 0
    gated = copy.deepcopy(model)
    pruner.step()
    assert [b.mlp.fc1.out_features for b in model.blocks] == [162, 182]
    with torch.no_grad():
        torch.testing.assert_close(model(x), gated(x), atol=1e-5, rtol=1e-5)  # zero gates: removal is exact
    with pytest.raises(ValueError, match="threshold"):
        tpv.VTPPruner(make_model(), x, threshold=0.0, global_pruning=False)


def test_qkv_output_gates_fold_exactly_and_score_q_k_v_together(x):
    model = make_model()
    pruner = tpv.VTPPruner(model, x, gated_layers=("qkv_out",), prune_mlp=False, prune_embed_dim=False)
    qkv = model.blocks[0].attn.qkv
    assert hasattr(qkv, OUT_GATE_NAME) and not hasattr(model.blocks[0].attn.proj, GATE_NAME)
    randomise_gates(pruner, seed=3)
    with torch.no_grad():
        ref = model(x)
        g = getattr(qkv, OUT_GATE_NAME).detach().clone()
    group = pruner.DG.get_pruning_group(model.blocks[0].attn.proj, tp.prune_linear_in_channels, list(range(48)))
    torch.testing.assert_close(pruner.importance(group), g.view(3, 48).mean(0))  # mean of the q, k, v gates
    pruner.remove_gates(fold=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_gate_removal_leaves_no_trace(x):
    model = make_model("layerscale")
    keys, n_hooks = set(model.state_dict()), hooks(model)
    pruner = tpv.VTPPruner(model, x)
    assert any(GATE_NAME in k for k in model.state_dict())
    pruner.remove_gates()
    assert set(model.state_dict()) == keys and hooks(model) == n_hooks


def test_step_leaves_no_trace_and_round_trips(tmp_path, x):
    model = make_model("qk_norm")
    pruner = tpv.VTPPruner(model, x, pruning_ratio=0.3)
    randomise_gates(pruner, seed=1)
    pruner.step()
    assert not any(GATE_NAME in k for k in model.state_dict()) and hooks(model) == 0
    assert model.patch_embed.proj.out_channels < 48 or any(b.mlp.fc1.out_features < 192 for b in model.blocks)
    tpv.save_pruned(model, tmp_path / "vtp")
    loaded = tpv.load_pruned(tmp_path / "vtp")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_gate_importance_scores_groups(x):
    model = make_model()
    imp = tpv.GateImportance()
    imp.set_gates(
        {
            model.blocks[0].mlp.fc2: torch.linspace(-1, 1, 192),
            model.blocks[0].attn.qkv: torch.full((48,), 2.0),
            model.blocks[1].attn.qkv: torch.full((48,), 4.0),
        }
    )
    DG = tp.DependencyGraph().build_dependency(
        model, x, unwrapped_parameters=tpv.vit_pruning_kwargs(model)["unwrapped_parameters"]
    )
    mlp = DG.get_pruning_group(model.blocks[0].mlp.fc1, tp.prune_linear_out_channels, list(range(192)))
    torch.testing.assert_close(imp(mlp), torch.linspace(-1, 1, 192).abs())
    embed = DG.get_pruning_group(model.patch_embed.proj, tp.prune_conv_out_channels, list(range(48)))
    torch.testing.assert_close(imp(embed), torch.full((48,), 3.0))  # mean of the two qkv gates
    subset = DG.get_pruning_group(model.blocks[0].mlp.fc1, tp.prune_linear_out_channels, [0, 191])
    torch.testing.assert_close(imp(subset), torch.tensor([1.0, 1.0]))
    attn = DG.get_pruning_group(model.blocks[0].attn.proj, tp.prune_linear_in_channels, list(range(48)))
    assert imp(attn) is None  # no gate on proj here


def test_gate_importance_reads_live_gates(x):
    model = make_model()
    gates = GateSet([model.blocks[0].mlp.fc2])
    with torch.no_grad():
        getattr(model.blocks[0].mlp.fc2, GATE_NAME).copy_(torch.linspace(-2, 2, 192))
    DG = tp.DependencyGraph().build_dependency(
        model, x, unwrapped_parameters=tpv.vit_pruning_kwargs(model)["unwrapped_parameters"]
    )
    mlp = DG.get_pruning_group(model.blocks[0].mlp.fc1, tp.prune_linear_out_channels, list(range(192)))
    torch.testing.assert_close(tpv.GateImportance(p=2)(mlp), torch.linspace(-2, 2, 192).pow(2))
    gates.remove(fold=False)
    with pytest.raises(tpv.vtp.NoGateError, match="no VTP gate"):
        tpv.GateImportance()(mlp)
    assert tpv.GateImportance(skip_ungated=True)(mlp) is None


def test_stock_tp_pruner_with_gate_importance_but_no_gates_raises(x):
    model = make_model()
    before = snapshot(model)
    pruner = tp.pruner.BasePruner(model, x, importance=tpv.GateImportance(), pruning_ratio=0.3,
                                  **tpv.vit_pruning_kwargs(model))  # fmt: skip
    with pytest.raises(tpv.vtp.NoGateError):
        pruner.step()
    assert state_equal(before, model.state_dict())


def test_vtp_errors_leave_model_untouched(x):
    model = make_model()
    before, n_hooks = snapshot(model), hooks(model)
    with pytest.raises(ValueError, match="reg"):
        tpv.VTPPruner(model, x, reg=-1)
    with pytest.raises(TypeError, match="importance third.*pruning_ratio=0.3"):  # the 0.3 order: ratio third
        tpv.VTPPruner(model, x, 0.3)
    with pytest.raises(TypeError, match="unknown keyword.*head_dim_gate.*VTPConfig"):
        tpv.VTPPruner(model, x, head_dim_gate="qkv_out")
    with pytest.raises(ValueError, match="sparse_steps"):
        tpv.VTPPruner(model, x, sparse_steps=0)
    with pytest.raises(ValueError, match="gated_layers"):
        tpv.VTPPruner(model, x, gated_layers=("norm1",))
    with pytest.raises(ValueError, match="pruning_ratio"):
        tpv.VTPPruner(model, x, pruning_ratio=1.0)
    assert state_equal(before, model.state_dict()) and hooks(model) == n_hooks
    tpv.VTPPruner(model, x)
    with pytest.raises(ValueError, match="already carries"):
        tpv.VTPPruner(model, x)


def test_residual_stream_aggregation_closed_form(x):
    model = make_model()
    DG = tp.DependencyGraph().build_dependency(
        model, x, unwrapped_parameters=tpv.vit_pruning_kwargs(model)["unwrapped_parameters"]
    )
    embed = DG.get_pruning_group(model.patch_embed.proj, tp.prune_conv_out_channels, list(range(48)))
    gates = {model.blocks[0].attn.qkv: torch.full((48,), 2.0), model.blocks[1].mlp.fc1: torch.full((48,), 4.0)}
    for aggregation, expected in (("mean", 3.0), ("max", 4.0)):
        imp = tpv.GateImportance(aggregation=aggregation)
        imp.set_gates(gates)
        torch.testing.assert_close(imp(embed), torch.full((48,), expected))
    with pytest.raises(ValueError, match="aggregation"):
        tpv.GateImportance(aggregation="sum")


def test_rank_only_gates_prune_the_smallest_and_keep_the_rest_ungated(family, x):
    """Default fold_values=False: pruned == the ungated dense model with the pruned MLP dims zeroed."""
    model = make_model(family)
    dense = copy.deepcopy(model)
    pruner = tpv.VTPPruner(model, x, pruning_ratio=0.25, prune_head_dims=False, prune_embed_dim=False, global_pruning=False)
    randomise_gates(pruner)
    gates = [getattr(b.mlp.fc2, GATE_NAME).detach().clone() for b in model.blocks]
    pruner.step()
    with torch.no_grad():
        for b_dense, b_pruned, gate in zip(dense.blocks, model.blocks, gates):
            kept = hidden(b_pruned)
            dropped = torch.argsort(gate, stable=True)[: 192 - kept]
            assert gate[dropped].max() <= gate[torch.argsort(gate, stable=True)[192 - kept :]].min()
            b_dense.mlp.fc2.weight[:, dropped] = 0  # the dims that went, zeroed in the ungated model
        torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-5)


def test_config_object_and_keywords_give_the_same_pruner_and_removed_options_are_refused(x):
    cfg = tpv.vtp.VTPConfig(reg=0.3, sparse_steps=10, score="magnitude", close=False)
    a = tpv.VTPPruner(make_model(), x, pruning_ratio=0.3, config=cfg)
    b = tpv.VTPPruner(make_model(), x, pruning_ratio=0.3, reg=0.3, sparse_steps=10, score="magnitude", close=False)
    assert a.config == b.config == cfg and (a.gate_lr, a.reg, a.score) == (b.gate_lr, b.reg, b.score)
    assert tpv.VTPPruner(make_model(), x, config=cfg, reg=0.1).config.reg == 0.1  # a keyword overrides the object
    with pytest.raises(TypeError, match="close_until"):  # removed in 0.4: refused by name
        tpv.VTPPruner(make_model(), x, close_until=0.5)
    with pytest.raises(ValueError, match="score"):
        tpv.vtp.VTPConfig(score="l1")
