"""Tiny seeded timm ViTs covering every supported family."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from tp_vit_plugins.hosts.timm.families import convert_attention

warnings.filterwarnings("ignore", message="Unwrapped parameters detected")

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)

FAMILIES = {
    "vit": (VisionTransformer, {}),
    "deit_distilled": (VisionTransformerDistilled, {}),
    "avgpool_no_cls": (VisionTransformer, dict(class_token=False, global_pool="avg")),
    "reg_tokens": (VisionTransformer, dict(reg_tokens=2)),
    "layerscale": (VisionTransformer, dict(init_values=0.5)),
    "qk_norm": (VisionTransformer, dict(qk_norm=True)),
    "no_qkv_bias": (VisionTransformer, dict(qkv_bias=False)),
    "deit3": (VisionTransformer, dict(no_embed_class=True, init_values=0.5)),  # deit3_*: LayerScale, patch-only pos_embed
    "siglip_map": (VisionTransformer, dict(class_token=False, global_pool="map")),  # attention-pool head (SigLIP)
    # beit_*: relative position bias per block, q/v biases, gamma_1/gamma_2 layer scales
    "beit": (Beit, dict(use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)),
    # eva02_*: rotary position embedding, SwiGLU MLP, q/v biases, abs pos_embed
    "eva02": (Eva, dict(swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4))),
    # cait_*: talking-heads attention, two class-attention blocks (kept whole), gamma_1/gamma_2
    "cait": (Cait, dict(init_values=0.5)),
}


#: Families whose residual stream keeps its width (timm's attention pool reshapes to its input width).
FIXED_EMBED = {"siglip_map", "cait"}


def make_model(family: str = "vit", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny eval-mode model of ``family`` with non-trivial random weights."""
    cls, kw = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(**{**TINY, **kw, **overrides}).eval()
    with torch.no_grad():  # timm zero-inits some tensors; make every unit matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "token" in name or "pos_embed" in name:
                p.normal_(0, 0.2)
            elif name.startswith("attn_pool."):  # a pool whose output depends on the tokens it pools
                p.normal_(0, 2.0 if name.endswith("latent") else 0.3)
            elif name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
            elif name.endswith(("gamma", "gamma_1", "gamma_2")):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:  # norm weights
                p.uniform_(0.5, 1.5)
            elif p.dim() == 2 and family in ("beit", "eva02", "cait"):  # their timm init shrinks weights to ~0.02
                p.normal_(0, p.shape[1] ** -0.5)
    # EVA / BEiT attention in the library's exact, prunable form (tests/test_support.py tests the conversion)
    return convert_attention(model)


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(4, 3, 32, 32)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One embedded-model cache for the whole session: the 1-epoch model trains once."""
    return tmp_path_factory.mktemp("tpv_cache")


@pytest.fixture
def cache(shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TPV_CACHE_DIR", str(shared_cache))
    return tmp_path


def set_fused(model: torch.nn.Module, flag: bool) -> None:
    """Set ``fused_attn`` on every attention module that has a fused path (all families' classes)."""
    from tp_vit_plugins.hosts.timm.families import PrunableTalkingHeadAttn

    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn") and not isinstance(m, PrunableTalkingHeadAttn):  # CaiT's has no fused path
            m.fused_attn = flag
            n += 1
    assert n > 0, "no attention module with a fused path"


@torch.no_grad()
def fused_and_eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs with the fused attention path and with the eager one (transformers: its sdpa and eager implementations)."""
    m = copy.deepcopy(model)
    impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
    if impl is not None:
        outs = []
        for name in ("sdpa", "eager"):
            m.set_attn_implementation(name)
            outs.append(m(x))
        return outs[0], outs[1]
    set_fused(m, True)
    a = m(x)
    set_fused(m, False)
    return a, m(x)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def hidden(block: torch.nn.Module) -> int:
    """MLP hidden width of a block (plain MLP or SwiGLU)."""
    return int(block.mlp.fc2.in_features)


def fc1_of(block: torch.nn.Module) -> torch.nn.Linear:
    """The MLP's first (value-path) projection: ``fc1``, or SwiGLU's ``fc1_x``."""
    return block.mlp.fc1 if hasattr(block.mlp, "fc1") else block.mlp.fc1_x


#: transformers family -> (model class, config class, extra config) of the tiny test models (no download).
HF_FAMILIES = {
    "vit": ("ViTForImageClassification", "ViTConfig", dict(intermediate_size=96)),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(intermediate_size=96)),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config", dict(mlp_ratio=2)),
    "dinov2_registers": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                         dict(mlp_ratio=2, num_register_tokens=2)),
}  # fmt: skip
