"""Unsupported timm families are refused before anything changes (issue 16, item 3)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from conftest import snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.core.adapter import UnsupportedModelError, check_supported

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)

UNSUPPORTED = {
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, num_classes=10), "EVA / EVA02"),
    "beit": ("beit_base_patch16_224", TINY, "BEiT"),
    "cait": ("cait_xxs24_224", TINY, "CaiT"),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=32, num_classes=10),
        "Swin",
    ),  # fmt: skip
    "vit_relpos": ("vit_relpos_small_patch16_224", TINY, "vit_relpos"),
    "pit": ("pit_ti_224", dict(img_size=64, num_classes=10), "PiT"),
}


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
    assert not tpv.is_timm_vit(model)
    attempts = [
        lambda: tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, head_pruning_ratio=0.3),
        lambda: tpv.VTPPruner(model, x[:1]),
        lambda: tpv.GraphHeadImportance(progress=False).calibrate(model, [x]),
        lambda: tpv.CumulativeHeadImportance().calibrate(model, [x]),
        lambda: tpv.tokens.apply_cascade(model, keep_ratio=0.5),
        lambda: tpv.vit_pruning_kwargs(model),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match=words):
            attempt()
    assert state_equal(before, model.state_dict()) and _hooks(model) == hooks
    with torch.no_grad():
        model(x)  # still works


def test_torchvision_vit_is_refused():
    tv = pytest.importorskip("torchvision")
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48,
                                        mlp_dim=96, num_classes=10)  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="not a timm VisionTransformer"):
        tpv.ViTPruner(model, torch.randn(1, 3, 32, 32), pruning_ratio=0.3)


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
    from conftest import fused_and_eager

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    check_supported(model)
    pool_before = {k: v.clone() for k, v in model.attn_pool.state_dict().items()}
    with pytest.raises(ValueError, match="attention-pool"):
        tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, prune_embed_dim=True)
    pruner = tpv.ViTPruner(model, x[:1], pruning_ratio=0.3, head_pruning_ratio=0.34, prune_head_dims=True)
    pruner.step()
    assert pruner.heads_per_layer() == [2, 2] and model.blocks[0].mlp.fc1.out_features < 192
    pool_after = model.attn_pool.state_dict()
    assert pool_after.keys() == pool_before.keys() and all(torch.equal(pool_before[k], pool_after[k]) for k in pool_before)
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    tpv.save_pruned(model, tmp_path / "m")
    loaded = tpv.load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    assert [v.numel() for v in imp.head_scores.values()] == [2, 2]
    with torch.no_grad():
        ref = model(x)
        tpv.tokens.apply_cascade(model, keep_ratio=0.5)  # the pool attends over the tokens that are left
        assert model(x).shape == (3, 10) and not torch.allclose(model(x), ref, atol=1e-4)
        tpv.tokens.remove_cascade(model)
        assert torch.equal(model(x), ref)
    # stock tp with the kwargs: the residual stream is left alone, the model still runs
    stock = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, **TINY).eval()
    kw = tpv.vit_pruning_kwargs(stock)
    tp.pruner.BasePruner(stock, x[:1], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.3, **kw).step()
    tpv.sync_attention(stock, kw["num_heads"])
    assert stock.patch_embed.proj.out_channels == 48 and stock.blocks[0].mlp.fc1.out_features < 192
    with torch.no_grad():
        assert stock(x).shape == (3, 10)
