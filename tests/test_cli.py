"""tp-vit prune end to end (embedded path with a 1-epoch model, and a timm name)."""

from __future__ import annotations

import pytest

import tp_vit_plugins as tpv
from tp_vit_plugins import cli, embedded


def test_prune_embedded_prints_table_and_saves(cache, capsys, monkeypatch):
    out = cache / "pruned"
    args = [
        "prune",
        "--embedded-epochs",
        "1",
        "--method",
        "taylor",
        "--calib-batches",
        "2",
        "--finetune-epochs",
        "0",
        "--latency-batch-sizes",
        "1",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    for needle in ("params", "MACs", "test acc", "ms @bs1", "ms @bs2", "dense", "pruned", "speed-up", "heads per block"):
        assert needle in text
    assert "[6, 6, 6, 6, 6, 6] -> [3, 3, 3, 3, 3, 3]" in text
    model = tpv.load_pruned(out)
    assert [b.attn.num_heads for b in model.blocks] == [3] * 6
    assert all(b.mlp.fc1.out_features == int(384 * (1 - 0.3)) for b in model.blocks)  # tp keeps int(C * (1 - r))

    # second run: the cached embedded model is reused, no training
    monkeypatch.setattr(embedded, "train", lambda *a, **k: pytest.fail("retrained despite the cache"))
    assert (
        cli.main(["prune", "--embedded-epochs", "1", "--method", "l2", "--no-latency", "--finetune-epochs", "0", "--quiet"]) == 0
    )


def test_prune_gohsp_admm_embedded(cache, capsys):
    args = [
        "prune",
        "--embedded-epochs",
        "1",
        "--method",
        "gohsp",
        "--admm-epochs",
        "1",
        "--target-params",
        "0.3",
        "--calib-batches",
        "2",
        "--finetune-epochs",
        "0",
        "--no-latency",
        "--quiet",
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "ADMM residual" in text and "heads per block: [6, 6, 6, 6, 6, 6] ->" in text
    ratio = float(text.split("dense/pruned")[1].split("x")[0])
    assert ratio >= 1 / 0.7 - 1e-3  # at least 30 % of the parameters removed


def test_prune_cpvit_embedded(cache, capsys):
    args = [
        "prune",
        "--embedded-epochs",
        "1",
        "--method",
        "cpvit",
        "--keep",
        "0.5",
        "--start-block",
        "1",
        "--finetune-epochs",
        "0",
        "--no-latency",
        "--quiet",
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "patch tokens per block [49, 49, 43, 37, 31, 25]" in text
    params_ratio, macs_ratio = (float(v.split("x")[0]) for v in text.split("dense/pruned")[1].split()[:2])
    assert params_ratio == 1.0 and macs_ratio > 1.1  # same weights, fewer tokens (beta defers some drops)


def test_prune_vtp_embedded(cache, capsys):
    args = [
        "prune",
        "--embedded-epochs",
        "1",
        "--method",
        "vtp",
        "--sparse-epochs",
        "1",
        "--width-ratio",
        "0.3",
        "--head-ratio",
        "0",
        "--finetune-epochs",
        "1",
        "--no-latency",
        "--quiet",
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "gates below 0.01 after sparse training" in text and "one-shot accuracy" in text
    assert float(text.split("dense/pruned")[1].split("x")[0]) > 1.2  # parameters removed


def test_prune_timm_name_without_data(capsys):
    assert (
        cli.main(
            [
                "prune",
                "--model",
                "vit_tiny_patch16_224",
                "--method",
                "l1",
                "--head-ratio",
                "0.5",
                "--width-ratio",
                "0",
                "--finetune-epochs",
                "0",
                "--no-latency",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "[3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3] -> [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]" in text  # round(1.5) = 2 removed


def _macs_ratio(text: str) -> float:
    """dense/pruned MACs ratio from the printed table."""
    return float(text.split("dense/pruned")[1].split()[1].rstrip("x"))


@pytest.mark.parametrize("method, structure, target", [("l2", "both", 0.6), ("gohsp", "heads", 0.8)])
def test_prune_to_a_macs_target(cache, capsys, method, structure, target):
    args = ["prune", "--embedded-epochs", "1", "--method", method, "--target-macs", str(target), "--budget-structure", structure]
    out = cache / f"budget-{method}"
    args += ["--calib-batches", "2", "--finetune-epochs", "0", "--no-latency", "--quiet", "--out", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    achieved = float(text.split("-> achieved ")[1].split()[0])
    assert f"budget: keep {target:.3f} of the dense macs" in text and abs(achieved - target) / target <= 0.02
    assert "warning" not in text
    assert abs(1 / _macs_ratio(text) - target) / target <= 0.02 + 0.01  # the table's own MACs count agrees (2-digit print)
    model = tpv.load_pruned(out)
    if structure == "heads":  # MLPs untouched: every block keeps its 384 neurons, only heads went
        assert all(b.mlp.fc1.out_features == 384 for b in model.blocks) and sum(b.attn.num_heads for b in model.blocks) < 36


def test_unreachable_macs_target_warns(cache, capsys):
    args = ["prune", "--embedded-epochs", "1", "--method", "l1", "--target-macs", "0.5", "--budget-structure", "heads"]
    assert cli.main([*args, "--finetune-epochs", "0", "--no-latency", "--quiet"]) == 0
    assert "is out of reach for --budget-structure heads" in capsys.readouterr().out


def test_prune_cpvit_to_a_macs_target(cache, capsys):
    args = ["prune", "--embedded-epochs", "1", "--method", "cpvit", "--target-macs", "0.7", "--start-block", "0"]
    args += ["--finetune-epochs", "0", "--no-latency", "--quiet"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "budget: keep ratio" in text and "fixed" in text
    assert 0.66 <= 1 / _macs_ratio(text) <= 0.7 + 0.005  # discrete tokens: at most the target, close to it


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--target-macs", "1.5"], "--target-macs must lie in"),
        (["prune", "--target-latency", "0"], "--target-latency must lie in"),
        (["prune", "--method", "cpvit", "--target-latency", "0.5"], "cpvit takes --target-macs"),
        (["prune", "--method", "gohsp", "--admm-epochs", "1", "--target-macs", "0.5"], "--admm-epochs prunes"),
        (["prune", "--target-latency", "0.5", "--no-latency"], "drop --no-latency"),
        (["prune", "--head-ratio", "1.0"], "--head-ratio"),
        (["prune", "--width-ratio", "-0.2"], "--width-ratio"),
        (["prune", "--model", "vit_tiny_patch16_224", "--method", "taylor", "--finetune-epochs", "0"], "calibration data"),
        (["prune", "--target-params", "1.0"], "--target-params"),
        (["prune", "--method", "cpvit", "--keep", "0"], "--keep"),
        (["prune", "--data-path", "/nowhere"], "need a timm model name"),
    ],
)
def test_cli_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)
