"""ONNX export: every supported family, pruned and cascaded, matches eager in onnxruntime at two batch sizes."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from test_support_matrix import SUPPORT, _model

import tp_vit_plugins as tpv

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAMILIES = sorted(SUPPORT)
TOKEN_FAMILIES = [f for f in FAMILIES if SUPPORT[f]["tokens"]]


def _pruned(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model, x = _model(family)
    tpv.ViTPruner(model, x[:1], head_pruning_ratio=0.5, pruning_ratio=0.25).step()
    return model, x


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_models_export_and_match_eager(family, tmp_path):
    model, x = _pruned(family)
    before = copy.deepcopy(model.state_dict())
    report = tpv.export_onnx(model, x[:1], tmp_path / "m.onnx", check_batch_sizes=(1, 5))
    assert report.max_abs_diff <= 1e-4 and report.checked_batch_sizes == (1, 5) and report.size_bytes > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is left as it was


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
@pytest.mark.parametrize("options", [{}, {"fold": "drop", "head_keep_ratio": 0.5}], ids=["merge", "drop+heads"])
def test_cascaded_models_export_and_match_eager(family, options, tmp_path):
    model, x = _pruned(family)
    if family == "cait":
        options = {k: v for k, v in options.items() if k != "head_keep_ratio"}  # talking heads mix every head
    cascade = tpv.apply_cascade(model, keep_ratio=0.5, **options)
    report = tpv.export_onnx(model, x, tmp_path / "m.onnx", check_batch_sizes=(2, 7))
    assert report.max_abs_diff <= 1e-4
    with torch.no_grad():  # the exported graph really drops tokens: the cascade ran inside it
        model(x[:1])
    assert cascade.last.counts[-1] < cascade.num_patches or cascade.state.counts[-1] < cascade.num_patches


def test_saved_and_loaded_models_export_alike(tmp_path):
    model, x = _pruned("deit_distilled")
    tpv.save_pruned(model, tmp_path / "saved")
    loaded = tpv.load_pruned(tmp_path / "saved")
    a = tpv.export_onnx(model, x, tmp_path / "a.onnx")
    b = tpv.export_onnx(loaded, x, tmp_path / "b.onnx")
    from tp_vit_plugins.export import _run, onnx_session

    torch.testing.assert_close(_run(onnx_session(a.path), x), _run(onnx_session(b.path), x), atol=1e-5, rtol=1e-5)


def test_a_stock_tp_pruner_model_exports(tmp_path):
    import torch_pruning as tp

    model, x = _model("vit")
    pruner = tp.pruner.BasePruner(model, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                                  **tpv.vit_pruning_kwargs(model))  # fmt: skip
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    assert tpv.export_onnx(model, x, tmp_path / "m.onnx").max_abs_diff <= 1e-4


def test_missing_onnxruntime_is_a_clear_error_before_anything_is_written(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # any import of it now fails, as when not installed
    model, x = _model("vit")
    with pytest.raises(ImportError, match=r"tp-vit-plugins\[export\]"):
        tpv.export_onnx(model, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_inputs_are_refused(tmp_path):
    model, x = _model("vit")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        tpv.export_onnx(model, x[0], tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="nn.Module"):
        tpv.export_onnx(lambda t: t, x, tmp_path / "m.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "eva02", "cait"])
def test_cascades_compile_without_graph_breaks_and_export_with_a_dynamic_batch(family):
    model, x = _pruned(family)
    tpv.apply_cascade(model, keep_ratio=0.5)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, fullgraph=True)  # a graph break would raise
        torch.testing.assert_close(compiled(x), ref, atol=1e-4, rtol=1e-4)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    x7 = torch.randn(7, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x7), model(x7), atol=1e-4, rtol=1e-4)
