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


def test_public_names_are_few_and_resolve():
    assert set(tpv.__all__) == PUBLIC and len(tpv.__all__) <= 16
    for name in tpv.__all__:
        assert getattr(tpv, name) is not None, name


@pytest.mark.parametrize(
    "module, name",
    [
        ("tp_vit_plugins", "finetune"),
        ("tp_vit_plugins", "fit_keep_ratio"),
        ("tp_vit_plugins", "tokens"),
        ("tp_vit_plugins.cpvit.patch", "merge_into_kept"),
        ("tp_vit_plugins.cpvit", "cascade_attention"),
        ("tp_vit_plugins.gohsp", "SIMILARITIES"),
        ("tp_vit_plugins.vtp", "GATE_NAME"),
    ],
)
def test_names_moved_in_0_3_are_gone_in_0_4(module, name):
    with pytest.raises(AttributeError, match=name):
        getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module", ["tp_vit_plugins.tokens", "tp_vit_plugins.core.adapter", "tp_vit_plugins.core.families"])
def test_modules_moved_in_0_3_are_gone_in_0_4(module):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


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


def test_benchmarks_use_public_names_only():
    for path in (ROOT.parent / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tp_vit_plugins"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
