"""The shipped embedded model: present, loadable, made by the current recipe, as accurate as recorded."""

from __future__ import annotations

import os

import pytest

from tp_vit_plugins.core.training import evaluate
from tp_vit_plugins.demo import embedded
from tp_vit_plugins.demo.data import make_loaders


def test_shipped_weights_match_the_recipe_and_the_recorded_accuracy(monkeypatch, tmp_path):
    monkeypatch.setenv("TPV_CACHE_DIR", str(tmp_path))  # an empty cache: nothing may come from there
    meta = embedded.shipped_meta()
    assert meta is not None, "run: python -m tp_vit_plugins.demo.embedded --ship"
    assert meta["key"] == embedded.EmbeddedRecipe().key()  # shipped weights belong to the current default recipe
    monkeypatch.setattr(embedded, "finetune", lambda *a, **k: pytest.fail("trained instead of using the shipped weights"))
    model, split, loaded = embedded.embedded_model()
    assert loaded["source"] == "shipped" and not os.listdir(tmp_path)
    _, test_loader = make_loaders(split, batch_size=256)
    assert evaluate(model, test_loader, progress=False) == pytest.approx(meta["test_accuracy"], abs=1e-9)
    assert meta["test_accuracy"] > 0.9


def test_another_recipe_never_touches_the_shipped_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("TPV_CACHE_DIR", str(tmp_path))
    other = embedded.EmbeddedRecipe(epochs=1)
    assert embedded.cache_path(other) != embedded.cache_path(embedded.EmbeddedRecipe())
    path = embedded.cache_path(other)
    assert path.startswith(str(tmp_path)) and not path.startswith(embedded.shipped_dir())
