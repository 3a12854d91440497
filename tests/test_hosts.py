"""The host interface: the registry, the built-in hosts, and a new host added without touching the library."""

from __future__ import annotations

import pytest
import torch
from conftest import HF_FAMILIES, make_model
from torch import nn

import tp_vit_plugins as tpv
from tp_vit_plugins import hosts
from tp_vit_plugins.hosts import Host, TimmHost, host_for, register_host, registered_hosts


def test_built_in_hosts_are_registered_and_claim_their_models():
    names = [h.name for h in registered_hosts()]
    assert names == ["transformers", "torchvision", "timm"]  # the timm host is the fallback, asked last
    assert host_for(make_model()).name == "timm"


def test_transformers_models_go_to_the_transformers_host():
    transformers = pytest.importorskip("transformers")
    cls, config, extra = HF_FAMILIES["vit"]
    model = getattr(transformers, cls)(getattr(transformers, config)(hidden_size=48, num_hidden_layers=2,
                                                                     num_attention_heads=3, image_size=32, patch_size=8,
                                                                     **extra))  # fmt: skip
    assert host_for(model).name == "transformers"


def test_host_for_refuses_what_is_not_a_module():
    with pytest.raises(tpv.UnsupportedModelError, match="torch.nn.Module"):
        host_for("a model")


def test_unsupported_error_is_the_public_one_and_a_type_error():
    assert tpv.UnsupportedModelError is hosts.UnsupportedModelError
    assert issubclass(tpv.UnsupportedModelError, TypeError)
    with pytest.raises(tpv.UnsupportedModelError, match="Nothing was changed"):
        tpv.vit_pruning_kwargs(nn.Sequential(nn.Linear(2, 2)))


def test_register_host_refuses_other_objects():
    with pytest.raises(TypeError, match="Host instance"):
        register_host(object())  # type: ignore[arg-type]


class _Wrapped(nn.Module):
    """A model of a pretend library: a timm ViT behind another class and module."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class _WrappedHost(TimmHost):
    """A new host in a few lines: claims ``_Wrapped`` and answers every question about its inner ViT."""

    name = "wrapped"
    fallback = False

    def claims(self, model: nn.Module) -> bool:
        return isinstance(model, _Wrapped)

    def check(self, model: nn.Module) -> None:
        super().check(model.inner)

    def attention_modules(self, model):
        return [(f"inner.{n}", a) for n, a in super().attention_modules(model.inner)]

    def block_layers(self, model):
        return super().block_layers(model.inner)

    def pruning_kwargs(self, model):
        return super().pruning_kwargs(model.inner)

    def sync(self, model, num_heads=None):
        super().sync(model.inner, num_heads)
        return model

    def fixed_residual(self, model):
        return super().fixed_residual(model.inner)

    def embedding_modules(self, model):
        return super().embedding_modules(model.inner)

    def has_rope(self, model):
        return False


@pytest.fixture
def wrapped_host():
    before = registered_hosts()
    host = register_host(_WrappedHost(), first=True)
    yield host
    hosts.base._HOSTS[:] = before


def test_a_new_host_is_one_class_and_one_registration(wrapped_host):
    torch.manual_seed(0)
    model = _Wrapped().eval()
    x = torch.randn(2, 3, 32, 32)
    assert host_for(model) is wrapped_host
    pruner = tpv.ViTPruner(model, x, pruning_ratio=0.25, head_pruning_ratio=0.34)
    pruner.step()
    assert wrapped_host.heads_per_block(model) == [2, 2]
    assert model(x).shape == (2, 10)


def test_registering_a_name_again_replaces_the_host(wrapped_host):
    again = register_host(_WrappedHost())
    assert [h for h in registered_hosts() if h.name == "wrapped"] == [again]


def test_a_host_must_implement_the_interface():
    class Half(Host):
        name = "half"

        def claims(self, model):
            return False

    with pytest.raises(TypeError, match="abstract"):
        Half()  # type: ignore[abstract]


def test_is_supported_changes_nothing_on_any_host():
    transformers = pytest.importorskip("transformers")
    vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=96,
                                    image_size=32, patch_size=8)  # fmt: skip
    hf = transformers.ViTForImageClassification(config)
    tv = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=3, hidden_dim=48, mlp_dim=96)
    for model in (hf, tv, make_model()):
        types = [type(m) for m in model.modules()]
        assert tpv.utils.is_supported(model)
        assert [type(m) for m in model.modules()] == types  # no attention converted
    assert not tpv.utils.is_supported(nn.Sequential(nn.Linear(2, 2)))
