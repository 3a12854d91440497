"""ViTPruner and the plain-tp path on every model family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import FAMILIES, FIXED_EMBED, fused_and_eager, hidden, make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.timm.structure import attention_modules


def match_rows(orig: torch.Tensor, new: torch.Tensor) -> list[int]:
    """Index in ``orig`` of every row of ``new`` (rows must be copied exactly)."""
    out = []
    for row in new:
        hits = [i for i in range(orig.shape[0]) if torch.equal(orig[i], row)]
        assert len(hits) == 1, "a pruned row does not come from exactly one original row"
        out.append(hits[0])
    return out


def consistent(model) -> bool:
    return all(
        a.num_heads * a.head_dim == a.attn_dim == a.qkv.out_features // 3 == a.proj.in_features
        for _, a in attention_modules(model)
    )


@torch.no_grad()
def masked_dense_for_heads(dense, pruned):
    """Dense copy with the proj columns of every removed head zeroed."""
    masked = copy.deepcopy(dense)
    for (_, a0), (_, a1), (_, am) in zip(attention_modules(dense), attention_modules(pruned), attention_modules(masked)):
        d, h0 = a0.head_dim, a0.num_heads
        v0 = a0.qkv.weight[2 * a0.attn_dim :].view(h0, d, -1)
        v1 = a1.qkv.weight[2 * a1.attn_dim :].view(a1.num_heads, a1.head_dim, -1)
        kept = {match_rows(v0.flatten(1), v1.flatten(1))[i] for i in range(a1.num_heads)}
        for h in set(range(h0)) - kept:
            am.proj.weight[:, h * d : (h + 1) * d] = 0
            for mixer in (getattr(am, "proj_l", None), getattr(am, "proj_w", None)):  # CaiT's talking heads
                if mixer is not None:  # head h neither feeds nor receives any mixed map
                    mixer.weight[h, :] = 0
                    mixer.weight[:, h] = 0
    return masked


@torch.no_grad()
def masked_dense_for_mlp(dense, pruned):
    masked = copy.deepcopy(dense)
    every = [(m, [*m.blocks, *getattr(m, "blocks_token_only", [])]) for m in (dense, pruned, masked)]  # CaiT: both
    for b0, b1, bm in zip(*(blocks for _, blocks in every)):
        kept = set(match_rows(b0.mlp.fc2.weight.T, b1.mlp.fc2.weight.T))  # fc2 columns: one per hidden unit
        for j in set(range(hidden(b0))) - kept:
            bm.mlp.fc2.weight[:, j] = 0
    return masked


@torch.no_grad()
def masked_dense_for_head_dims(dense, pruned):
    """Dense copy with the removed dims of every head zeroed in q, k and v."""
    masked = copy.deepcopy(dense)
    for (_, a0), (_, a1), (_, am) in zip(attention_modules(dense), attention_modules(pruned), attention_modules(masked)):
        assert a1.num_heads == a0.num_heads
        A0, A1 = a0.attn_dim, a1.attn_dim
        kept = match_rows(a0.qkv.weight[2 * A0 :], a1.qkv.weight[2 * A1 :])  # v rows are never rescaled
        for i in set(range(A0)) - set(kept):
            for part in range(3):
                am.qkv.weight[part * A0 + i] = 0
                if am.qkv.bias is not None:
                    am.qkv.bias[part * A0 + i] = 0
    return masked


def test_constructing_a_pruner_keeps_train_and_eval_modes(x):
    """tp's tracing switches the model to eval: ViTPruner restores every module's own flag."""
    model = make_model("vit", depth=2).train()
    model.blocks[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    tpv.ViTPruner(model, x, pruning_ratio=0.25)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not tpv.ViTPruner(model.eval(), x, pruning_ratio=0.25).model.training


@pytest.mark.parametrize("global_heads", [False, True])
def test_head_only_pruning_exact_counts(family, x, global_heads):
    model = make_model(family, depth=3, num_heads=4, embed_dim=48)
    pruner = tpv.ViTPruner(model, x, head_pruning_ratio=0.5, global_head_pruning=global_heads)
    assert pruner.heads_per_layer() == [4, 4, 4]
    pruner.step()
    heads = [a.num_heads for _, a in attention_modules(model)]
    assert heads == pruner.heads_per_layer()
    assert sum(heads) == 6  # round(0.5 * 12), also with pruning_ratio == 0
    if not global_heads:
        assert heads == [2, 2, 2]
    assert min(heads) >= 1
    assert consistent(model)
    # head-only: nothing else changed
    assert all(hidden(b) == 192 for b in model.blocks)
    assert all(a.head_dim == 12 for _, a in attention_modules(model))


def test_global_head_pruning_is_heterogeneous_and_keeps_min_heads(x):
    model = make_model("vit", depth=3, num_heads=4)
    with torch.no_grad():  # make block 1's heads tiny: a global ranking must take them first
        model.blocks[1].attn.qkv.weight.mul_(1e-3)
        model.blocks[1].attn.proj.weight.mul_(1e-3)
    # tp's default normalizer='mean' makes scores relative per layer; compare raw magnitudes
    imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    pruner = tpv.ViTPruner(model, x, imp, head_pruning_ratio=0.5, global_head_pruning=True, min_heads=1)
    pruner.step()
    heads = pruner.heads_per_layer()
    assert heads[1] == 1  # all but min_heads of the weak layer
    assert sum(heads) == 6 and len(set(heads)) > 1


def test_uniform_head_count_rounds_half_up(x):
    model = make_model("vit")  # 3 heads per layer; 0.5 * 3 = 1.5 -> 2 removed
    tpv.ViTPruner(model, x, head_pruning_ratio=0.5).step()
    assert [a.num_heads for _, a in attention_modules(model)] == [1, 1]


def test_masking_equivalence_heads(family, x):
    dense = make_model(family)
    pruned = copy.deepcopy(dense)
    tpv.ViTPruner(pruned, x, head_pruning_ratio=0.34).step()
    assert [a.num_heads for _, a in attention_modules(pruned)] == [2, 2]
    masked = masked_dense_for_heads(dense, pruned)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(dense(x), masked(x), atol=1e-3)  # the heads did matter


def test_masking_equivalence_mlp(family, x):
    dense = make_model(family)
    pruned = copy.deepcopy(dense)
    tpv.ViTPruner(pruned, x, pruning_ratio=0.25).step()
    assert all(hidden(b) == 144 for b in pruned.blocks)
    masked = masked_dense_for_mlp(dense, pruned)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family_", sorted(set(FAMILIES) - {"qk_norm"}))
def test_masking_equivalence_head_dims(family_, x):
    """Head dims removed == the same dims zeroed in q, k, v (logit scale preserved)."""
    dense = make_model(family_)
    pruned = copy.deepcopy(dense)
    tpv.ViTPruner(pruned, x, pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True).step()
    assert all(a.head_dim == 12 for _, a in attention_modules(pruned))
    masked = masked_dense_for_head_dims(dense, pruned)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)


SETTINGS = {
    "heads": dict(head_pruning_ratio=0.34),
    "head_dims": dict(pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True),
    "mlp": dict(pruning_ratio=0.25),
    "embed": dict(pruning_ratio=0.25, prune_mlp=False, prune_embed_dim=True),
    "all_global": dict(
        pruning_ratio=0.3, head_pruning_ratio=0.34, prune_head_dims=True, prune_embed_dim=True, global_pruning=True
    ),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_structure_runs_consistent_and_fused_equals_eager(family, x, setting):
    model = make_model(family)
    refused = {"prune_embed_dim": (FIXED_EMBED, "stay whole")}
    for key, (families, words) in refused.items():
        if family in families and SETTINGS[setting].get(key):
            before = snapshot(model)
            with pytest.raises(ValueError, match=words):
                tpv.ViTPruner(model, x, **SETTINGS[setting])
            assert state_equal(before, model.state_dict())
            return
    n_params = sum(p.numel() for p in model.parameters())
    tpv.ViTPruner(model, x, **SETTINGS[setting]).step()
    assert consistent(model)
    assert sum(p.numel() for p in model.parameters()) < n_params
    fused, eager = fused_and_eager(model, x)
    assert fused.shape == (4, 10)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    if setting == "embed":
        assert model.patch_embed.proj.out_channels == 36 and model.embed_dim == 36
        assert model.pos_embed is None or model.pos_embed.shape[-1] == 36


def test_qk_norm_head_dims_prunes_the_norms(x):
    model = make_model("qk_norm")
    tpv.ViTPruner(model, x, pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True).step()
    for _, a in attention_modules(model):
        assert a.q_norm.weight.shape == (12,) and a.k_norm.weight.shape == (12,)
        assert a.q_norm.normalized_shape == (12,)


def test_ratio_zero_is_identity(family, x):
    model = make_model(family)
    before = snapshot(model)
    with torch.no_grad():
        y0 = model(x)
    pruner = tpv.ViTPruner(model, x, pruning_ratio=0.0, head_pruning_ratio=0.0)
    pruner.step()
    assert state_equal(before, model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), y0)


def test_iterative_steps_reach_the_target(x):
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.ViTPruner(model, x, head_pruning_ratio=0.5, pruning_ratio=0.5, iterative_steps=2)
    pruner.step()
    assert pruner.heads_per_layer() == [3, 3]  # round(0.25 * 4) = 1 removed
    pruner.step()
    assert pruner.heads_per_layer() == [2, 2]
    assert all(b.mlp.fc1.out_features == 96 for b in model.blocks)
    assert consistent(model)


def test_works_with_taylor_after_gradient_pass(x):
    model = make_model("vit")
    pruner = tpv.ViTPruner(model, x, tp.importance.GroupTaylorImportance(), pruning_ratio=0.25, head_pruning_ratio=0.34)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    pruner.step()
    assert pruner.heads_per_layer() == [2, 2] and consistent(model)


def test_interactive_step_syncs_when_exhausted(x):
    model = make_model("vit")
    pruner = tpv.ViTPruner(model, x, pruning_ratio=0.25, head_pruning_ratio=0.34)
    for group in pruner.step(interactive=True):
        group.prune()
    assert consistent(model) and pruner.heads_per_layer() == [2, 2]


@pytest.mark.parametrize("family_", ["vit", "qk_norm", "deit_distilled"])
def test_plain_tp_script_with_vit_pruning_kwargs(family_, x):
    """The DESIGN example: a plain tp.BasePruner plus vit_pruning_kwargs + sync_attention."""
    model = make_model(family_, num_heads=4)
    kwargs = tpv.vit_pruning_kwargs(model)
    assert kwargs is not tpv.vit_pruning_kwargs(model) and kwargs["num_heads"] is not tpv.vit_pruning_kwargs(model)["num_heads"]
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.25,
        prune_num_heads=True,
        head_pruning_ratio=0.5,
        **kwargs,
    )
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    assert consistent(model)
    assert [a.num_heads for _, a in attention_modules(model)] == [2, 2]
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_tp_importance_crash_on_qk_norm_is_avoided(x):
    """tp's magnitude importance indexes q_norm with attention-wide indices unless our pruner handles it."""
    model = make_model("qk_norm")
    kwargs = tpv.vit_pruning_kwargs(model)
    DG = tp.DependencyGraph().build_dependency(
        model, x, unwrapped_parameters=kwargs["unwrapped_parameters"], customized_pruners=kwargs["customized_pruners"]
    )
    attn = model.blocks[0].attn
    group = DG.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(48)))
    assert tp.importance.GroupMagnitudeImportance(p=2)(group).shape == (48,)
    bare = tp.DependencyGraph().build_dependency(make_model("qk_norm"), x)
    bare_attn = bare.model.blocks[0].attn
    bare_group = bare.get_pruning_group(bare_attn.proj, tp.prune_linear_in_channels, list(range(48)))
    with pytest.raises(IndexError):  # the upstream behaviour this adapter works around
        tp.importance.GroupMagnitudeImportance(p=2)(bare_group)


def _calibrated(kind: str, model, x):
    if kind == "graph":
        return tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    return tpv.CumulativeHeadImportance().calibrate(model, [x])


def _q_rows_by_head(model) -> list[torch.Tensor]:
    """Every block's q biases, ``[H, d]`` (embedding columns may be pruned; biases identify the rows)."""
    out = []
    for _, a in attention_modules(model):
        H, d = int(a.num_heads), int(a.head_dim)
        out.append(a.qkv.bias.detach()[: H * d].view(H, d).clone())
    return out


def _surviving_heads(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which original heads' q rows the pruned block still holds (head dims untouched)."""
    return [next(h for h in range(len(before)) if torch.equal(before[h], rows)) for rows in after]


@pytest.mark.parametrize("kind", ["graph", "cumulative"])
def test_stock_tp_iterative_pruning_keeps_head_scores_aligned(kind, x):
    """tp's own iterative loop: the importance follows tp's pruning history, no recalibration, no error."""
    model = make_model(num_heads=6)
    imp = _calibrated(kind, model, x)
    raw = {q: v.clone() for q, v in imp.raw_head_scores.items()}
    rows0 = _q_rows_by_head(model)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, pruning_ratio=0.3, head_pruning_ratio=0.5,
                                  prune_num_heads=True, prune_head_dims=False, iterative_steps=3,
                                  **tpv.vit_pruning_kwargs(model))  # fmt: skip
    for _ in range(3):
        pruner.step()
        tpv.sync_attention(model, pruner.num_heads)
    heads = [a.num_heads for _, a in attention_modules(model)]
    assert heads == list(pruner.num_heads.values()) and max(heads) < 6
    imp.follow(pruner.DG)  # replay the last step now (otherwise at the next call)
    for (q, scores), before, after in zip(imp.raw_head_scores.items(), rows0, _q_rows_by_head(model)):
        kept = _surviving_heads(before, after)
        assert scores.tolist() == raw[q][kept].tolist()  # each surviving head carries its own calibrated score
        assert sorted(kept) == sorted(torch.argsort(raw[q])[-len(kept) :].tolist())  # the best calibrated heads survive


def test_a_change_tp_did_not_record_raises_and_leaves_the_model(x):
    """Heads removed by hand (no tp history): the next call refuses instead of misaligning the scores."""
    model = make_model(num_heads=6)
    imp = _calibrated("cumulative", model, x)
    attn = attention_modules(model)[0][1]
    keep = torch.arange(4 * 8).tolist()  # heads 0..3 of 6 (head_dim 8)
    rows = [p * 48 + j for p in range(3) for j in keep]
    attn.qkv.weight = torch.nn.Parameter(attn.qkv.weight.detach()[rows].clone())
    attn.qkv.bias = torch.nn.Parameter(attn.qkv.bias.detach()[rows].clone())
    attn.qkv.out_features = len(rows)
    attn.proj.weight = torch.nn.Parameter(attn.proj.weight.detach()[:, keep].clone())
    attn.proj.in_features = len(keep)
    tpv.sync_attention(model)
    before = snapshot(model)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, pruning_ratio=0.3, head_pruning_ratio=0.5,
                                  prune_num_heads=True, **tpv.vit_pruning_kwargs(model))  # fmt: skip
    with pytest.raises(RuntimeError, match="Calibrate again"):
        pruner.step()
    assert state_equal(before, model.state_dict())


@pytest.mark.parametrize("kind", ["graph", "cumulative"])
def test_vit_pruner_keeps_head_scores_aligned_over_iterative_steps(kind, x):
    model = make_model(num_heads=6)
    imp = _calibrated(kind, model, x)
    raw = {q: v.clone() for q, v in imp.raw_head_scores.items()}
    # 8-dim heads sit at the default head-width floor: min_head_dim=1 lets their dims go too
    pruner = tpv.ViTPruner(model, x[:1], imp, pruning_ratio=0.3, head_pruning_ratio=0.5, prune_head_dims=True,
                           iterative_steps=2, min_head_dim=1)  # fmt: skip
    pruner.step()
    pruner.step()
    assert pruner.heads_per_layer() == [3, 3]
    for q, v in imp.raw_head_scores.items():
        assert len(v) == 3 and imp.layout[q] == q.out_features
        kept = sorted(raw[q].tolist())[-3:]  # per block the 3 best calibrated heads survive
        assert sorted(v.tolist()) == pytest.approx(kept)
    with torch.no_grad():
        model(x)


def test_a_width_layer_the_global_ranking_would_empty_keeps_its_best_channel():
    """tp skips a group it would empty (the layer keeps all its channels); ViTPruner keeps the best one instead."""
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(1e-3)  # every hidden unit of block 0 under any global threshold
        model.blocks[0].mlp.fc1.weight[5].mul_(10.0)  # its best one
        model.blocks[0].mlp.fc2.weight.mul_(1e-3)
    x = torch.randn(1, 3, 32, 32)
    width = model.blocks[0].mlp.fc1.out_features
    ratio = (width + 1) / (2 * width)  # the global cut: block 0's whole MLP and one unit of block 1's
    imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)  # raw magnitudes, comparable across blocks
    pruner = tpv.ViTPruner(model, x, imp, global_pruning=True, pruning_ratio=ratio, prune_head_dims=False)
    whole = pruner.DG.get_pruning_group(model.blocks[0].mlp.fc1, tp.prune_linear_out_channels, list(range(width)))
    assert not pruner._tp_check(whole)  # tp's own check: it would skip the group, keeping all its units
    keep = model.blocks[0].mlp.fc1.weight[5].clone()
    pruner.step()
    assert model.blocks[0].mlp.fc1.out_features == 1  # the best unit stays
    assert model.blocks[1].mlp.fc1.out_features == width - 1
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight[0], keep)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
