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
        "l2,gohsp,vtp,cpvit,gohsp+cpvit,vtp+cpvit",
        "--macs-keep-ratios",
        "0.7",
        "--seeds",
        "1",
        "--finetune-epochs",
        "1",
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
        "sparse ep",
        "fine-tune ep",
        "acc at prune %",
        "final acc %",
        "VTP gates = 0 %",
        "ms @bs1",
        "speed-up @bs1",
        "speed-up ÷ MACs ratio @bs1",
    ):
        assert col in table
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert [r["method"] for r in rows] == ["dense+E", "l2", "gohsp", "vtp", "cpvit", "gohsp+cpvit", "vtp+cpvit"]
    control, rows = rows[0], rows[1:]
    assert control["macs_kept"] == 1.0 and control["finetune_epochs"] == 1
    for r in rows:
        assert r["sparse_epochs"] + r["finetune_epochs"] == 1, r  # equal epochs for every method
        assert (r["gate_zero_share"] is not None) == r["method"].startswith("vtp")
        assert abs(r["macs_kept"] - 0.7) / 0.7 <= 0.02, r  # every method hits the budget within 2 %
        assert set(r) >= {"params", "oneshot_acc", "final_acc", "latency", "speedup", "heads", "mlp"}
    cascade_only = next(r for r in rows if r["method"] == "cpvit")
    assert cascade_only["params"] == control["params"]  # tokens only
    for r in rows:
        if "+" in r["method"]:  # structure and tokens: fewer params than dense, yet at the same MACs budget
            assert cascade_only["params"] > r["params"] > 0.7 * control["params"], r
    for png in ("accuracy_vs_macs.png", "structure.png", "vtp_gates_0.70_s0.png"):
        assert (out / png).stat().st_size > 1000
