"""MACs, parameter and latency measurements."""

from __future__ import annotations

import torch
from conftest import make_model

from tp_vit_plugins.metrics import count_macs, count_params, measure_latency


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


def test_params_and_latency():
    model = make_model("vit")
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    lat = measure_latency(model, torch.randn(1, 3, 32, 32), batch_sizes=(1, 4), min_run_time=0.05, warmup=1)
    assert set(lat) == {1, 4} and all(v > 0 for v in lat.values())
    assert model.training is False
