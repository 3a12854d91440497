"""Each method's "paper" and "recommended" presets: what defines them, end to end on tiny models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_model

import tp_vit_plugins as tpv
from tp_vit_plugins.cpvit import CascadeConfig
from tp_vit_plugins.gohsp import GOHSPConfig
from tp_vit_plugins.vtp import VTPConfig


def _batches(n: int = 3, size: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_recommended_presets_are_the_defaults_and_options_override_presets():
    assert CascadeConfig.preset("recommended") == CascadeConfig()
    assert GOHSPConfig.preset("recommended") == GOHSPConfig()
    assert VTPConfig.preset("recommended") == VTPConfig.preset("closing") == VTPConfig()
    for cls in (CascadeConfig, GOHSPConfig, VTPConfig):
        with pytest.raises(ValueError, match="preset"):
            cls.preset("fastest")
    assert tpv.cpvit.cascade_macs(make_model(), (3, 32, 32), "paper", keep_ratio=1.0) == tpv.cpvit.cascade_macs(
        make_model(), (3, 32, 32), CascadeConfig.preset("paper"), keep_ratio=1.0
    )


def test_paper_cascade_skips_heads_per_input_and_its_attention_range_moves_the_schedule():
    model = make_model("vit", depth=4, num_heads=4)
    calib = [x for x, _ in _batches()]
    cascade = tpv.apply_cascade(model, "paper", calib=calib)
    cfg = cascade.config
    assert (cfg.fold, cfg.prune_at, cfg.schedule_steps, cfg.beta, cfg.head_keep_ratio) == ("drop", "block", None, 0.5, 0.75)
    assert cascade.start_block == 0 and cfg.keep_mean and cfg.head_score == "block"
    assert abs(sum(cascade.schedule) / (4 * cascade.num_patches) - 0.5) < 0.05  # half of the patch-block work
    with torch.no_grad():
        model(calib[0])
    assert cascade.last.heads_kept and all(k < 4 for k in cascade.last.heads_kept)  # heads skipped per input
    points = [i for i in range(3) if cascade.schedule[i + 1] < cascade.schedule[i]]
    assert sorted(cascade.localities) == points  # every pruning point's attention range, calibrated once
    assert cascade.counts == tpv.cpvit.maths.range_adjusted_counts(cascade.schedule, cascade.localities, 0.5)
    cascade.remove()
    plain = tpv.apply_cascade(model, "paper", beta=0.0)  # an option overrides the preset
    assert plain.counts == plain.schedule and plain.config.head_keep_ratio == 0.75
    plain.remove()
    with pytest.raises(ValueError, match="calib="):
        tpv.apply_cascade(model, "paper")  # the range adjustment needs calibration data


def _sparse_train(model, pruner, data, epochs: int) -> None:
    """tp's sparse-training loop: backward, ``regularize``, an AdamW step on the weights (not the gates)."""
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "gate" not in n], lr=1e-3)
    for _ in range(epochs):
        for x, y in data:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            pruner.regularize(model)
            opt.step()
            opt.zero_grad()


def test_paper_vtp_learns_its_gates_under_l1_and_some_reach_exactly_zero():
    model = make_model("vit", depth=2, num_heads=4)
    data = _batches(4)
    pruner = tpv.VTPPruner(model, data[0][0][:1], pruning_ratio=0.3, config="paper", sparse_steps=4 * 4, reg=4.0)
    assert (pruner.closing, pruner.score, pruner.fold_values) == (False, "magnitude", True) and pruner.gate_lr > 0
    assert sorted(pruner._grad_groups) == ["fc1", "fc2", "proj", "qkv"]  # one gradient scale per gate position
    _sparse_train(model, pruner, data, 4)
    gates = torch.cat([g.detach().flatten() for g in pruner.gate_parameters()])
    assert (gates != 1).all() and (gates > 0).any()  # every gate moved; not all collapsed
    assert pruner.gate_zero_share() > 0  # the L1 step drove some to exactly 0
    n0 = tpv.utils.count_params(model)
    pruner.step()
    assert tpv.utils.count_params(model) < n0


def test_paper_gohsp_ranks_heads_by_an_attention_graph_that_changes_what_the_optimisation_keeps():
    model = make_model("vit", depth=3, num_heads=4)
    data = _batches(2)
    imp = tpv.GraphHeadImportance(config="paper", progress=False).calibrate(model, data)
    assert (imp.graph_kind, imp.mode) == ("similarity", "redundancy")
    assert (tpv.GraphHeadImportance().graph_kind, tpv.GraphHeadImportance().mode) == ("flow", "importance")
    assert tpv.GraphHeadImportance(config="paper", mode="importance").mode == "importance"  # an option overrides
    x = data[0][0][:1]
    kw = dict(pruning_ratio=0.15, config="paper", structures=("heads",))  # only heads: where the graph acts
    guided = tpv.GOHSPPruner(model, x, imp, **kw)  # the importance is keyed by this model's modules
    unguided = tpv.GOHSPPruner(model, x, imp, graph_bias=0.0, **kw)
    assert guided.config == dataclasses.replace(GOHSPConfig.preset("paper"), structures=("heads",))
    assert (guided.config.metric, guided.config.proximal, guided.config.graph_guide) == ("euclidean", 0.2, "zscore")
    plans = [p.project(use_dual=False).heads for p in (guided, unguided)]
    assert plans[0] != plans[1]  # the graph is a guideline that moves the support


#: CLI flag -> (options class, field, CLI value -> config value)
_FLAGS = {
    "--keep-ratio": (CascadeConfig, "keep_ratio", float),
    "--head-keep-ratio": (CascadeConfig, "head_keep_ratio", float),
    "--schedule-steps": (CascadeConfig, "schedule_steps", lambda v: int(v) or None),
    "--token-fold": (CascadeConfig, "fold", str),
    "--attention-range": (CascadeConfig, "beta", float),
    "--reg": (VTPConfig, "reg", float),
    "--shrink": (VTPConfig, "shrink", float),
    "--gate-score": (VTPConfig, "score", str),
}


def test_cli_help_states_the_presets_values_as_the_code_has_them():
    """Read each flag's "(preset: X, paper Y)" from the help and compare it with the presets in the code."""
    import re

    from tp_vit_plugins.demo import cli

    prune = cli.build_parser()._subparsers._group_actions[0].choices["prune"]
    helps = {a.option_strings[0]: a.help for a in prune._actions if a.option_strings}
    for flag, (cls, field, parse) in _FLAGS.items():
        found = re.search(r"\(preset: ([^,)]+)(?:, paper ([^)]+))?\)", helps[flag])
        assert found, (flag, helps[flag])
        recommended, paper = found.group(1), found.group(2) or found.group(1)
        assert parse(recommended) == getattr(cls.preset("recommended"), field), flag
        assert parse(paper) == getattr(cls.preset("paper"), field), flag
    args = cli.build_parser().parse_args(["prune", "--method", "cpvit"])
    assert args.preset is None and cli.method_options(args) == {}  # nothing given: the preset's values
    args = cli.build_parser().parse_args(["prune", "--method", "cpvit", "--schedule-steps", "0", "--token-fold", "drop"])
    assert cli.method_options(args) == {"schedule_steps": None, "fold": "drop"}  # 0 stages: the ramp


def test_the_cp_vit_abstracts_relation_holds_on_deit_s_and_vit_b():
    """ "By progressively pruning 50 % patches, CP-ViT reduces over 40 % FLOPs": the paper preset at keep_ratio=0.5."""
    import timm

    for name in ("deit_small_patch16_224", "vit_base_patch16_224"):
        model = timm.create_model(name, pretrained=False).eval()
        dense = tpv.cpvit.cascade_macs(model, (3, 224, 224), keep_ratio=1.0)
        paper = tpv.cpvit.cascade_macs(model, (3, 224, 224), "paper", keep_ratio=0.5)
        assert paper < 0.6 * dense, (name, paper / dense)


def test_paper_vtp_gates_every_projections_inputs_and_prunes_them_per_block(tmp_path):
    """The abstract's "pruning dimensions of linear projections": qkv, proj, fc1 and fc2 inputs, each block its own."""
    import timm

    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    paper = tpv.VTPPruner(deit, torch.randn(1, 3, 224, 224), pruning_ratio=0.4, config="paper", sparse_steps=4)
    assert sum(g.numel() for g in paper.gates.parameters()) == 12 * (192 + 192 + 192 + 768)  # 16,128 gate entries
    paper.remove_gates(fold=False)
    model = make_model("vit", depth=3, num_heads=4)
    data = _batches(2)
    x = data[0][0]
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.4, config="paper", sparse_steps=4, reg=4.0)
    _sparse_train(model, pruner, data, 2)
    width = model.patch_embed.proj.out_channels
    pruner.step()
    model.eval()
    assert model.patch_embed.proj.out_channels == width  # the residual stream keeps its width
    assert any(a > 0 or m > 0 for a, m in pruner.inputs_removed)  # some block reads fewer dims
    for blk, (a, m) in zip(model.blocks, pruner.inputs_removed):
        assert blk.attn.qkv.in_features == width - a and blk.mlp.fc1.in_features == width - m
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    tpv.save_pruned(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(tpv.load_pruned(tmp_path / "m")(x), out)
    pytest.importorskip("onnxruntime")
    assert tpv.export_onnx(model, x, tmp_path / "m.onnx").max_abs_diff <= 1e-4
    with pytest.raises(ValueError, match="prune_inputs"):
        tpv.VTPPruner(make_model("vit", depth=2, num_heads=4), x[:1], pruning_ratio=0.3, prune_inputs=True)


def test_the_paper_vtp_pruner_fits_its_own_step_to_a_parameter_budget():
    """``fit_params``: the ratio whose step (block inputs included) leaves at most the budget, the model untouched."""
    from tp_vit_plugins.utils import count_params

    model = make_model("vit", depth=3, num_heads=4)
    data = _batches(2)
    x = data[0][0]
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.0, config="paper", sparse_steps=4, reg=4.0)
    _sparse_train(model, pruner, data, 2)
    dense = count_params(model) - sum(g.numel() for g in pruner.gates.parameters())
    target = 0.6 * dense
    ratio = pruner.fit_params(target)
    assert 0 < ratio < 1 and pruner.pruning_ratio == ratio
    assert count_params(model) == dense  # the gates folded; only copies were pruned
    pruner.step()
    kept = count_params(model)
    assert kept <= target and kept > 0.5 * dense  # at the budget, not far below it
    assert any(a > 0 or m > 0 for a, m in pruner.inputs_removed)  # the paper preset's own per-block input dims
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x)).all()
    with pytest.raises(ValueError, match="already pruned"):
        pruner.fit_params(target)
    closing = tpv.VTPPruner(make_model("vit", depth=2, num_heads=4), x[:1], pruning_ratio=0.3, sparse_steps=4)
    with pytest.raises(ValueError, match="closing"):
        closing.fit_params(target)


def test_removing_a_blocks_input_dims_equals_zeroing_those_columns():
    import copy

    from tp_vit_plugins.core.inputs import prune_block_inputs
    from tp_vit_plugins.hosts import host_for

    model = make_model("vit", depth=2, num_heads=4)
    x = _batches(1)[0][0]
    dense = copy.deepcopy(model)
    prune_block_inputs(host_for(model).block_layers(model)[1], [0, 3, 5], [2])
    blk = dense.blocks[1]
    with torch.no_grad():
        blk.attn.qkv.weight[:, [0, 3, 5]] = 0
        blk.mlp.fc1.weight[:, [2]] = 0
        torch.testing.assert_close(model(x), dense(x), atol=1e-6, rtol=1e-6)
