"""vit_pruning_kwargs, sync_attention and attention_maps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import fused_and_eager, make_model, snapshot, state_equal
from timm.layers import LayerScale

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.timm.pruning import head_norm_dims
from tp_vit_plugins.hosts.timm.structure import attention_modules


def hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_kwargs_cover_tokens_heads_and_classifiers(family):
    model = make_model(family)
    kw = tpv.vit_pruning_kwargs(model)
    assert kw["num_heads"] == {a.qkv: 3 for _, a in attention_modules(model)}
    heads = [model.head] + ([model.head_dist] if family == "deit_distilled" else [])
    if family == "beit":  # relative position tables: declared to tp and never pruned by it
        tables = [b.attn.relative_position_bias_table for b in model.blocks]
        assert [id(t) for t in kw["ignored_layers"][1:]] == [id(t) for t in tables]
        heads += tables
    if family == "cait":  # the class attention stays whole, the residual stream keeps its width
        whole = [m for b in model.blocks_token_only for m in (b.attn.q, b.attn.k, b.attn.v, b.attn.proj)]
        heads += [*whole, model.patch_embed.proj]
        assert set(kw["customized_pruners"]) == {tpv.hosts.timm.families.HeadMixer}
    if family == "siglip_map":  # the pool stays whole, the residual stream keeps its width
        pool = model.attn_pool
        heads += [pool.q, pool.kv, pool.proj, pool.norm, pool.mlp.fc1, pool.mlp.fc2, model.patch_embed.proj]
        assert {id(m) for m in kw["ignored_layers"]} == {id(m) for m in heads}
    else:
        assert [id(m) for m in kw["ignored_layers"]] == [id(m) for m in heads]
    params = {id(p): d for p, d in kw["unwrapped_parameters"]}
    for attr in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        p = getattr(model, attr, None)
        if p is not None:
            assert params[id(p)] == p.dim() - 1
    for m in model.modules():
        if isinstance(m, LayerScale):
            assert params[id(m.gamma)] == 0
        for name in ("gamma_1", "gamma_2"):  # BEiT / EVA layer scales
            if isinstance(m._parameters.get(name), torch.nn.Parameter):
                assert params[id(m._parameters[name])] == 0
    assert bool(kw["customized_pruners"]) == (family in ("qk_norm", "cait"))


def test_kwargs_are_fresh_each_call():
    model = make_model()
    a, b = tpv.vit_pruning_kwargs(model), tpv.vit_pruning_kwargs(model)
    a["num_heads"][model.blocks[0].attn.qkv] = 1
    assert b["num_heads"][model.blocks[0].attn.qkv] == 3


def test_attention_maps_match_closed_form(family, x):
    model = make_model(family)
    attn = model.blocks[0].attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        with tpv.utils.attention_maps(model) as maps:
            model(x)
    finally:
        handle.remove()
    tokens = seen["x"]  # [B, N, C]
    B, N, _ = tokens.shape
    qkv = torch.nn.functional.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(B, N, 3, 3, 16).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    if family == "eva02":  # rotary embedding on the patch tokens only, as timm's EvaAttention applies it
        from timm.layers import apply_rot_embed_cat

        rope, npt = model.rope.get_embed(), model.num_prefix_tokens
        q, k = (torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope)], dim=2) for t in (q, k))
    logits = q @ k.transpose(-1, -2) * 16**-0.5
    if family == "beit":  # relative position bias per head
        logits = logits + attn._get_rel_pos_bias()
    if family == "cait":  # talking heads: mix the logits over heads, softmax, mix the probabilities
        mix = lambda t, lin: torch.einsum("bhnm,gh->bgnm", t, lin.weight) + lin.bias[:, None, None]  # noqa: E731
        expected = mix(torch.softmax(mix(logits, attn.proj_l), dim=-1), attn.proj_w)
        assert len(maps) == 2 and maps[0].shape == (4, 3, N, N)
        torch.testing.assert_close(maps[0], expected, atol=1e-5, rtol=1e-5)
        return
    expected = torch.softmax(logits, dim=-1)
    assert len(maps) == 2 and maps[0].shape == (4, 3, N, N)
    torch.testing.assert_close(maps[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(4, 3, N))


def test_attention_maps_restore_flags_and_hooks_even_on_error(x):
    model = make_model()
    flags = [True, False]
    for (_, a), f in zip(attention_modules(model), flags):
        a.fused_attn = f
    before = hooks_left(model)
    with pytest.raises(RuntimeError, match="boom"):
        with tpv.utils.attention_maps(model) as maps:
            assert all(not a.fused_attn for _, a in attention_modules(model))
            model(x)
            assert maps[0] is not None
            raise RuntimeError("boom")
    assert [a.fused_attn for _, a in attention_modules(model)] == flags
    assert hooks_left(model) == before


def test_attention_maps_callback_without_storing(x):
    model = make_model()
    got = []
    with tpv.utils.attention_maps(model, store=False, callback=lambda i, p: got.append((i, p.shape))) as maps:
        model(x)
    assert [i for i, _ in got] == [0, 1] and maps[0] is None


def test_attention_maps_rejects_non_vit():
    with pytest.raises(TypeError, match="not a timm VisionTransformer"):
        with tpv.utils.attention_maps(torch.nn.Linear(2, 2)):
            pass


def test_sync_is_idempotent_and_identity_on_dense(family, x):
    model = make_model(family)
    before = snapshot(model)
    tpv.sync_attention(model)
    tpv.sync_attention(model)
    assert state_equal(before, model.state_dict())


def test_sync_infers_pure_head_removal(x):
    model = make_model("vit")  # 3 heads x 16
    kw = tpv.vit_pruning_kwargs(model)
    pruner = tp.pruner.BasePruner(
        model,
        x,
        tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.1,
        prune_head_dims=False,
        prune_num_heads=True,
        head_pruning_ratio=0.3,
        **kw,
    )
    pruner.step()
    tpv.sync_attention(model)  # 32 channels: only 2 heads x 16 fits (32 % 3 != 0)
    assert [(a.num_heads, a.head_dim) for _, a in attention_modules(model)] == [(2, 16)] * 2
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_sync_refuses_to_guess_ambiguous_layouts(x):
    model = make_model("vit", num_heads=4, embed_dim=48)
    attn = model.blocks[0].attn
    # 48 -> 24 channels: 2 heads x 12 or 4 heads x 6 — both are valid readings
    group = (
        tp.DependencyGraph().build_dependency(model, x).get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(24)))
    )
    group.prune()
    before = snapshot(model)
    with pytest.raises(ValueError, match="pass the head counts"):
        tpv.sync_attention(model)
    assert state_equal(before, model.state_dict()) and attn.num_heads == 4
    tpv.sync_attention(model, {attn.qkv: 2})
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (2, 12, 24)


def test_sync_rejects_mismatched_qkv_and_proj_without_changes():
    model = make_model()
    model.blocks[1].attn.proj = torch.nn.Linear(40, 48)
    before = [(a.num_heads, a.head_dim, float(a.scale)) for _, a in attention_modules(model)]
    with pytest.raises(ValueError, match="disagree"):
        tpv.sync_attention(model)
    assert [(a.num_heads, a.head_dim, float(a.scale)) for _, a in attention_modules(model)] == before


def test_sync_folds_scale_so_fused_matches_eager(x):
    model = make_model("vit")
    dense = copy.deepcopy(model)
    tpv.ViTPruner(model, x, pruning_ratio=0.5, prune_mlp=False, prune_head_dims=True).step()
    for _, a in attention_modules(model):
        assert a.head_dim == 8 and a.scale == pytest.approx(8**-0.5)
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, dense(x))


def test_head_norm_dims_closed_form():
    assert head_norm_dims(range(0, 4), num_heads=3, head_dim=4) == []  # head 0 removed whole
    assert head_norm_dims([1, 5, 9], num_heads=3, head_dim=4) == [1]  # dim 1 of every head
    assert head_norm_dims([0, 1, 2, 3, 6, 10], num_heads=3, head_dim=4) == [2]  # head 0 + dim 2
    with pytest.raises(ValueError, match="different"):
        head_norm_dims([1, 6], num_heads=3, head_dim=4)
    with pytest.raises(ValueError, match="outside"):
        head_norm_dims([12], num_heads=3, head_dim=4)
