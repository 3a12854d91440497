"""Hugging Face transformers ViT / DeiT / DINOv2: converted exactly, pruned consistently, saved, exported (tiny configs)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
from conftest import HF_FAMILIES

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.timm.structure import attention_modules

transformers = pytest.importorskip("transformers")

_COMMON = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_labels=10)
FAMILIES = HF_FAMILIES


def make(family: str, attn: str = "sdpa") -> torch.nn.Module:
    cls, cfg_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, cfg_cls)(**_COMMON, **extra)
    config._attn_implementation = attn
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():  # transformers zero-inits biases and tokens: make every term matter
        for n, p in model.named_parameters():
            if p.dim() == 1 or "token" in n or "position" in n:
                p.normal_(0, 0.3)
    return model


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_import_does_not_import_transformers():
    code = "import tp_vit_plugins as t, sys; t.ViTPruner; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_conversion_is_exact(family, attn):
    model = make(family, attn)
    ref = logits(model, X)
    tpv.sync_attention(model)  # converts q/k/v/o into the fused layout
    assert all(type(a).__name__ == "PrunableHFAttention" for _, a in attention_modules(model))
    torch.testing.assert_close(logits(model, X), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heads_head_dims_and_mlp_prune_consistently_and_save_load_export(family, tmp_path):
    model = make(family)
    tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.5, pruning_ratio=0.25, prune_head_dims=True).step()
    attns = [a for _, a in attention_modules(model)]
    assert all(a.num_heads == 2 and a.head_dim < 12 and a.qkv.out_features == 3 * a.num_heads * a.head_dim for a in attns)
    fused = logits(model, X)
    for a in attns:
        a.fused_attn = False
    torch.testing.assert_close(logits(model, X), fused, atol=1e-5, rtol=1e-5)  # eager == sdpa after pruning
    tpv.save_pruned(model, tmp_path / "saved")
    loaded = tpv.load_pruned(tmp_path / "saved")
    torch.testing.assert_close(logits(loaded, X), logits(model, X), atol=0, rtol=0)
    pytest.importorskip("onnxruntime")
    assert tpv.export_onnx(model, X, tmp_path / "m.onnx").max_abs_diff <= 1e-4


def test_removed_heads_equal_the_dense_model_with_those_heads_zeroed():
    dense = make("vit")
    tpv.sync_attention(dense)
    pruned = copy.deepcopy(dense)
    tpv.ViTPruner(pruned, X[:1], head_pruning_ratio=0.5).step()
    for (_, a_dense), (_, a_pruned) in zip(attention_modules(dense), attention_modules(pruned)):
        C, d = a_dense.attn_dim, a_dense.head_dim
        v_dense = a_dense.qkv.weight[2 * C :].view(a_dense.num_heads, d, -1)
        v_kept = a_pruned.qkv.weight[2 * a_pruned.attn_dim :].view(a_pruned.num_heads, d, -1)
        kept = [next(h for h in range(a_dense.num_heads) if torch.equal(v_dense[h], v)) for v in v_kept]
        with torch.no_grad():  # a head whose values are zero adds nothing: removing it is the same
            for h in set(range(a_dense.num_heads)) - set(kept):
                a_dense.qkv.weight[2 * C + h * d : 2 * C + (h + 1) * d] = 0
                a_dense.qkv.bias[2 * C + h * d : 2 * C + (h + 1) * d] = 0
    torch.testing.assert_close(logits(pruned, X), logits(dense, X), atol=1e-5, rtol=1e-5)


def test_a_stock_tp_pruner_with_the_kwargs_and_sync():
    model = make("dinov2")
    pruner = tp.pruner.BasePruner(model, X[:1], importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                                  **tpv.vit_pruning_kwargs(model))  # fmt: skip
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    assert model.dinov2.embeddings.patch_embeddings.projection.out_channels == 48  # the residual width is kept
    assert logits(model, X).shape == (3, 10)


def test_methods_run():
    data = [(X, torch.randint(0, 10, (3,)))]
    model = make("vit")
    imp = tpv.GraphHeadImportance(preset="paper", progress=False).calibrate(model, data)
    pruner = tpv.GOHSPPruner(model, X[:1], imp, pruning_ratio=0.3)
    pruner.calibrate_fisher(data, progress=False)
    pruner.step()
    assert tpv.utils.count_params(model) <= 0.7 * tpv.utils.count_params(make("vit")) + 1
    model = make("deit_teacher")
    vtp = tpv.VTPPruner(model, X[:1], pruning_ratio=0.3, sparse_steps=2)
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(X).logits, data[0][1]).backward()
        vtp.regularize(model)
        model.zero_grad()
    vtp.step()
    assert logits(model, X).shape == (3, 10)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_flow_graph_reads_each_classifier(family):
    model = make(family)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [X])
    assert imp.graph_kind == "flow" and all(p.sum() > 0 for p in imp.pagerank.values())
    backbone = transformers.ViTModel(transformers.ViTConfig(**{**_COMMON, "intermediate_size": 96})).eval()
    assert tpv.GraphHeadImportance(progress=False).calibrate(backbone, [X]).graph_kind == "similarity"  # no classifier


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_halves_are_the_layers_own_forward(family):
    from tp_vit_plugins.hosts.timm.blocks import block_halves, token_blocks

    model = make(family)
    h = torch.randn(3, 17 + (family == "deit_teacher") + 2 * (family == "dinov2_registers"), 48)
    for layer in token_blocks(model):
        halves = block_halves(layer)
        with torch.no_grad():
            torch.testing.assert_close(halves.mlp(layer, halves.attn(layer, h, None)), layer(h, None), atol=0, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_cascade_on_transformers_models(family, tmp_path):
    model = make(family)
    ref = logits(model, X)
    tpv.sync_attention(model)
    with pytest.raises(ValueError, match="calib"):  # the attention-range adjustment needs calibration first
        tpv.apply_cascade(model, "paper")
    cascade = tpv.apply_cascade(model, keep_ratio=1.0)
    assert torch.equal(logits(model, X), ref)  # keeping every token is the model itself
    cascade.remove()
    for options in (dict(keep_ratio=0.5), dict(keep_ratio=0.5, fold="drop", head_keep_ratio=0.5)):
        cascade = tpv.apply_cascade(model, **options)
        out = logits(model, X)
        assert cascade.last.counts == [16, 8] and tpv.cpvit.find_cascade(model) is cascade
        alone = torch.cat([logits(model, X[i : i + 1]) for i in range(len(X))])
        torch.testing.assert_close(alone, out, atol=1e-5, rtol=1e-5)  # an image's output ignores its batch
        counted = tpv.count_macs(model, X[:1])
        assert counted == tpv.cpvit.cascade_macs(model, (3, 32, 32), **options) < tpv.count_macs(make(family), X[:1])
        cascade.remove()
        assert tpv.cpvit.find_cascade(model) is None and torch.equal(logits(model, X), ref)
    cascade = tpv.apply_cascade(model, "paper", calib=[X])
    logits(model, X)
    assert cascade.last.heads_kept and max(cascade.last.heads_kept) < 4  # heads skipped per input
    cascade.remove()
    tpv.apply_cascade(model, keep_ratio=0.5, fold="drop")
    pytest.importorskip("onnxruntime")
    assert tpv.export_onnx(model, X, tmp_path / "m.onnx").max_abs_diff <= 1e-4


def test_dropping_a_token_equals_masking_it_as_a_key():
    model = make("vit")
    options = dict(keep_ratio=0.5, prune_at="block", trim_last=False)
    cascade = tpv.apply_cascade(model, fold="drop", **options)
    dropped = logits(model, X)
    cascade.remove()
    tpv.apply_cascade(model, mode="mask", **options)
    torch.testing.assert_close(logits(model, X), dropped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["vit", "deit_teacher"])
def test_the_embedding_width_prunes_and_saves(family, tmp_path):
    model = make(family)
    tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, head_pruning_ratio=0.5, prune_embed_dim=True).step()
    assert tpv.hosts.transformers.patch_projection(model).out_channels == model.config.hidden_size == 36
    fused = logits(model, X)
    for _, a in attention_modules(model):
        a.fused_attn = False
    torch.testing.assert_close(logits(model, X), fused, atol=1e-5, rtol=1e-5)
    tpv.save_pruned(model, tmp_path / "saved")
    torch.testing.assert_close(logits(tpv.load_pruned(tmp_path / "saved"), X), logits(model, X), atol=0, rtol=0)


def test_backbones_prune_their_width_and_a_dinov2_classifier_keeps_it():
    for cls, config in (("Dinov2Model", transformers.Dinov2Config(**_COMMON, mlp_ratio=2)),
                        ("ViTModel", transformers.ViTConfig(**_COMMON, intermediate_size=96))):  # fmt: skip
        model = getattr(transformers, cls)(config).eval()
        tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, prune_embed_dim=True).step()
        with torch.no_grad():
            out = model(X)
        assert out.last_hidden_state.shape == (3, 17, 36) and out.pooler_output.shape[-1] in (36, 48)
    model = make("dinov2")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="concatenated"):
        tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, prune_embed_dim=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_transformers_models_are_refused_before_anything_changes():
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    swin = transformers.SwinForImageClassification(config).eval()
    keys = set(swin.state_dict())
    with pytest.raises(tpv.UnsupportedModelError, match="not supported"):
        tpv.ViTPruner(swin, torch.randn(1, 3, 32, 32), head_pruning_ratio=0.5)
    assert set(swin.state_dict()) == keys


@pytest.mark.slow
def test_the_cli_prunes_a_local_transformers_directory_and_exports_its_save(tmp_path, capsys):
    from tp_vit_plugins.demo import cli
    from tp_vit_plugins.demo import prune as prune_cmd

    make("dinov2").save_pretrained(tmp_path / "hf")
    argv = ["prune", "--model", str(tmp_path / "hf"), "--method", "l2", "--finetune-epochs", "0", "--no-latency", "--quiet",
            "--out", str(tmp_path / "pruned")]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    cli.validate_prune(args)
    r = prune_cmd.run_prune(cli.prune_options(args))
    assert r.after.heads == [2, 2] and r.pruned.macs < r.dense.macs
    argv = ["prune", "--model", str(tmp_path / "hf"), "--method", "cpvit", "--keep-ratio", "0.5", "--finetune-epochs", "0",
            "--no-latency", "--quiet"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    cli.validate_prune(args)
    r = prune_cmd.run_prune(cli.prune_options(args))
    assert r.token_schedule == [16, 8] and r.pruned.macs < r.dense.macs  # the cascade on a transformers model
    pytest.importorskip("onnxruntime")
    assert cli.main(["export", str(tmp_path / "pruned"), str(tmp_path / "m.onnx"), "--latency-batch-sizes", "1"]) == 0
    assert "max |diff|" in capsys.readouterr().out


@pytest.mark.parametrize("name", tpv.hosts.transformers.SUPPORTED)
def test_every_supported_class_prunes_fits_a_budget_and_takes_the_cascade(name):
    cls = getattr(transformers, name)
    torch.manual_seed(0)
    extra = dict(mlp_ratio=2) if name.startswith("Dinov2") else dict(intermediate_size=96)
    model = cls(cls.config_class(**{**_COMMON, "num_labels": 10}, **extra)).eval()
    out = tpv.hosts.transformers.output_logits
    with torch.no_grad():
        ref = out(model(X))
    res = tpv.fit_budget(model, X[:1], keep_ratio=0.6, importance=tp.importance.GroupMagnitudeImportance(p=2))
    assert abs(res.achieved - 0.6) <= 0.01 * 0.6 and type(res.model) is cls
    with torch.no_grad():
        torch.testing.assert_close(out(model(X)), ref, atol=1e-5, rtol=1e-5)  # fit_budget prunes a copy
    tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.25, global_pruning=True).step()
    assert sum(a.num_heads for _, a in attention_modules(model)) == 6  # 2 of 8 heads, anywhere
    cascade = tpv.apply_cascade(model, keep_ratio=0.5, fold="drop")
    with torch.no_grad():
        model(X)
    assert cascade.last.counts == [16, 8]
