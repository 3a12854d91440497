"""save_pruned / load_pruned round trips and their errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import FIXED_EMBED, make_model

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts.timm.structure import attention_modules


@pytest.mark.parametrize("setting", ["dense", "heads", "everything"])
def test_round_trip_is_exact(family, x, tmp_path, setting):
    model = make_model(family)
    if setting == "heads":
        tpv.ViTPruner(model, x, head_pruning_ratio=0.34, global_head_pruning=True).step()
    elif setting == "everything":
        tpv.ViTPruner(
            model,
            x,
            pruning_ratio=0.3,
            head_pruning_ratio=0.34,
            prune_head_dims=True,
            prune_embed_dim=family not in FIXED_EMBED,
            global_pruning=True,
        ).step()
    tpv.save_pruned(model, tmp_path / "m")
    loaded = tpv.load_pruned(tmp_path / "m")
    assert type(loaded) is type(model)
    assert [(a.num_heads, a.head_dim, a.scale) for _, a in attention_modules(loaded)] == [
        (a.num_heads, a.head_dim, a.scale) for _, a in attention_modules(model)
    ]
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_files_are_safetensors_and_json(tmp_path, x):
    model = make_model("qk_norm")
    tpv.ViTPruner(model, x, pruning_ratio=0.25, prune_head_dims=True).step()
    path = tpv.save_pruned(model, tmp_path / "m")
    assert sorted(os.listdir(path)) == ["model.safetensors", "spec.json"]
    modes = {name: os.stat(os.path.join(path, name)).st_mode & 0o777 for name in os.listdir(path)}
    assert modes["model.safetensors"] == modes["spec.json"]  # both follow the umask (safetensors alone writes 0600)
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["class"] == "VisionTransformer"
    assert spec["attention"]["blocks.0.attn"]["head_dim"] == 12
    assert spec["shapes"]["blocks.1.mlp.fc1.weight"] == [144, 48]


def test_load_errors(tmp_path, x):
    with pytest.raises(FileNotFoundError, match="save_pruned"):
        tpv.load_pruned(tmp_path / "missing")
    tpv.save_pruned(make_model(), tmp_path / "m")
    spec_path = tmp_path / "m" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "class": "os.system"}))
    with pytest.raises(ValueError, match="not one of"):
        tpv.load_pruned(tmp_path / "m")
    spec_path.write_text(json.dumps({**spec, "shapes": {**spec["shapes"], "head.weight": [1, 1]}}))
    with pytest.raises(ValueError, match="does not match"):
        tpv.load_pruned(tmp_path / "m")
    spec_path.write_text("")
    with pytest.raises(ValueError, match=r"spec\.json is not valid JSON"):
        tpv.load_pruned(tmp_path / "m")
    spec_path.write_text(json.dumps({k: v for k, v in spec.items() if k != "shapes"}))
    with pytest.raises(ValueError, match="lacks shapes"):
        tpv.load_pruned(tmp_path / "m")
    spec_path.write_text(json.dumps(spec))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors cannot be read"):
        tpv.load_pruned(tmp_path / "m")


def test_save_rejects_unsupported_or_unsynced(tmp_path, x):
    with pytest.raises(TypeError, match="supports"):
        tpv.save_pruned(torch.nn.Linear(2, 2), tmp_path / "a")
    model = make_model()
    model.blocks[0].attn.num_heads = 2
    with pytest.raises(ValueError, match="sync_attention"):
        tpv.save_pruned(model, tmp_path / "b")


@pytest.mark.parametrize("preset", ["recommended", "paper"])
def test_a_saved_model_carries_its_cascade(tmp_path, x, preset):
    """save_pruned records the applied cascade (options + calibrated counts); load_pruned applies it again."""
    model = make_model("vit", depth=4)
    tpv.ViTPruner(model, x, head_pruning_ratio=0.34, global_head_pruning=True).step()
    calib = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    cascade = tpv.apply_cascade(model, preset, calib=calib, keep_ratio=0.5)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(images)
    tpv.save_pruned(model, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["cascade"]["counts"] == cascade.counts and spec["cascade"]["config"]["keep_ratio"] == 0.5
    loaded = tpv.load_pruned(tmp_path / "m")
    again = tpv.cpvit.find_cascade(loaded)
    assert again is not None and again.config == cascade.config and again.counts == cascade.counts
    assert again.localities == pytest.approx(cascade.localities)
    with torch.no_grad():
        assert torch.equal(loaded(images), want)
    assert again.last.counts == cascade.counts and len(again.last.counts) == len(loaded.blocks)
    bare = tpv.load_pruned(tmp_path / "m", cascade=False)
    assert tpv.cpvit.find_cascade(bare) is None
    cascade.remove()
    with torch.no_grad():
        assert torch.equal(bare(images), model(images))


def test_a_cascade_that_cannot_be_stored_is_refused_before_anything_is_written(tmp_path, x):
    model = make_model("vit")
    cascade = tpv.apply_cascade(model, keep_ratio=0.5, score=lambda probs, p: probs[:, :, 0, p:].mean(1))
    with pytest.raises(ValueError, match="custom token scorer"):
        tpv.save_pruned(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    cascade.remove()


def test_counts_that_do_not_fit_the_model_are_refused(x):
    model = make_model("vit", depth=4)
    with pytest.raises(ValueError, match="non-increasing patch-token counts"):
        tpv.apply_cascade(model, "paper", counts=[16, 12, 8])
    with pytest.raises(ValueError, match="not a cascade record"):
        tpv.cpvit.restore_cascade(model, {"counts": [16, 16, 16, 16]})
    assert tpv.cpvit.find_cascade(model) is None
