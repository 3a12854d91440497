"""One model, three hosts: a timm ViT and its transformers and torchvision conversions prune to the same structure and logits."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch_pruning as tp

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts import host_for
from tp_vit_plugins.hosts.torchvision import from_timm as to_torchvision

pytest.importorskip("transformers")
from tp_vit_plugins.hosts.transformers import from_timm  # noqa: E402

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
Y = torch.arange(6) % 10


def _timm() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4,
                              num_classes=10).eval()  # fmt: skip
    with torch.no_grad():  # timm zero-inits biases and tokens: make every term matter
        for n, p in model.named_parameters():
            if p.dim() == 1 or "token" in n or "pos" in n:
                p.normal_(0, 0.3)
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(X)
    return getattr(out, "logits", out)


def _structure(model: torch.nn.Module) -> list[tuple]:
    blocks = host_for(model).block_layers(model)
    host = host_for(model)
    return [(*host.head_layout(b.attn), b.fc1.out_features, b.embed_dim) for b in blocks]


def _backward(model: torch.nn.Module) -> None:
    torch.nn.functional.cross_entropy(_logits_grad(model), Y).backward()


def _logits_grad(model: torch.nn.Module) -> torch.Tensor:
    out = model(X)
    return getattr(out, "logits", out)


def test_the_conversion_is_exact_and_leaves_the_timm_model_alone():
    model = _timm()
    before = copy.deepcopy(model.state_dict())
    hf = from_timm(model)
    assert type(hf).__name__ == "ViTForImageClassification"
    torch.testing.assert_close(_logits(hf), _logits(model), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_conversion_refuses_what_it_cannot_map():
    reg = timm.create_model("vit_base_patch16_reg4_gap_256", img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=4)
    with pytest.raises(TypeError, match="class token|registers|classify"):
        from_timm(reg)
    scaled = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=4,
                               init_values=0.1)  # fmt: skip
    with pytest.raises(TypeError, match="LayerScale"):
        from_timm(scaled)
    uniform = _timm()
    tpv.ViTPruner(uniform, X[:1], pruning_ratio=0.25).step()  # every MLP alike: a config describes it
    torch.testing.assert_close(_logits(from_timm(uniform)), _logits(uniform), atol=1e-5, rtol=1e-5)
    tpv.ViTPruner(uniform, X[:1], head_pruning_ratio=0.5).step()
    with pytest.raises(TypeError, match="convert the dense model"):
        from_timm(uniform)


def _l2(model):
    tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, head_pruning_ratio=0.5, prune_head_dims=True).step()


def _l2_global_embed(model):
    tpv.ViTPruner(model, X[:1], pruning_ratio=0.25, head_pruning_ratio=0.34, global_pruning=True,
                  prune_embed_dim=True).step()  # fmt: skip


def _taylor(model):
    pruner = tpv.ViTPruner(model, X[:1], tp.importance.GroupTaylorImportance(), pruning_ratio=0.3, head_pruning_ratio=0.5,
                           global_pruning=True)  # fmt: skip
    _backward(model)
    pruner.step()


def _stock_tp(model):
    pruner = tp.pruner.BasePruner(model, X[:1], importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                                  **tpv.vit_pruning_kwargs(model))  # fmt: skip
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)


def _graph(model):
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [X])  # the default (flow) graph on both hosts
    tpv.ViTPruner(model, X[:1], imp, head_pruning_ratio=0.5).step()


def _cumulative(model):
    imp = tpv.CumulativeHeadImportance(progress=False).calibrate(model, [X])
    tpv.ViTPruner(model, X[:1], imp, head_pruning_ratio=0.5).step()


def _gohsp(model):
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [X])
    pruner = tpv.GOHSPPruner(model, X[:1], imp, pruning_ratio=0.4, fisher_warmup=2)
    for _ in range(6):  # a tp loop: Fisher warm-up, then the ADMM pull with self-paced dual updates
        _backward(model)
        pruner.regularize(model)
        model.zero_grad()
    pruner.step()


def _vtp(model):
    pruner = tpv.VTPPruner(model, X[:1], pruning_ratio=0.3, sparse_steps=3)
    for _ in range(3):
        _backward(model)
        pruner.regularize(model)
        model.zero_grad()
    pruner.step()


METHODS = {"l2": _l2, "l2_global_embed": _l2_global_embed, "taylor": _taylor, "stock_tp": _stock_tp, "graph": _graph,
           "cumulative": _cumulative, "gohsp": _gohsp, "vtp": _vtp}  # fmt: skip


def test_the_torchvision_conversion_is_exact():
    model = _timm()
    tv = to_torchvision(model)
    assert type(tv).__module__ == "torchvision.models.vision_transformer"
    torch.testing.assert_close(_logits(tv), _logits(model), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="LayerScale"):
        to_torchvision(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
                                         num_heads=4, init_values=0.1))  # fmt: skip


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_prunes_every_host_alike(method):
    model = _timm()
    others = [from_timm(model), to_torchvision(model)]
    dense = _structure(model)
    METHODS[method](model)
    for other in others:
        METHODS[method](other)
        assert _structure(model) == _structure(other) != dense
        torch.testing.assert_close(_logits(other), _logits(model), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("options", [dict(keep_ratio=0.5), dict(keep_ratio=0.5, fold="drop", head_keep_ratio=0.5), "paper"])
def test_the_cascade_gives_every_host_the_same_tokens_and_logits(options):
    model = _timm()
    others = [from_timm(model), to_torchvision(model)]
    cascades = []
    for m in (model, *others):
        if options == "paper":
            cascades.append(tpv.apply_cascade(m, "paper", calib=[X]))
        else:
            cascades.append(tpv.apply_cascade(m, **options))
    for other, cascade in zip(others, cascades[1:]):
        torch.testing.assert_close(_logits(other), _logits(model), atol=1e-5, rtol=1e-5)
        assert cascade.last.counts == cascades[0].last.counts and cascade.last.heads_kept == cascades[0].last.heads_kept
