"""The README's support matrix, as a test: every supported timm, transformers and torchvision family x every capability.

Each timm family is timm's own config (``timm.create_model``), each transformers family its own
config class, made tiny (depth 2, small images; nothing downloaded).
A ``True`` cell must work (the model prunes, stays consistent, fused == eager); a ``False``
cell must be refused with a clear error before anything changes.
"""

from __future__ import annotations

import copy

import conftest
import pytest
import timm
import torch
from conftest import fused_and_eager, snapshot, state_equal
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import as_logits
from tp_vit_plugins.core.training import finetune
from tp_vit_plugins.hosts import host_for


def attention_modules(model):
    return host_for(model).attention_modules(model)


_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
_SWIN = dict(img_size=56, depths=(1, 1), num_heads=(2, 4), embed_dim=32, num_classes=10)
#: family -> (timm model name, tiny kwargs, image size)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", _VIT, 32),
    "vit_reg4_gap": ("vit_base_patch16_reg4_gap_256", _VIT, 32),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", _VIT, 32),
    "deit3": ("deit3_small_patch16_224", _VIT, 32),
    "flexivit": ("flexivit_small", _VIT, 32),
    "siglip": ("vit_base_patch16_siglip_224", _VIT, 32),
    "beit": ("beit_base_patch16_224", _VIT, 32),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, num_classes=10), 28),
    "cait": ("cait_xxs24_224", _VIT, 32),
    "swin": ("swin_tiny_patch4_window7_224", _SWIN, 56),
}  # fmt: skip
_HF = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, num_labels=10)
#: transformers family -> (model class, config class, extra config)
HF_FAMILIES = {f"hf_{k}": v for k, v in conftest.HF_FAMILIES.items()}
_TV = dict(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=10)
#: torchvision family -> VisionTransformer kwargs
TV_FAMILIES = {"tv_vit": _TV, "tv_vit_representation": {**_TV, "representation_size": 24}}
CAPABILITIES = ("heads", "head_dims", "mlp", "embed", "tokens", "gohsp", "vtp", "save_load")
_ALL = dict.fromkeys(CAPABILITIES, True)
#: The README's matrix (False = refused before anything changes).
SUPPORT = {
    "vit": _ALL,
    "vit_reg4_gap": _ALL,
    "deit_distilled": _ALL,
    "deit3": _ALL,
    "flexivit": _ALL,
    "siglip": {**_ALL, "embed": False},  # the attention pool reshapes to its input width
    "beit": _ALL,
    "eva02": {**_ALL, "gohsp": False},  # SwiGLU (GOHSP's neuron units need fc1 / fc2)
    "cait": {**_ALL, "embed": False},  # class attention reshapes to its input width
    "swin": {**_ALL, "embed": False, "tokens": False, "gohsp": False},  # patch merging; windows
    "hf_vit": _ALL,
    "hf_deit_teacher": _ALL,
    "hf_dinov2": {**_ALL, "embed": False},  # the classifier reads [cls, mean(patches)] concatenated
    "hf_dinov2_registers": {**_ALL, "embed": False},
    "tv_vit": _ALL,
    "tv_vit_representation": _ALL,
}


def _model(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if family in HF_FAMILIES:
        transformers = pytest.importorskip("transformers")
        cls, config, extra = HF_FAMILIES[family]
        model, size = getattr(transformers, cls)(getattr(transformers, config)(**_HF, **extra)).eval(), 32
    elif family in TV_FAMILIES:
        vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
        model, size = vision_transformer.VisionTransformer(**TV_FAMILIES[family]).eval(), 32
    else:
        name, kw, size = FAMILIES[family]
        model = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # timm zero-inits biases, tables and latents: make every term matter
        for n, p in model.named_parameters():
            if p.dim() == 1 or "relative_position" in n or "token" in n or "pos_embed" in n:
                p.normal_(0, 0.3)
            elif p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model, torch.randn(4, 3, size, size)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hidden(model: torch.nn.Module) -> list[int]:
    """MLP hidden widths of the pruned blocks (an attention pool's MLP stays whole)."""
    return [b.fc2.in_features for b in host_for(model).block_layers(model)]


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return as_logits(model(x))


def _consistent(model: torch.nn.Module, x: torch.Tensor) -> None:
    host = host_for(model)
    for _, a in attention_modules(model):
        H, d = host.head_layout(a)
        widths = {p.out_features // (3 if len(host.in_projections(a)) == 1 else 1) for p in host.in_projections(a)}
        assert widths == {H * d} and host.out_projection(a).in_features == H * d
    fused, eager = fused_and_eager(model, x)
    torch.testing.assert_close(as_logits(fused), as_logits(eager), atol=1e-5, rtol=1e-5)


def _patch_width(model: torch.nn.Module) -> int:
    return host_for(model).embedding_modules(model)[0].out_channels


def _heads(model, x):
    before = host_for(model).heads_per_block(model)
    tpv.ViTPruner(model, x[:1], head_pruning_ratio=0.5).step()
    assert all(h < h0 for h, h0 in zip(host_for(model).heads_per_block(model), before))


def _head_dims(model, x):
    dims = lambda: [host_for(model).head_layout(a)[1] for _, a in attention_modules(model)]  # noqa: E731
    before = dims()
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True).step()
    assert all(d < d0 for d, d0 in zip(dims(), before))


def _mlp(model, x):
    before = _hidden(model)
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.25).step()
    assert all(h < h0 for h, h0 in zip(_hidden(model), before))


def _embed(model, x):
    before = _patch_width(model)
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_embed_dim=True).step()
    assert _patch_width(model) < before


def _tokens(model, x):
    with torch.no_grad():
        ref = _out(model, x)
        tpv.cpvit.apply_cascade(model, keep_ratio=0.5, fold="drop")
        assert _out(model, x).shape == ref.shape and not torch.allclose(_out(model, x), ref, atol=1e-4)
        tpv.cpvit.remove_cascade(model)
        assert torch.equal(_out(model, x), ref)
    tpv.cpvit.apply_cascade(model, keep_ratio=0.5)  # the default (merge) stays on for the consistency check


def _gohsp(model, x):
    n = _params(model)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    structures = ("heads", "mlp") if host_for(model).has_rope(model) else ("heads", "head_dims", "mlp")
    tpv.GOHSPPruner(model, x[:1], imp, pruning_ratio=0.2, structures=structures).step()
    assert _params(model) < n


def _vtp(model, x):
    n = _params(model)
    pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.3, sparse_steps=2)
    loader = DataLoader(TensorDataset(x, torch.arange(len(x)) % 10), batch_size=2)
    finetune(model, loader, epochs=1, lr=1e-3, warmup_epochs=0.0, progress=False, step_hook=pruner.regularize)
    model.eval()
    pruner.step()
    assert _params(model) < n and pruner.gates.active is False


def _save_load(model, x, tmp_path):
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, head_pruning_ratio=0.34).step()
    tpv.save_pruned(model, tmp_path / "m")
    loaded = tpv.load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(_out(loaded, x), _out(model, x))


RUN = {"heads": _heads, "head_dims": _head_dims, "mlp": _mlp, "embed": _embed, "tokens": _tokens, "gohsp": _gohsp,
       "vtp": _vtp}  # fmt: skip
#: The entry point alone (no helper that reads the model first), for the refused cells.
ATTEMPT = {
    "head_dims": lambda m, x: tpv.ViTPruner(m, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_head_dims=True),
    "embed": lambda m, x: tpv.ViTPruner(m, x[:1], pruning_ratio=0.25, prune_mlp=False, prune_embed_dim=True),
    "tokens": lambda m, x: tpv.cpvit.apply_cascade(m, keep_ratio=0.5),
    "gohsp": lambda m, x: _gohsp(m, x),
}
#: What each refusal must say.
REFUSAL = {"embed": "stay whole|concatenated", "head_dims": "rotary", "tokens": "Swin", "gohsp": "fc1|Swin"}


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(HF_FAMILIES) + sorted(TV_FAMILIES))
def test_support_matrix(family, capability, tmp_path):
    model, x = _model(family)
    if SUPPORT[family][capability]:
        if capability == "save_load":
            _save_load(model, x, tmp_path)
        else:
            RUN[capability](model, x)
        if capability != "vtp":  # VTP's model was fine-tuned in train mode, but consistency holds all the same
            _consistent(model, x)
        return
    # EVA / BEiT / CaiT attention is converted (exactly) by any entry point that reads the model, calibration
    # included; tests/test_support.py checks that a refused ViTPruner / GOHSPPruner converts it back
    attention_modules(model)  # EVA / BEiT / CaiT / Swin and torchvision attention: converted exactly by any entry point
    before, untouched = snapshot(model), copy.deepcopy(model)
    with pytest.raises((TypeError, ValueError), match=REFUSAL[capability]):
        ATTEMPT[capability](model, x)
    assert state_equal(before, model.state_dict())
    assert {type(m) for m in model.modules()} == {type(m) for m in untouched.modules()}
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(_out(model, x), _out(untouched, x))
