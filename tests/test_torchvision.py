"""The torchvision host: exact conversion, the block halves, refusals, capture clean-up, export."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import snapshot, state_equal
from torch import nn

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts import host_for

vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
from tp_vit_plugins.hosts.torchvision import PrunableMHAttention  # noqa: E402

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    model = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=48,
                                                 mlp_dim=96, num_classes=10, **kw).eval()  # fmt: skip
    with torch.no_grad():  # torchvision zero-inits the head and token: make every term matter
        for n, p in model.named_parameters():
            if p.dim() == 1 or "token" in n or "pos" in n:
                p.normal_(0, 0.3)
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def test_the_host_claims_torchvision_vits():
    assert host_for(_model()).name == "torchvision"


def test_conversion_is_exact_fused_and_eager():
    model = _model()
    with torch.no_grad():
        ref = model(X)
        tpv.vit_pruning_kwargs(model)  # converts in place
        assert all(isinstance(layer.self_attention, PrunableMHAttention) for layer in model.encoder.layers)
        torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-5)
        with tpv.utils.eager_attention(model):
            torch.testing.assert_close(model(X), ref, atol=1e-5, rtol=1e-5)
    tpv.vit_pruning_kwargs(model)  # idempotent
    assert sum(isinstance(m, PrunableMHAttention) for m in model.modules()) == 2


def test_block_halves_are_the_blocks_forward():
    model = _model()
    host = host_for(model)
    host.attention_modules(model)
    x = torch.randn(2, 17, 48)
    for block in host.token_blocks(model):
        halves = host.block_halves(block)
        with torch.no_grad():
            torch.testing.assert_close(halves.mlp(block, halves.attn(block, x)), block(x), atol=1e-6, rtol=1e-6)


def test_attention_maps_capture_and_clean_up():
    model = _model()
    with torch.no_grad(), tpv.utils.attention_maps(model) as maps:
        model(X)
    assert [tuple(m.shape) for m in maps] == [(3, 4, 17, 17)] * 2
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 17))
    attns = [layer.self_attention for layer in model.encoder.layers]
    assert all(a.fused_attn for a in attns) and not any(a.attn_drop._forward_hooks for a in attns)


def test_a_stem_or_another_model_is_refused_before_anything_changes():
    stem = _model(conv_stem_configs=[vision_transformer.ConvStemConfig(out_channels=8, kernel_size=3, stride=8)])
    before, types = snapshot(stem), {type(m) for m in stem.modules()}
    with pytest.raises(tpv.UnsupportedModelError, match="convolutional stem"):
        tpv.ViTPruner(stem, X[:1], head_pruning_ratio=0.5)
    assert state_equal(before, stem.state_dict()) and {type(m) for m in stem.modules()} == types
    resnet = pytest.importorskip("torchvision.models").resnet18(num_classes=10)
    with pytest.raises(tpv.UnsupportedModelError, match="torchvision.models.VisionTransformer"):
        tpv.vit_pruning_kwargs(resnet)


def test_a_pruned_torchvision_vit_saves_loads_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model(representation_size=24)
    tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, head_pruning_ratio=0.5, prune_head_dims=True, prune_embed_dim=True).step()
    assert model.hidden_dim == model.conv_proj.out_channels < 48
    tpv.save_pruned(model, tmp_path / "m")
    loaded = tpv.load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    report = tpv.export_onnx(copy.deepcopy(loaded), X[:1], tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-4


@pytest.mark.slow
def test_the_torchvision_example_runs(capsys):
    import pathlib
    import runpy

    runpy.run_path(str(pathlib.Path(__file__).parents[1] / "examples" / "torchvision_tp_script.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "heads per block: [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]" in out and "save / load max |diff| 0.0" in out
