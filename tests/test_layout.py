"""The package's shape: public names, a demo the library never imports, maths without timm."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import tp_vit_plugins as tpv

ROOT = pathlib.Path(tpv.__file__).parent
README_NAMES = [
    "ViTPruner",
    "GraphHeadImportance",
    "GOHSPPruner",
    "CumulativeHeadImportance",
    "GateImportance",
    "VTPPruner",
    "vit_pruning_kwargs",
    "sync_attention",
    "attention_maps",
    "save_pruned",
    "load_pruned",
    "finetune",
    "fit_budget",
    "fit_keep_ratio",
    "count_macs",
    "measure_latency",
]


def test_every_public_name_resolves():
    for name in [*tpv.__all__, *README_NAMES]:
        assert getattr(tpv, name) is not None, name
    assert callable(tpv.finetune)  # the function, not a shadowed module
    for name in ("apply_cascade", "remove_cascade", "cascade_macs", "find_cascade"):
        assert callable(getattr(tpv.tokens, name))


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
