"""Bad input raises a clear error and leaves the user's model exactly as it was."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from conftest import make_model, snapshot, state_equal
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.calibration import accumulate_gradients, collect_attention, iter_batches
from tp_vit_plugins.hosts.timm.structure import attention_modules


class Unchanged:
    """Context manager asserting state_dict, outputs, flags and hooks are untouched."""

    def __init__(self, model, x):
        self.model, self.x = model, x

    def __enter__(self):
        self.state = snapshot(self.model)
        self.flags = [a.fused_attn for _, a in attention_modules(self.model)]
        self.hooks = sum(len(m._forward_hooks) for m in self.model.modules())
        with torch.no_grad():
            self.y = self.model(self.x)
        return self

    def __exit__(self, *exc):
        assert state_equal(self.state, self.model.state_dict())
        assert [a.fused_attn for _, a in attention_modules(self.model)] == self.flags
        assert sum(len(m._forward_hooks) for m in self.model.modules()) == self.hooks
        with torch.no_grad():
            assert torch.equal(self.model(self.x), self.y)
        return False


def test_non_vit_model_is_a_type_error(x):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    for call in (
        lambda: tpv.vit_pruning_kwargs(model),
        lambda: tpv.sync_attention(model),
        lambda: tpv.ViTPruner(model, x, head_pruning_ratio=0.5),
    ):
        with pytest.raises(TypeError, match="VisionTransformer"):
            call()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
@pytest.mark.parametrize("which", ["pruning_ratio", "head_pruning_ratio"])
def test_ratio_outside_unit_interval(family, x, bad, which):
    model = make_model(family)
    with Unchanged(model, x), pytest.raises(ValueError, match=which):
        tpv.ViTPruner(model, x, **{which: bad})


def test_uniform_budget_leaving_zero_heads(x):
    model = make_model("vit", num_heads=2, embed_dim=48)  # 0.8 * 2 = 1.6 -> 2 removed
    with Unchanged(model, x), pytest.raises(ValueError, match="0 of its 2 heads"):
        tpv.ViTPruner(model, x, head_pruning_ratio=0.8)


def test_global_budget_beyond_min_heads(x):
    model = make_model("vit", num_heads=3)
    with Unchanged(model, x), pytest.raises(ValueError, match="min_heads=2"):
        tpv.ViTPruner(model, x, head_pruning_ratio=0.5, global_head_pruning=True, min_heads=2)


def test_contradictory_or_owned_kwargs(x):
    model = make_model()
    with Unchanged(model, x):
        with pytest.raises(ValueError, match="prune_num_heads=False"):
            tpv.ViTPruner(model, x, head_pruning_ratio=0.3, prune_num_heads=False)
        with pytest.raises(TypeError, match="num_heads"):
            tpv.ViTPruner(model, x, num_heads={})
        with pytest.raises(ValueError, match="min_heads"):
            tpv.ViTPruner(model, x, min_heads=0)


def test_empty_calibration_loader(family, x):
    model = make_model(family)
    empty = DataLoader(TensorDataset(torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long)), batch_size=4)
    with Unchanged(model, x):
        with pytest.raises(ValueError, match="no batches"):
            collect_attention(model, empty, lambda i, p: None, progress=False)
        with pytest.raises(ValueError, match="no batches"):
            accumulate_gradients(model, empty, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_malformed_calibration_batches(x):
    model = make_model()
    with Unchanged(model, x):
        with pytest.raises(TypeError, match="tensors or"):
            collect_attention(model, [{"image": x}], lambda i, p: None, progress=False)
        with pytest.raises(TypeError, match="needs labels"):
            accumulate_gradients(model, [x], progress=False)
        with pytest.raises(ValueError, match="max_batches"):
            list(iter_batches([x], max_batches=0))


class FailingImportance(tp.importance.GroupMagnitudeImportance):
    """Fails on the first width-pruning call, after the head pass already pruned heads."""

    def __init__(self, ok_calls: int):
        super().__init__(p=2)
        self.calls, self.ok_calls = 0, ok_calls

    def __call__(self, group):
        self.calls += 1
        if self.calls > self.ok_calls:
            raise RuntimeError("importance failed mid-step")
        return super().__call__(group)


def test_failed_step_rolls_back(family, x):
    model = make_model(family)
    pruner = tpv.ViTPruner(model, x, FailingImportance(ok_calls=2), pruning_ratio=0.25, head_pruning_ratio=0.34)
    with Unchanged(model, x), pytest.raises(RuntimeError, match="mid-step"):
        pruner.step()
    assert pruner.heads_per_layer() == [3, 3]
    assert [a.num_heads for _, a in attention_modules(model)] == [3, 3]
