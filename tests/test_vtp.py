"""VTP: gates, L1 subgradient, gate importance, folding and the VTPPruner."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.vtp.gates import GATE_NAME, GateSet


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
    assert len(pruner.gate_parameters()) == 4 * 2
    assert all(any(p is q for q in model.parameters()) for p in pruner.gate_parameters())  # any optimizer sees them
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_folding_preserves_kept_dims_exactly(family, x):
    """Pruned model == gated dense model with the pruned gates set to 0 (MLP dims)."""
    model = make_model(family)
    pruner = tpv.VTPPruner(model, x, pruning_ratio=0.25, prune_head_dims=False, prune_embed_dim=False, global_pruning=False)
    randomise_gates(pruner)
    gated = copy.deepcopy(model)
    pruner.step()
    assert all(b.mlp.fc1.out_features == 144 for b in model.blocks)
    with torch.no_grad():
        for b_dense, b_pruned in zip(gated.blocks, model.blocks):
            gate = getattr(b_dense.mlp.fc2, GATE_NAME)
            folded_fc1 = b_dense.mlp.fc1.weight * getattr(b_dense.mlp.fc1, GATE_NAME)[None, :]  # as fold() computes it
            kept = set()
            for row in b_pruned.mlp.fc1.weight:
                kept |= {i for i in range(192) if torch.equal(folded_fc1[i], row)}
            assert len(kept) == 144
            dropped = sorted(set(range(192)) - kept)
            assert gate[dropped].max() <= gate[sorted(kept)].min()  # the smallest gates went
            gate[dropped] = 0
        torch.testing.assert_close(model(x), gated(x), atol=1e-5, rtol=1e-5)


def test_l1_subgradient_closed_form(x):
    model = make_model()
    pruner = tpv.VTPPruner(model, x, reg=0.01)
    gates = pruner.gate_parameters()
    with torch.no_grad():
        gates[0][:3] = torch.tensor([0.5, -0.2, 0.0])
    before = [g.detach().clone() for g in gates]
    opt = torch.optim.SGD(gates, lr=0.1)
    opt.zero_grad()
    pruner.regularize(model)
    opt.step()
    for b, g in zip(before, gates):
        torch.testing.assert_close(g.detach(), b - 0.1 * 0.01 * torch.sign(b))
    assert gates[0][:3].tolist() == pytest.approx([0.499, -0.199, 0.0])


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
    assert tpv.GateImportance()(mlp) is None


def test_vtp_errors_leave_model_untouched(x):
    model = make_model()
    before, n_hooks = snapshot(model), hooks(model)
    with pytest.raises(ValueError, match="reg"):
        tpv.VTPPruner(model, x, reg=-1)
    with pytest.raises(ValueError, match="gated_layers"):
        tpv.VTPPruner(model, x, gated_layers=("norm1",))
    with pytest.raises(ValueError, match="pruning_ratio"):
        tpv.VTPPruner(model, x, pruning_ratio=1.0)
    assert state_equal(before, model.state_dict()) and hooks(model) == n_hooks
    tpv.VTPPruner(model, x)
    with pytest.raises(ValueError, match="already carries"):
        tpv.VTPPruner(model, x)
