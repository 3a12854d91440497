"""Every stock Torch-Pruning workflow with a plugin head importance dropped in, on timm and transformers models.

One test per cell of README's "Using the plugins in your tp script" table (pruner x mode): the importance is
calibrated once on the dense model and handed, unchanged, to a stock tp pruner; the loop is tp's
own (``step`` once or ``iterative_steps`` times; ``regularize`` after every backward,
``update_regularizer`` per epoch, then ``step``). Each run must leave every block with the head
count tp recorded, finite outputs, fused == eager attention, and head scores that follow the
heads left.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import HF_FAMILIES, make_model

import tp_vit_plugins as tpv
from tp_vit_plugins.hosts import host_for

#: The tp pruners; the sparse-training ones run tp's loop (regularize, update_regularizer) before each step.
PRUNERS = {"BasePruner": False, "MetaPruner": False, "MagnitudePruner": False, "GroupNormPruner": True, "GrowingRegPruner": True}
#: Modes (README's columns): iterative steps and extra pruner kwargs.
MODES = {
    "one-shot": (1, {}),
    "iterative": (3, {}),
    "global": (1, {"global_pruning": True}),
    "isomorphic": (1, {"global_pruning": True, "isomorphic": True}),
}
WORKFLOWS = [f"{p} {m}" for p in PRUNERS for m in MODES]
IMPORTANCES = ("graph", "cumulative")
HOSTS = ("timm", "transformers")


def _model(host: str) -> torch.nn.Module:
    if host == "timm":
        return make_model(num_heads=6)
    transformers = pytest.importorskip("transformers")
    cls, config, extra = HF_FAMILIES["vit"]
    torch.manual_seed(0)
    cfg = getattr(transformers, config)(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, image_size=32,
                                        patch_size=8, num_labels=10, **extra)  # fmt: skip
    return getattr(transformers, cls)(cfg).eval()


def _logits(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def _importance(kind: str, model: torch.nn.Module, x: torch.Tensor) -> tpv.GraphHeadImportance:
    if kind == "graph":
        return tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
    return tpv.CumulativeHeadImportance().calibrate(model, [x])


def _run(workflow: str, kind: str, host: str, x: torch.Tensor):
    name, mode = workflow.split()
    steps, extra = MODES[mode]
    sparse = PRUNERS[name]
    model = _model(host)
    imp = _importance(kind, model, x)  # calibrated once, on the dense model
    kwargs = dict(importance=imp, pruning_ratio=0.25, head_pruning_ratio=0.5, prune_num_heads=True, iterative_steps=steps,
                  **extra)  # fmt: skip
    pruner = getattr(tp.pruner, name)(model, x[:1], **tpv.vit_pruning_kwargs(model, **kwargs))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(steps):
        if sparse:
            pruner.update_regularizer()  # per epoch: also re-reads the groups after the previous step's prunes
            for _ in range(2):  # an epoch of sparse training
                model.train()
                loss = _logits(model(x)).logsumexp(1).mean()
                opt.zero_grad()
                loss.backward()
                pruner.regularize(model)
                opt.step()
            model.eval()
        pruner.step()
        tpv.sync_attention(model, pruner.num_heads)
    return model, pruner, imp


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kind", IMPORTANCES)
@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_plugin_importance_in_a_stock_tp_workflow(workflow, kind, host):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    model, pruner, imp = _run(workflow, kind, host, x)
    h = host_for(model)
    heads = h.heads_per_block(model)
    assert heads == [int(pruner.num_heads[h.head_key(a)]) for _, a in h.attention_modules(model)]
    assert sum(heads) < 12  # heads went
    imp.follow(pruner.DG)
    assert [len(imp.head_scores[h.head_key(a)]) for _, a in h.attention_modules(model)] == heads
    with torch.no_grad():
        fused = copy.deepcopy(model)
        eager = copy.deepcopy(model)
        with h.eager_attention(eager):
            a_out, b_out = _logits(fused(x)), _logits(eager(x))
    assert torch.isfinite(a_out).all()
    torch.testing.assert_close(a_out, b_out, atol=1e-5, rtol=1e-5)


def test_kwargs_merge_a_scripts_own_arguments():
    """A tp call that already passes ignored_layers / num_heads / unwrapped_parameters keeps them all."""
    model = make_model(num_heads=6)
    mine = [model.blocks[0].mlp.fc2]
    ours = tpv.vit_pruning_kwargs(model)
    qkv0 = model.blocks[0].attn.qkv
    kw = tpv.vit_pruning_kwargs(model, ignored_layers=mine, num_heads={qkv0: 6}, round_to=2,
                                unwrapped_parameters=[(model.pos_embed, 2)])  # fmt: skip
    assert kw["ignored_layers"][0] is mine[0] and all(any(m is o for m in kw["ignored_layers"]) for o in ours["ignored_layers"])
    assert kw["num_heads"].keys() == ours["num_heads"].keys() and kw["round_to"] == 2
    dims = {id(p): d for p, d in kw["unwrapped_parameters"]}
    assert dims[id(model.pos_embed)] == 2 and id(model.cls_token) in dims  # theirs wins, ours kept
    assert len(kw["unwrapped_parameters"]) == len(ours["unwrapped_parameters"])
    with pytest.raises(TypeError, match="num_heads must be a dict"):
        tpv.vit_pruning_kwargs(model, num_heads=[6])
    with pytest.raises(TypeError, match="ignored_layers must be a list"):
        tpv.vit_pruning_kwargs(model, ignored_layers=model.head)


def test_a_tp_call_gains_the_plugin_in_one_changed_line():
    """The same MetaPruner call, written as a tp script has it, then with the kwargs wrapped: same arguments kept."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = make_model(num_heads=6)
    bottleneck = [blk.mlp.fc2 for blk in model.blocks]  # the script's own --bottleneck option
    num_heads = {blk.attn.qkv: blk.attn.num_heads for blk in model.blocks}
    imp = tpv.CumulativeHeadImportance().calibrate(model, [x])
    pruner = tp.pruner.MetaPruner(model, x[:1], **tpv.vit_pruning_kwargs(model,  # the changed line
        importance=imp,
        pruning_ratio=0.25,
        ignored_layers=[model.head, *bottleneck],
        num_heads=num_heads,
        prune_num_heads=True,
        head_pruning_ratio=0.5,
        round_to=2,
    ))  # fmt: skip
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    assert all(blk.mlp.fc2.out_features == 48 for blk in model.blocks)  # their ignored layers held
    assert [blk.attn.num_heads for blk in model.blocks] == [3, 3]
    assert all(blk.mlp.fc1.out_features % 2 == 0 for blk in model.blocks)  # their round_to held


def _code_lines(path) -> list[str]:
    """The script's lines after its module docstring."""
    text = path.read_text()
    return text[text.index('"""', 3) + 3 :].splitlines()


def _run_script(path, argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@torch.no_grad()
def _fused_and_eager(model, x):
    outs = []
    for flag in (True, False):
        for blk in model.blocks:
            blk.attn.fused_attn = flag
        outs.append(model(x))
    return outs


SCRIPT_ARGS = ([], ["--prune_num_heads", "--global_pruning", "--iterative_steps", "2"], ["--bottleneck"])


def _script_diff(name: str) -> tuple[list[str], list[str]]:
    """``(added, removed)`` code lines of ``prune_<name>_plugin.py`` against ``prune_<name>_tp.py`` (blank lines aside)."""
    import difflib
    import pathlib

    here = pathlib.Path(__file__).parent / "tp_scripts"
    plain, plugin = here / f"prune_{name}_tp.py", here / f"prune_{name}_plugin.py"
    diff = [
        line for line in difflib.unified_diff(_code_lines(plain), _code_lines(plugin), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]  # fmt: skip
    return [x for x in diff if x.startswith("+")], [x for x in diff if x.startswith("-")]


def _script(name: str, kind: str):
    import pathlib

    return pathlib.Path(__file__).parent / "tp_scripts" / f"prune_{name}_{kind}.py"


def test_tp_example_shaped_script_gains_a_plugin_in_a_few_lines():
    """Our tp-example-shaped timm script, plain and with GOHSP's importance: both run; the plugin's is consistent."""
    added, removed = _script_diff("timm_vit")
    assert len(added) == 3 and all("# plugin" in line for line in added), added  # import, imp, sync
    assert len(removed) == 6  # the plain script's imp line and its 5-line manual head loop (sync replaces it)
    x = torch.randn(2, 3, 32, 32)
    for argv in SCRIPT_ARGS:
        model, pruner = _run_script(_script("timm_vit", "plugin"), argv)
        assert [blk.attn.num_heads for blk in model.blocks] == [int(pruner.num_heads[blk.attn.qkv]) for blk in model.blocks]
        fused, eager = _fused_and_eager(model, x)
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    # the plain form runs too; its hand-written head loop leaves eager and fused attention apart once head dims go
    model, _ = _run_script(_script("timm_vit", "tp"), [])
    fused, eager = _fused_and_eager(model, x)
    assert torch.isfinite(fused).all() and not torch.allclose(fused, eager, atol=1e-4)


@pytest.mark.parametrize("argv", [[], ["--prune_num_heads", "--global_pruning", "--iterative_steps", "2"]])
def test_tp_example_shaped_hf_script_gains_a_plugin_in_two_lines(argv):
    """The transformers twin: the plain script's own head loop is right for the native modules; the plugin adds two lines."""
    pytest.importorskip("transformers")
    added, removed = _script_diff("hf_vit")
    assert len(added) == 2 and all("# plugin" in line for line in added) and len(removed) == 1, (added, removed)
    x = torch.randn(2, 3, 32, 32)
    model, pruner = _run_script(_script("hf_vit", "plugin"), argv)
    layers = model.vit.layers
    assert [a.attention.num_attention_heads for a in layers] == [int(pruner.num_heads[a.attention.q_proj]) for a in layers]
    outs = []
    for impl in ("sdpa", "eager"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs.append(model(x).logits)
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
