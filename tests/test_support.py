"""Unsupported timm families are refused before anything changes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from conftest import snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.timm.support import UnsupportedModelError, check_supported

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)

UNSUPPORTED = {
    "vit_relpos": ("vit_relpos_small_patch16_224", TINY, "vit_relpos"),
    "pit": ("pit_ti_224", dict(img_size=64, num_classes=10), "PiT"),
}


def _randomise(model):
    """timm's init leaves biases and position tables at 0: give every term a non-trivial value."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1 or "relative_position" in n:
                p.normal_(0, 0.3)
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def _fused_equals_eager_and_round_trips(model, x, tmp_path):
    """Assert fused == eager attention and an exact save/load round trip; return the fused output."""
    from conftest import fused_and_eager

    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    tpv.save_pruned(model, tmp_path / "m")
    loaded = tpv.load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return fused


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("family", sorted(UNSUPPORTED))
def test_unsupported_family_is_refused_before_anything_changes(family):
    name, kw, words = UNSUPPORTED[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    size = kw.get("img_size", 32)
    x = torch.randn(2, 3, size, size)
    before, hooks = snapshot(model), _hooks(model)
    with pytest.raises(UnsupportedModelError, match=words):
        check_supported(model)
    assert not tpv.utils.is_supported(model)
    attempts = [
        lambda: tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, head_pruning_ratio=0.3),
        lambda: tpv.VTPPruner(model, x[:1]),
        lambda: tpv.GraphHeadImportance(progress=False).calibrate(model, [x]),
        lambda: tpv.CumulativeHeadImportance().calibrate(model, [x]),
        lambda: tpv.cpvit.apply_cascade(model, keep_ratio=0.5),
        lambda: tpv.vit_pruning_kwargs(model),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match=words):
            attempt()
    assert state_equal(before, model.state_dict()) and _hooks(model) == hooks
    with torch.no_grad():
        model(x)  # still works


def test_other_patch_stems_are_refused():
    from conftest import make_model
    from timm.layers import PatchEmbed

    class StridedStem(PatchEmbed):  # stands for a hybrid CNN stem
        pass

    model = make_model()
    old = model.patch_embed
    model.patch_embed = StridedStem(img_size=32, patch_size=8, in_chans=3, embed_dim=48)
    model.patch_embed.load_state_dict(old.state_dict())
    with pytest.raises(UnsupportedModelError, match="StridedStem"):
        tpv.ViTPruner(model, torch.randn(1, 3, 32, 32), pruning_ratio=0.3)


def test_siglip_attention_pool_prunes_with_the_pool_whole(tmp_path):
    """timm's SigLIP config (attention-pool head): heads, head dims and MLP prune; the pool stays whole."""

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    check_supported(model)
    pool_before = {k: v.clone() for k, v in model.attn_pool.state_dict().items()}
    with pytest.raises(ValueError, match="AttentionPoolLatent"):
        tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, prune_embed_dim=True)
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, head_pruning_ratio=0.34, prune_head_dims=True)
    pruner.step()
    assert pruner.heads_per_layer() == [2, 2] and model.blocks[0].mlp.fc1.out_features < 192
    pool_after = model.attn_pool.state_dict()
    assert pool_after.keys() == pool_before.keys() and all(torch.equal(pool_before[k], pool_after[k]) for k in pool_before)
    _fused_equals_eager_and_round_trips(model, x, tmp_path)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    assert [v.numel() for v in imp.head_scores.values()] == [2, 2]
    with torch.no_grad():
        ref = model(x)
        tpv.cpvit.apply_cascade(model, keep_ratio=0.5)  # the pool attends over the tokens that are left
        assert model(x).shape == (3, 10) and not torch.allclose(model(x), ref, atol=1e-4)
        tpv.cpvit.remove_cascade(model)
        assert torch.equal(model(x), ref)
    # stock tp with the kwargs: the residual stream is left alone, the model still runs
    stock = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **TINY).eval()
    kw = tpv.vit_pruning_kwargs(stock)
    tp.pruner.BasePruner(stock, x[:1], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.3, **kw).step()
    tpv.sync_attention(stock, kw["num_heads"])
    assert stock.patch_embed.proj.out_channels == 48 and stock.blocks[0].mlp.fc1.out_features < 192
    with torch.no_grad():
        assert stock(x).shape == (3, 10)


CONVERTED = {
    "beit": ("beit_base_patch16_224", TINY),
    "cait": ("cait_xxs24_224", TINY),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, num_classes=10)),
    "eva02_unfused_qk_norm": (
        "eva02_tiny_patch14_224",
        dict(img_size=28, depth=2, num_classes=10, qkv_fused=False, qk_norm=True, scale_attn_inner=True),
    ),  # fmt: skip
}


def _timm_model(key):
    name, kw = CONVERTED[key]
    torch.manual_seed(0)
    model = _randomise(timm.create_model(name, pretrained=False, **kw).eval())
    size = kw["img_size"]
    return model, torch.randn(3, 3, size, size)


@pytest.mark.parametrize("key", sorted(CONVERTED))
def test_eva_beit_cait_convert_exactly_and_prune_heads_and_mlp(key, tmp_path):
    from conftest import fused_and_eager

    from tp_vit_plugins.hosts.timm.families import FAMILY_ATTENTIONS

    model, x = _timm_model(key)
    with torch.no_grad():
        ref = model(x)
    original_types = {type(b.attn) for b in model.blocks}
    assert original_types <= set(FAMILY_ATTENTIONS)
    before, keys = snapshot(model), set(model.state_dict())
    with pytest.raises(ValueError, match="head_pruning_ratio"):  # fails after the conversion: rolled back
        tpv.ViTPruner(model, x[:1], head_pruning_ratio=0.9)
    assert {type(b.attn) for b in model.blocks} == original_types and set(model.state_dict()) == keys
    assert state_equal(before, model.state_dict())
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, head_pruning_ratio=0.34)
    assert "blocks.0.attn.qkv.bias" in model.state_dict()  # q / v biases now live in the fused qkv
    with torch.no_grad():
        fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)  # conversion is exact, fused and eager
    torch.testing.assert_close(eager, ref, atol=1e-5, rtol=1e-5)
    pruner.step()
    assert pruner.heads_per_layer() == [2, 2]
    assert all(b.mlp.fc2.in_features < b.mlp.fc2.out_features * 4 for b in model.blocks)
    for b in model.blocks:
        table = getattr(b.attn, "relative_position_bias_table", None)
        assert table is None or table.shape[1] == 2  # BEiT: the removed heads' columns went with them
        for mixer in (getattr(b.attn, "proj_l", None), getattr(b.attn, "proj_w", None)):
            assert mixer is None or tuple(mixer.weight.shape) == (2, 2)  # CaiT: rows and columns went too
    _fused_equals_eager_and_round_trips(model, x, tmp_path)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    assert [v.numel() for v in imp.head_scores.values()] == [2, 2]
    with torch.no_grad():  # tokens drop too; the position-indexed terms follow the kept tokens
        ref = model(x)
        tpv.cpvit.apply_cascade(model, keep_ratio=0.5, head_keep_ratio=1.0 if key == "cait" else 0.5)
        assert not torch.allclose(model(x), ref, atol=1e-4)
        tpv.cpvit.remove_cascade(model)
        assert torch.equal(model(x), ref)


def test_eva02_head_dims_go_in_rotary_pairs_and_gohsp_refuses_swiglu(tmp_path):
    from conftest import fused_and_eager

    from tp_vit_plugins.hosts.timm.families import rope_pairs

    model, x = _timm_model("eva02")
    before = snapshot(model)
    with pytest.raises(TypeError, match="fc1"):  # SwiGLU: GOHSP's neuron units need fc1 / fc2; converted back
        tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.2, graph_bias=0.0, structures=("heads", "mlp"))
    assert state_equal(before, model.state_dict()) and type(model.blocks[0].mlp).__name__ == "GluMlp"
    d0 = 192 // 3
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True)
    pruner.step()
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True)
    pruner.step()  # a second pruner on the pruned model: rope_dims compose
    for b in model.blocks:
        dims, a = b.attn.rope_dims, b.attn
        assert a.head_dim == len(dims) == 2 * int(int(d0 / 2 * 0.75) * 0.75)
        kept = set(dims)
        assert all((i in kept) == (j in kept) for i, j in rope_pairs(d0, False))  # whole rotary pairs only
    _fused_equals_eager_and_round_trips(model, x, tmp_path)
    stock, _ = _timm_model("eva02")  # a stock tp pruner removing arbitrary head dims: refused at sync
    kw = tpv.vit_pruning_kwargs(stock)
    tp.pruner.BasePruner(stock, x[:1], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                         prune_head_dims=True, **kw).step()  # fmt: skip
    with pytest.raises(ValueError, match="rotary"):
        tpv.sync_attention(stock, kw["num_heads"])
    beit, xb = _timm_model("beit")
    tpv.ViTPruner(beit, xb[:1], pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True).step()
    assert all(b.attn.head_dim == 12 for b in beit.blocks)
    fused, eager = fused_and_eager(beit, xb)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["beit", "cait"])
def test_stock_tp_prunes_width_and_sync_refuses_heads_it_cannot_see(key):
    model, x = _timm_model(key)
    kw = tpv.vit_pruning_kwargs(model)
    tp.pruner.BasePruner(model, x[:1], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25, **kw).step()
    tpv.sync_attention(model, kw["num_heads"])
    assert all(b.mlp.fc1.out_features == 144 for b in model.blocks)
    for b in model.blocks:  # tp never touches the per-head tables and mixers
        for p in (
            getattr(b.attn, "relative_position_bias_table", None),
            getattr(getattr(b.attn, "proj_l", None), "weight", None),
        ):
            assert p is None or p.shape[-1] == 3
    heads, x2 = _timm_model(key)
    kw = tpv.vit_pruning_kwargs(heads)
    tp.pruner.BasePruner(heads, x2[:1], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                         head_pruning_ratio=0.34, prune_num_heads=True, **kw).step()  # fmt: skip
    with pytest.raises(ValueError, match="ViTPruner"):
        tpv.sync_attention(heads, kw["num_heads"])


def _swin():
    torch.manual_seed(0)
    kw = dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=32, num_classes=10)
    model = _randomise(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kw).eval())
    return model, torch.randn(3, 3, 56, 56)


def test_swin_prunes_heads_head_dims_and_mlp_per_stage(tmp_path):
    """Swin: heads, head dims and MLP dims of every stage prune; tokens, GOHSP and residual dims are refused."""

    model, x = _swin()
    with torch.no_grad():
        ref = model(x)
    before, keys = snapshot(model), set(model.state_dict())
    with pytest.raises(ValueError, match="PatchMerging"):
        tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, prune_embed_dim=True)
    assert state_equal(before, model.state_dict()) and set(model.state_dict()) == keys
    for attempt, words in (
        (lambda: tpv.cpvit.apply_cascade(model, keep_ratio=0.5), "windows"),
        (lambda: tpv.GraphHeadImportance(progress=False).calibrate(model, [x]), "global token sequence"),
    ):
        with pytest.raises(UnsupportedModelError, match=words):
            attempt()
    assert state_equal(before, model.state_dict())
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, head_pruning_ratio=0.5, prune_head_dims=True)
    pruner.step()
    attns = [b.attn for stage in model.layers for b in stage.blocks]
    assert pruner.heads_per_layer() == [1, 2]  # per stage: 2 -> 1, 4 -> 2
    assert [a.relative_position_bias_table.shape[1] for a in attns] == [1, 2]
    assert [a.head_dim for a in attns] == [12, 12] and all(b.mlp.fc1.out_features < 4 * b.mlp.fc2.out_features
                                                           for stage in model.layers for b in stage.blocks)  # fmt: skip
    assert model.patch_embed.proj.out_channels == 32 and model.num_features == 64
    fused = _fused_equals_eager_and_round_trips(model, x, tmp_path)
    assert not torch.allclose(fused, ref, atol=1e-3)


def test_swin_head_removal_equals_zeroed_heads():
    """Masking equivalence: pruned == dense with the removed heads' proj columns zeroed."""
    dense, x = _swin()
    tpv.hosts.timm.families.convert_attention(dense)  # head_dim / attn_dim attributes (timm's forward is kept)
    pruned = __import__("copy").deepcopy(dense)
    tpv.ViTPruner(pruned, x[:1], head_pruning_ratio=0.5).step()
    masked = __import__("copy").deepcopy(dense)
    with torch.no_grad():
        for stage0, stage1, stage_m in zip(dense.layers, pruned.layers, masked.layers):
            for b0, b1, bm in zip(stage0.blocks, stage1.blocks, stage_m.blocks):
                a0, a1 = b0.attn, b1.attn
                d, A0, A1 = a0.head_dim, a0.qkv.out_features // 3, a1.qkv.out_features // 3
                v0 = a0.qkv.weight[2 * A0 :].view(a0.num_heads, -1)
                v1 = a1.qkv.weight[2 * A1 :].view(a1.num_heads, -1)
                kept = {h for h in range(a0.num_heads) for row in v1 if torch.equal(v0[h], row)}
                assert len(kept) == a1.num_heads
                for h in set(range(a0.num_heads)) - kept:
                    bm.attn.proj.weight[:, h * d : (h + 1) * d] = 0
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pruned(x), dense(x), atol=1e-3)


def test_swin_failed_step_rolls_back_tables_and_heads():
    """A step failing after the head pass (tables already cut) restores every stage exactly."""
    model, x = _swin()
    tpv.hosts.timm.families.convert_attention(model)

    class Failing(tp.importance.GroupMagnitudeImportance):
        calls = 0

        def __call__(self, group):
            Failing.calls += 1
            if Failing.calls > 2:  # the two head-score calls pass, the width pass fails
                raise RuntimeError("importance failed mid-step")
            return super().__call__(group)

    before = snapshot(model)
    with torch.no_grad():
        ref = model(x)
    pruner = tpv.ViTPruner(model, x[:1], Failing(p=2), pruning_ratio=0.25, head_pruning_ratio=0.5)
    with pytest.raises(RuntimeError, match="mid-step"):
        pruner.step()
    assert state_equal(before, model.state_dict()) and pruner.heads_per_layer() == [2, 4]
    assert [b.attn.relative_position_bias_table.shape[1] for s in model.layers for b in s.blocks] == [2, 4]
    with torch.no_grad():
        assert torch.equal(model(x), ref)
