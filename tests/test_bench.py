"""tp-vit bench end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from tp_vit_plugins.demo import cli


@pytest.mark.slow
def test_bench_tiny_config_writes_the_three_outputs(cache, capsys):
    pytest.importorskip("matplotlib")
    out = cache / "bench"
    argv = [
        "bench",
        "--embedded-epochs",
        "1",
        "--methods",
        "l2,gohsp,vtp,cpvit,gohsp+cpvit",
        "--targets",
        "0.7",
        "--seeds",
        "1",
        "--finetune-epochs",
        "0",
        "--calib-batches",
        "2",
        "--latency-batch-sizes",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    table = (out / "RESULTS.md").read_text()
    for col in (
        "method",
        "target",
        "achieved MACs",
        "params",
        "one-shot acc %",
        "fine-tuned acc %",
        "ms @bs1",
        "speed-up @bs1",
        "speed-up ÷ MACs ratio @bs1",
    ):
        assert col in table
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert [r["method"] for r in rows] == ["l2", "gohsp", "vtp", "cpvit", "gohsp+cpvit"]
    for r in rows:
        assert abs(r["macs_kept"] - 0.7) / 0.7 <= 0.02, r  # every method hits the budget within 2 %
        assert set(r) >= {"params", "oneshot_acc", "final_acc", "latency", "speedup", "heads", "mlp"}
    for png in ("accuracy_vs_macs.png", "structure.png"):
        assert (out / png).stat().st_size > 1000
