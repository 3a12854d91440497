"""Every Python block of README.md runs, top to bottom in one namespace (random weights, no download)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks_and_is_short():
    assert len(python_blocks()) >= 6
    assert README.stat().st_size <= 15_360  # a guide a newcomer reads: at most 15 KB


@pytest.mark.slow
def test_every_python_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # the blocks write files (save_pruned, .onnx)
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block that broke
            raise AssertionError(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e
