"""MACs, parameter and latency measurements."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from tp_vit_plugins.core.metrics import count_macs, count_params, measure_latency


def vit_macs(batch, tokens, dim, depth, hidden, classes, patch_in):
    """Closed form for a timm ViT with cls token: patch embed + blocks + head."""
    patches = tokens - 1
    per_block = tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden) + 2 * tokens * tokens * dim
    return batch * (patches * patch_in * dim + depth * per_block + dim * classes)


def test_macs_closed_form_for_tiny_vit():
    model = make_model("vit")
    x = torch.randn(2, 3, 32, 32)
    assert count_macs(model, x) == vit_macs(2, 17, 48, 2, 192, 10, 3 * 8 * 8)


def test_macs_do_not_change_fused_flag_and_match_on_linear():
    model = make_model("vit")
    model.blocks[1].attn.fused_attn = False
    flags = [b.attn.fused_attn for b in model.blocks]
    count_macs(model, torch.randn(1, 3, 32, 32))
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert count_macs(torch.nn.Linear(7, 5), torch.randn(3, 7)) == 3 * 7 * 5


def test_macs_count_every_family_and_keep_requires_grad_flags(family):
    """CaiT's class-attention blocks expand the class token without grad; the count must still run."""
    model = make_model(family)
    model.patch_embed.proj.weight.requires_grad_(False)  # a frozen layer stays frozen, the rest stays trainable
    flags = [p.requires_grad for p in model.parameters()]
    dense = model.blocks[0].attn.qkv
    assert count_macs(model, torch.randn(2, 3, 32, 32)) > 2 * 17 * dense.in_features * dense.out_features
    assert [p.requires_grad for p in model.parameters()] == flags and not all(flags) and any(flags)


def test_params_and_latency():
    model = make_model("vit")
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    lat = measure_latency(model, torch.randn(1, 3, 32, 32), batch_sizes=(1, 4), min_run_time=0.05, warmup=1)
    assert set(lat) == {1, 4} and all(v > 0 for v in lat.values())
    assert model.training is False


def test_cuda_event_median_times_each_run_after_a_sync(monkeypatch):
    """The CUDA-event path with fake events (no GPU here): ms -> s, median, sync before reading."""
    from tp_vit_plugins.core import metrics

    clock = {"now": 0.0, "synced": False}

    class FakeEvent:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing
            self.t = None

        def record(self):
            clock["synced"] = False
            self.t = clock["now"]

        def elapsed_time(self, other):
            assert clock["synced"], "elapsed_time read before torch.cuda.synchronize()"
            return other.t - self.t

    def sync():
        clock["synced"] = True

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    durations = iter([3.0, 1.0, 2.0, 10.0, 2.5])  # milliseconds per run

    def run():
        clock["now"] += next(durations)

    assert metrics.cuda_event_median(run, repeats=5) == pytest.approx(2.5e-3)
    with pytest.raises(ValueError, match="repeats"):
        metrics.cuda_event_median(run, repeats=0)


def test_latency_errors():
    model = make_model("vit")
    x = torch.randn(1, 3, 32, 32)
    for kwargs, msg in (
        (dict(batch_sizes=(0,)), "batch sizes"),
        (dict(repeats=0), "repeats"),
        (dict(min_run_time=0), "min_run_time"),
    ):
        with pytest.raises(ValueError, match=msg):
            measure_latency(model, x, **kwargs)


def test_fused_attn_off_restores_every_flag_even_on_error():
    from tp_vit_plugins.core.metrics import fused_attn_off

    model = make_model()
    flags = [blk.attn.fused_attn for blk in model.blocks]
    model.blocks[0].attn.fused_attn = not flags[0]  # mixed flags come back as they were
    before = [blk.attn.fused_attn for blk in model.blocks]
    with pytest.raises(RuntimeError, match="boom"), fused_attn_off(b.attn for b in model.blocks):
        assert not any(blk.attn.fused_attn for blk in model.blocks)
        raise RuntimeError("boom")
    assert [blk.attn.fused_attn for blk in model.blocks] == before
