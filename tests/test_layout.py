"""The package's shape: public names, a demo the library never imports, maths without timm."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import tp_vit_plugins as tpv

ROOT = pathlib.Path(tpv.__file__).parent
#: The whole top-level API (small on purpose; everything else is one level down).
PUBLIC = {
    "ViTPruner", "GOHSPPruner", "VTPPruner", "GraphHeadImportance", "CumulativeHeadImportance", "GateImportance",
    "vit_pruning_kwargs", "sync_attention", "apply_cascade", "fit_budget", "count_macs", "save_pruned", "load_pruned",
    "UnsupportedModelError", "export_onnx",
}  # fmt: skip
#: Names that moved, with the new place the DeprecationWarning must name.
MOVED = {
    "finetune": "tp_vit_plugins.utils.finetune",
    "evaluate": "tp_vit_plugins.utils.evaluate",
    "measure_latency": "tp_vit_plugins.utils.measure_latency",
    "count_params": "tp_vit_plugins.utils.count_params",
    "attention_maps": "tp_vit_plugins.utils.attention_maps",
    "eager_attention": "tp_vit_plugins.utils.eager_attention",
    "check_supported": "tp_vit_plugins.utils.check_supported",
    "is_timm_vit": "tp_vit_plugins.utils.is_supported",
    "fit_keep_ratio": "tp_vit_plugins.cpvit.fit_keep_ratio",
    "BudgetResult": "tp_vit_plugins.budget.BudgetResult",
}


def test_public_names_are_few_and_resolve():
    assert set(tpv.__all__) == PUBLIC and len(tpv.__all__) <= 16
    for name in tpv.__all__:
        assert getattr(tpv, name) is not None, name


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_still_work_and_name_their_new_place(name):
    with pytest.warns(DeprecationWarning, match=MOVED[name].replace(".", r"\.")):
        old = getattr(tpv, name)
    module, attr = MOVED[name].rsplit(".", 1)
    assert old is getattr(importlib.import_module(module), attr)


def test_tokens_module_still_works_and_warns(monkeypatch):
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    import tp_vit_plugins.tokens\nexcept DeprecationWarning as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tp_vit_plugins.cpvit" in out
    monkeypatch.delattr(tpv, "tokens", raising=False)  # set when another test imported the module
    with pytest.warns(DeprecationWarning):
        tokens = tpv.tokens
    assert tokens.apply_cascade is tpv.apply_cascade


def test_type_checkers_see_every_public_name():
    """Each public name is imported explicitly under TYPE_CHECKING (the lazy loader is invisible to tools)."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.asname for n in guarded.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert seen == PUBLIC
    assert (ROOT / "py.typed").exists()


def test_import_does_not_pull_in_the_demo_dependencies():
    code = "import tp_vit_plugins, sys; print(sorted(m for m in ('mlxtend','sklearn','matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["gohsp/graph.py", "cpvit/maths.py", "vtp/gates.py", "vtp/importance.py", "core/search.py"])
def test_maths_modules_do_not_import_timm(module):
    assert not any(m == "timm" or m.startswith("timm.") for m in _imported_modules(ROOT / module))


def test_library_modules_do_not_import_the_demo():
    for path in ROOT.rglob("*.py"):
        if "demo" in path.relative_to(ROOT).parts:
            continue
        assert not any("demo" in m.split(".") for m in _imported_modules(path)), path


@pytest.mark.parametrize("method", ["gohsp", "cpvit", "vtp"])
def test_one_folder_per_method(method):
    files = {p.name for p in (ROOT / method).glob("*.py")}
    assert {"__init__.py", "importance.py"} <= files
    assert files & {"pruner.py", "patch.py"}


@pytest.mark.slow
def test_mypy_resolves_the_public_names(tmp_path):
    """A type checker sees the real signatures through the lazy top level (py.typed + TYPE_CHECKING imports)."""
    pytest.importorskip("mypy")
    probe = tmp_path / "probe.py"
    probe.write_text("import tp_vit_plugins as tpv\nreveal_type(tpv.ViTPruner)\nreveal_type(tpv.apply_cascade)\n")
    root = ROOT.parent
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", str(probe)],
        capture_output=True, text=True, cwd=root, check=False,
    ).stdout  # fmt: skip
    assert "tp_vit_plugins.core.pruner.ViTPruner" in out and "tp_vit_plugins.cpvit.patch.Cascade" in out, out


@pytest.mark.parametrize(
    "module, name, new",
    [
        ("tp_vit_plugins.core.adapter", "sync_attention", "tp_vit_plugins.hosts.timm.sync"),
        ("tp_vit_plugins.core.adapter", "attention_modules", "tp_vit_plugins.hosts.timm.structure"),
        ("tp_vit_plugins.core.families", "convert_attention", "tp_vit_plugins.hosts.timm.families"),
        ("tp_vit_plugins.cpvit.patch", "merge_into_kept", "tp_vit_plugins.cpvit.maths"),
        ("tp_vit_plugins.cpvit.patch", "CHUNK_BYTES", "tp_vit_plugins.hosts.timm.blocks"),
        ("tp_vit_plugins.cpvit", "cascade_attention", "tp_vit_plugins.hosts.timm.blocks"),
        ("tp_vit_plugins.gohsp", "SIMILARITIES", "tp_vit_plugins.gohsp.graph"),
        ("tp_vit_plugins.vtp", "GATE_NAME", "tp_vit_plugins.vtp.gates"),
    ],
)
def test_names_that_left_a_module_still_work_and_warn(module, name, new):
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        old = getattr(importlib.import_module(module), name)
    assert old is getattr(importlib.import_module(new), name)


#: The method and core code that must reach host libraries only through the host interface.
HOST_NEUTRAL = ["core", "gohsp", "cpvit", "vtp", "budget.py", "export.py", "utils.py"]
#: Host libraries (and the library's own host modules) that code outside hosts/ must not import.
HOST_LIBRARIES = ("timm", "transformers", "torchvision", "open_clip")


def _host_neutral_files() -> list[pathlib.Path]:
    files = []
    for entry in HOST_NEUTRAL:
        path = ROOT / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return [f for f in files if f.name not in ("adapter.py", "families.py") or f.parent.name != "core"]  # 0.3 shims


@pytest.mark.parametrize("path", _host_neutral_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_import_no_host_library_and_no_host_module(path):
    """Methods ask ``tp_vit_plugins.hosts`` (the interface), never a host library or one host's module."""
    for name in _imported_modules(path):
        top = name.lstrip(".").split(".")[0]
        assert top not in HOST_LIBRARIES, f"{path.name} imports {name}"
        parts = name.lstrip(".").split(".")
        if "hosts" in parts:  # only the interface package itself
            assert parts[-1] == "hosts", f"{path.name} imports {name}: ask tp_vit_plugins.hosts.host_for(model) instead"


@pytest.mark.parametrize("path", _host_neutral_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_branch_on_no_host_type(path):
    """No ``is_transformers_model`` / class-name tests of host models outside hosts/."""
    text = path.read_text()
    for pattern in ("is_transformers_model", "type(model).__name__ in", "type(model).__name__ ==", "PrunableHFAttention",
                    "LayerAttentionCall", "PrunableTalkingHeadAttn"):  # fmt: skip
        assert pattern not in text, f"{path.name} branches on a host type ({pattern})"


@pytest.mark.parametrize("path", sorted((ROOT / "hosts" / "timm").rglob("*.py")), ids=lambda p: p.name)
def test_each_host_reads_only_its_own_library(path):
    """The timm adapter neither imports the transformers adapter nor branches on transformers models."""
    text = path.read_text()
    assert "is_transformers_model" not in text and "PrunableHFAttention" not in text
    assert not any("transformers" in name.split(".") for name in _imported_modules(path)), f"{path.name} imports transformers"
