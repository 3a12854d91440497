"""The API reference builds from the docstrings with warnings as errors (mkdocs + mkdocstrings)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.slow
def test_api_reference_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-q",
        "-f",
        str(ROOT / "mkdocs.yml"),
        "-d",
        str(tmp_path / "site"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "top-level" / "index.html").exists()


#: The public packages whose ``__all__`` the API reference must cover (``tokens`` is a deprecated alias).
PUBLIC = ("tp_vit_plugins", "tp_vit_plugins.gohsp", "tp_vit_plugins.cpvit", "tp_vit_plugins.vtp", "tp_vit_plugins.utils",
          "tp_vit_plugins.export")  # fmt: skip


def test_every_public_name_has_a_docstring_and_a_place_in_the_api_reference():
    import importlib
    import inspect
    import re

    pages = " ".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    refs = set(re.findall(r":::\s*([\w.]+)", pages))
    missing = []
    for modname in PUBLIC:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            documented = isinstance(obj, (str, tuple, int, float, dict)) or bool(inspect.getdoc(obj))
            home = getattr(obj, "__module__", modname)
            placed = any(r in (f"{modname}.{name}", modname, home, f"{home}.{name}") or r.endswith("." + name) for r in refs)
            if not (documented and placed):
                missing.append(f"{modname}.{name}")
    assert not missing, f"public names without a docstring or an API reference entry: {missing}"
