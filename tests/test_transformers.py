"""Hugging Face ViT / DeiT / DINOv2: read without change, pruned in place as transformers modules, saved, exported."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
from conftest import HF_FAMILIES

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.transformers import attention_modules

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


def _eager_and_sdpa(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    impl = model.config._attn_implementation
    out = []
    for name in ("eager", "sdpa"):
        model.set_attn_implementation(name)
        out.append(logits(model, X))
    model.set_attn_implementation(impl)
    return out[0], out[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reading_a_model_changes_nothing(family, attn):
    model = make(family, attn)
    ref, keys, kinds = logits(model, X), list(model.state_dict()), [type(m) for m in model.modules()]
    tpv.GraphHeadImportance(progress=False).calibrate(model, [X])
    tpv.CumulativeHeadImportance(progress=False).calibrate(model, [X])
    tpv.vit_pruning_kwargs(model)
    tpv.count_macs(model, X[:1])
    tpv.cpvit.cascade_macs(model, (3, 32, 32), keep_ratio=0.5)
    pruned = tpv.fit_budget(model, X[:1], keep_ratio=0.7).model  # a pruned copy
    assert pruned is not model and type(pruned.get_submodule(attention_modules(model)[0][0])) is type(
        attention_modules(model)[0][1]
    )
    tpv.sync_attention(model)  # nothing pruned: nothing to change
    assert list(model.state_dict()) == keys and [type(m) for m in model.modules()] == kinds
    assert model.config._attn_implementation == attn and not any(m._forward_hooks for m in model.modules())
    assert torch.equal(logits(model, X), ref)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heads_head_dims_and_mlp_prune_consistently_and_save_load_export(family, tmp_path):
    model = make(family)
    tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.5, pruning_ratio=0.25, prune_head_dims=True).step()
    attns = [a for _, a in attention_modules(model)]
    assert all(type(a).__name__.endswith("Attention") and a.num_attention_heads == 2 and a.head_dim < 12 for a in attns)
    assert all(p.out_features == a.num_attention_heads * a.head_dim for a in attns for p in (a.q_proj, a.k_proj, a.v_proj))
    assert all(a.scaling == 12**-0.5 for a in attns)  # the trained logit scale is kept
    eager, sdpa = _eager_and_sdpa(model)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)  # eager == sdpa after pruning
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(X, output_attentions=True).attentions
    assert [m.shape[1] for m in maps] == [2, 2]  # the pruned head counts
    model.set_attn_implementation("sdpa")
    tpv.save_pruned(model, tmp_path / "saved")
    loaded = tpv.load_pruned(tmp_path / "saved")
    torch.testing.assert_close(logits(loaded, X), logits(model, X), atol=0, rtol=0)
    pytest.importorskip("onnxruntime")
    assert tpv.export_onnx(model, X, tmp_path / "m.onnx").max_abs_diff <= 1e-4


def test_removed_heads_equal_the_dense_model_with_those_heads_zeroed():
    dense = make("vit")
    pruned = copy.deepcopy(dense)
    tpv.ViTPruner(pruned, X[:1], head_pruning_ratio=0.5).step()
    for (_, a_dense), (_, a_pruned) in zip(attention_modules(dense), attention_modules(pruned)):
        H, d = a_dense.num_attention_heads, a_dense.head_dim
        v_dense = a_dense.v_proj.weight.view(H, d, -1)
        v_kept = a_pruned.v_proj.weight.view(a_pruned.num_attention_heads, d, -1)
        kept = [next(h for h in range(H) if torch.equal(v_dense[h], v)) for v in v_kept]
        with torch.no_grad():  # a head whose values are zero adds nothing: removing it is the same
            for h in set(range(H)) - set(kept):
                a_dense.v_proj.weight[h * d : (h + 1) * d] = 0
                a_dense.v_proj.bias[h * d : (h + 1) * d] = 0
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
    imp = tpv.GraphHeadImportance(config="paper", progress=False).calibrate(model, data)
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
    from tp_vit_plugins.hosts import host_for

    model = make(family)
    host = host_for(model)
    h = torch.randn(3, 17 + (family == "deit_teacher") + 2 * (family == "dinov2_registers"), 48)
    for layer in host.token_blocks(model):
        halves = host.block_halves(layer)
        with torch.no_grad():
            torch.testing.assert_close(halves.mlp(layer, halves.attn(layer, h, None)), layer(h, None), atol=0, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_cascade_on_transformers_models(family, tmp_path):
    model = make(family)
    ref = logits(model, X)
    tpv.sync_attention(model)
    with pytest.raises(ValueError, match="calib"):  # the attention-range adjustment needs calibration first
        tpv.apply_cascade(model, "paper")
    kinds = [type(m) for m in model.modules()]
    cascade = tpv.apply_cascade(model, keep_ratio=1.0)
    assert [type(m) for m in model.modules()] == kinds  # no module replaced: instance forwards and hooks only
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
    cascade = tpv.apply_cascade(model, "paper", calib=[X], keep_ratio=0.8)  # 2 blocks: a mean keep above 1/2
    logits(model, X)
    assert cascade.last.heads_kept and max(cascade.last.heads_kept) < 4  # heads skipped per input
    cascade.remove()
    tpv.apply_cascade(model, keep_ratio=0.5, fold="drop")
    want = logits(model, X)
    loaded = tpv.load_pruned(tpv.save_pruned(model, tmp_path / "saved"))  # the cascade travels with the save
    assert tpv.cpvit.find_cascade(loaded) is not None and torch.equal(logits(loaded, X), want)
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
    torch.testing.assert_close(*_eager_and_sdpa(model), atol=1e-5, rtol=1e-5)
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
    assert sum(a.num_attention_heads for _, a in attention_modules(model)) == 6  # 2 of 8 heads, anywhere
    cascade = tpv.apply_cascade(model, keep_ratio=0.5, fold="drop")
    with torch.no_grad():
        model(X)
    assert cascade.last.counts == [16, 8]


def test_the_tp_kwargs_name_the_models_own_projections():
    model = make("vit")
    kw = tpv.vit_pruning_kwargs(model)
    q, k, v = (getattr(model.vit.layers[0].attention, f"{p}_proj") for p in "qkv")
    assert kw["num_heads"][q] == kw["num_heads"][k] == kw["num_heads"][v] == 4
    assert model.classifier in kw["ignored_layers"]


@pytest.mark.parametrize("uniform", [True, False])
def test_save_pretrained_then_from_pretrained_rebuilds_the_pruned_model(uniform, tmp_path):
    model = make("vit")
    if uniform:  # every layer the same: the config alone describes it
        tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.5, pruning_ratio=0.25).step()
    else:
        tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.25, global_head_pruning=True, pruning_ratio=0.25,
                      global_pruning=True, prune_head_dims=True).step()  # fmt: skip
    sizes = tpv.hosts.transformers.layer_sizes(model)
    model.save_pretrained(tmp_path)
    loaded = tpv.hosts.transformers.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and tpv.hosts.transformers.layer_sizes(loaded) == sizes
    torch.testing.assert_close(logits(loaded, X), logits(model, X), atol=0, rtol=0)
    if uniform:
        assert model.config.num_attention_heads == 2 and model.config.intermediate_size == sizes[0]["intermediate_size"]
        plain = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(logits(plain, X), logits(model, X), atol=0, rtol=0)
    else:  # per-layer sizes: the config holds no single (false) value, and transformers alone refuses it loudly
        assert model.config.num_attention_heads is None and model.config.tpv_layers == sizes
        with pytest.raises(Exception, match="num_attention_heads"):
            transformers.ViTForImageClassification.from_pretrained(tmp_path)


def test_lora_on_a_pruned_model():
    peft = pytest.importorskip("peft")
    model = make("vit")
    tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.5, pruning_ratio=0.25).step()
    ref = logits(model, X)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    assert lora.base_model.model.vit.layers[0].attention.q_proj.base_layer.out_features == 24  # 2 heads x 12
    with torch.no_grad():
        torch.testing.assert_close(lora(pixel_values=X).logits, ref, atol=1e-6, rtol=1e-6)  # LoRA starts at zero
    torch.nn.functional.cross_entropy(lora(pixel_values=X).logits, torch.tensor([1, 2, 3])).backward()
    trained = [n for n, p in lora.named_parameters() if p.requires_grad and p.grad is not None]
    assert trained and all("lora_" in n or "classifier" in n for n in trained)
    with pytest.raises(tpv.UnsupportedModelError, match="prune before wrapping"):
        tpv.vit_pruning_kwargs(lora.base_model.model)


@pytest.mark.slow
def test_the_hf_tp_script_example_runs():
    import pathlib
    import runpy

    runpy.run_path(str(pathlib.Path(__file__).parents[1] / "examples" / "hf_tp_script.py"), run_name="__main__")


@pytest.mark.slow
def test_eager_sdpa_and_flex_attention_agree_after_pruning():
    """Every implementation reads the module's num_attention_heads / head_dim / scaling (flex compiles: slow)."""
    model = make("vit")
    tpv.ViTPruner(model, X[:1], head_pruning_ratio=0.5, pruning_ratio=0.25, prune_head_dims=True).step()
    outs = {}
    for impl in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(impl)
        outs[impl] = logits(model, X)
    for impl in ("sdpa", "flex_attention"):
        torch.testing.assert_close(outs[impl], outs["eager"], atol=1e-5, rtol=1e-5)
