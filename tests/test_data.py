"""Embedded datasets: deterministic, stratified splits."""

from __future__ import annotations

import pytest
import torch

from tp_vit_plugins.demo.data import load_split, make_loaders


@pytest.mark.parametrize("name, size, n", [("mnist", 28, 5000), ("digits", 8, 1797)])
def test_splits_are_deterministic_and_stratified(name, size, n):
    a, b = load_split(name), load_split(name)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape[1:] == (1, size, size) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == n
    counts = torch.bincount(a.y_test, minlength=10).float()
    assert counts.max() - counts.min() <= 2  # every class ~20 %
    assert abs(float(a.x_train.mean())) < 0.3  # normalised


def test_split_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("imagenet")
    with pytest.raises(ValueError, match="test_fraction"):
        load_split("digits", test_fraction=1.0)


def test_loaders_are_seeded():
    split = load_split("digits")
    first = [next(iter(make_loaders(split, batch_size=8, seed=s)[0]))[1] for s in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
