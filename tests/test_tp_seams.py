"""The tp internals the pruners override are checked, and a changed tp fails loudly, untouched model."""

from __future__ import annotations

import pytest
import torch_pruning as tp
from conftest import make_model, snapshot, state_equal

import tp_vit_plugins as tpv
from tp_vit_plugins.core import tp_seams
from tp_vit_plugins.hosts.timm.structure import heads_per_block


def test_installed_tp_has_the_seams(x):
    tp_seams.check_tp_seams()
    pruner = tpv.ViTPruner(make_model(), x[:1], head_pruning_ratio=0.5)
    tp_seams.check_pruner_state(pruner)
    assert tp_seams.tp_version() in tp_seams.CHECKED_TP_VERSIONS


def _plain_prune(self):  # a tp whose _prune is no longer a generator
    return []


@pytest.mark.parametrize(
    "attr, replacement, message",
    [
        ("_prune", _plain_prune, "_prune must be a generator"),
        ("_is_atten_group", lambda self, group, extra: (False, []), "_is_atten_group"),
        ("_is_atten_group", None, "_is_atten_group"),
        ("estimate_importance", None, "estimate_importance"),
    ],
)
def test_changed_tp_internals_fail_loudly_and_leave_the_model_alone(monkeypatch, x, attr, replacement, message):
    model = make_model()
    before = snapshot(model)
    if replacement is None:
        monkeypatch.delattr(tp.pruner.BasePruner, attr)
    else:
        monkeypatch.setattr(tp.pruner.BasePruner, attr, replacement)
    for build in (
        lambda: tpv.ViTPruner(model, x[:1], head_pruning_ratio=0.5),
        lambda: tpv.GOHSPPruner(model, x[:1], None, pruning_ratio=0.2),
        lambda: tpv.VTPPruner(model, x[:1], pruning_ratio=0.2),
    ):
        with pytest.raises(tp_seams.TPSeamError, match=message):
            build()
    assert state_equal(model.state_dict(), before)


def test_changed_pruner_state_fails_loudly(monkeypatch, x):
    original = tp.pruner.BasePruner.__init__

    def init_without_books(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self.init_num_heads

    monkeypatch.setattr(tp.pruner.BasePruner, "__init__", init_without_books)
    with pytest.raises(tp_seams.TPSeamError, match="init_num_heads"):
        tpv.ViTPruner(make_model(), x[:1], head_pruning_ratio=0.5)


def test_unchecked_tp_version_warns_once(monkeypatch):
    monkeypatch.setattr(tp_seams, "tp_version", lambda: "9.9.9")
    monkeypatch.setattr(tp_seams, "_warned", set())
    with pytest.warns(UserWarning, match="9.9.9"):
        tp_seams.check_tp_seams()
    tp_seams.check_tp_seams()  # second call: no new warning (pytest -W error would fail otherwise)
    assert tp_seams._warned == {"9.9.9"}


@pytest.mark.xfail(raises=TypeError, strict=True, reason="tp 1.6's OBDCImportance cannot prepare a model")
def test_tp_obdc_prepares_a_vit_group_set(x):
    """tp's OBDC (EigenDamage) as a zoo peer: ``_prepare_model`` walks every group through
    ``_downstream_node_as_root_if_attention``, which returns ``None`` for a group without
    attention, so it raises on any model (a ViT here; ResNet-18 as well). When a tp release fixes
    this, the test fails: wire OBDC into the zoo's pipeline peers."""
    model = make_model()
    imp = tp.importance.OBDCImportance(num_classes=10)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, pruning_ratio=0.3, **tpv.vit_pruning_kwargs(model))
    imp._prepare_model(model, pruner)


@pytest.mark.parametrize("global_head_pruning", [False, True])
def test_isomorphic_pruning_leaves_head_removal_unchanged(x, global_head_pruning):
    """tp ranks attention heads in their own scope, before its isomorphic scopes: removing heads only,
    ``isomorphic=True`` keeps the same heads (why the one-shot heads protocol has no ``-iso`` peer)."""
    pruned = {}
    for isomorphic in (False, True):
        model = make_model(depth=3, num_heads=4)
        model.blocks[0].attn.qkv.weight.data *= 5  # so that a global ranking is not uniform by chance
        tpv.ViTPruner(model, x[:1], tp.importance.GroupMagnitudeImportance(p=2), head_pruning_ratio=0.5,
                      global_head_pruning=global_head_pruning, isomorphic=isomorphic).step()  # fmt: skip
        pruned[isomorphic] = model
    assert state_equal(snapshot(pruned[False]), snapshot(pruned[True]))
    heads = heads_per_block(pruned[False])
    assert sum(heads) == 6 and (heads != [2, 2, 2]) == global_head_pruning, heads  # global: blocks differ
