"""tp-vit prune end to end (embedded path with a 1-epoch model, and a timm name), and its errors.

The tests read the :class:`PruneResult` that ``run_prune`` returns, not the printed table.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import tp_vit_plugins as tpv
from tp_vit_plugins.demo import cli, embedded
from tp_vit_plugins.demo import prune as prune_cmd
from tp_vit_plugins.demo.common import Structure

QUIET = ["--embedded-epochs", "1", "--calib-batches", "2", "--finetune-epochs", "0", "--quiet"]


def prune(*argv: str) -> prune_cmd.PruneResult:
    args = cli.build_parser().parse_args(["prune", *argv])
    cli.validate_prune(args)
    return prune_cmd.run_prune(cli.prune_options(args))


@pytest.mark.slow
def test_prune_embedded_reports_and_saves(cache, capsys, monkeypatch):
    out = cache / "pruned"
    r = prune(*QUIET, "--method", "taylor", "--latency-batch-sizes", "1", "2", "--out", str(out))
    assert r.before.heads == [6] * 6 and r.after.heads == [3] * 6
    assert r.after.mlp == [int(384 * (1 - 0.3))] * 6 and r.after.head_dims == [16] * 6
    assert r.pruned.params < r.dense.params and r.macs_ratio > 1.2
    assert set(r.dense.latency) == set(r.pruned.latency) == {1, 2} and r.speedup(2) > 0
    assert 0.0 <= r.pruned.accuracy <= 1.0 and r.dense.accuracy is not None
    assert r.saved_to == str(out)
    model = tpv.load_pruned(out)
    assert [b.attn.num_heads for b in model.blocks] == [3] * 6
    assert all(b.mlp.fc1.out_features == int(384 * (1 - 0.3)) for b in model.blocks)  # tp keeps int(C * (1 - r))
    report = prune_cmd.format_report(r)
    assert "[6, 6, 6, 6, 6, 6] -> [3, 3, 3, 3, 3, 3]" in report and f"load_pruned({str(out)!r})" in report

    # second run through main(): the cached embedded model is reused, no training; --json written
    monkeypatch.setattr(embedded, "finetune", lambda *a, **k: pytest.fail("retrained despite the cache"))
    report_path = cache / "reports" / "r.json"
    assert cli.main(["prune", *QUIET, "--method", "l2", "--no-latency", "--json", str(report_path)]) == 0
    data = json.loads(report_path.read_text())
    assert data["after"]["heads"] == [3] * 6 and data["method"] == "l2" and data["macs_ratio"] > 1
    assert any("cached at" in n for n in data["notes"])


@pytest.mark.slow
def test_prune_gohsp_admm_embedded(cache):
    r = prune(*QUIET, "--method", "gohsp", "--admm-epochs", "1", "--params-pruning-ratio", "0.3", "--no-latency")
    assert any(n.startswith("ADMM: 10 dual updates") and "primal residual" in n for n in r.notes)  # the recipe's 10
    assert r.before.heads == [6] * 6
    assert r.pruned.params <= 0.7 * r.dense.params + 1  # at least 30 % of the parameters removed


@pytest.mark.slow
def test_prune_cpvit_embedded(cache):
    r = prune(*QUIET, "--method", "cpvit", "--keep-ratio", "0.5", "--start-block", "1", "--no-latency")
    assert r.token_schedule == [49, 49, 41, 33, 25, 25]  # the default 3-stage stepped schedule
    ramp = prune(*QUIET, "--method", "cpvit", "--keep-ratio", "0.5", "--start-block", "1", "--no-latency",
                 "--schedule-steps", "0", "--token-fold", "drop")  # fmt: skip
    assert ramp.token_schedule == [49, 49, 43, 37, 31, 25]  # the ramp, tokens dropped (the paper's pipeline)
    assert r.pruned.params == r.dense.params and r.macs_ratio > 1.1  # same weights, fewer tokens


@pytest.mark.slow
def test_prune_vtp_embedded(cache):
    pytest.importorskip("matplotlib")
    argv = ["--embedded-epochs", "1", "--quiet", "--method", "vtp", "--sparse-epochs", "1", "--pruning-ratio", "0.3"]
    png = cache / "gates.png"
    r = prune(*argv, "--head-pruning-ratio", "0", "--finetune-epochs", "1", "--no-latency", "--gate-histogram", str(png))
    assert any(n.startswith("VTP gates after") and "exactly 0" in n for n in r.notes)
    assert r.gate_zero_share is not None and 0.0 <= r.gate_zero_share <= 1.0
    assert png.stat().st_size > 1000
    assert r.one_shot_accuracy is not None and r.finetune_epochs == 1
    assert r.dense.params / r.pruned.params > 1.2  # parameters removed


@pytest.mark.slow
def test_prune_vtp_by_gate_threshold(cache):
    """The paper's rule: everything whose gate the L1 step zeroed goes, no ratio needed."""
    argv = ["--embedded-epochs", "1", "--quiet", "--method", "vtp", "--sparse-epochs", "1", "--head-pruning-ratio", "0"]
    r = prune(*argv, "--gate-threshold", "0", "--shrink", "3", "--finetune-epochs", "0", "--no-latency")
    assert r.gate_zero_share > 0.05  # a strong L1 step zeroes gates ...
    assert r.pruned.params < r.dense.params  # ... and exactly those dims are removed


def test_prune_timm_name_without_data():
    argv = ["--model", "vit_tiny_patch16_224", "--method", "l1", "--head-pruning-ratio", "0.5", "--pruning-ratio", "0"]
    r = prune(*argv, "--finetune-epochs", "0", "--no-latency", "--quiet")
    assert r.before.heads == [3] * 12 and r.after.heads == [1] * 12  # round(1.5) = 2 removed
    assert r.dense.accuracy is None and r.pruned.accuracy is None


@pytest.mark.slow
@pytest.mark.parametrize("method, structure, target", [("l2", "both", 0.6), ("gohsp", "heads", 0.8)])
def test_prune_to_a_macs_target(cache, method, structure, target):
    out = cache / f"budget-{method}"
    r = prune(
        *QUIET,
        "--method",
        method,
        "--macs-keep-ratio",
        str(target),
        "--budget-structure",
        structure,
        "--no-latency",
        "--out",
        str(out),
    )
    assert r.budget is not None and r.budget.metric == "macs" and r.budget.relative_error <= 0.02
    assert not any(n.startswith("warning") for n in r.notes)
    assert abs(1 / r.macs_ratio - target) / target <= 0.02  # the report's own MACs count agrees
    model = tpv.load_pruned(out)
    if structure == "heads":  # MLPs untouched: every block keeps its 384 neurons, only heads went
        assert all(b.mlp.fc1.out_features == 384 for b in model.blocks) and sum(b.attn.num_heads for b in model.blocks) < 36


@pytest.mark.slow
def test_unreachable_macs_target_warns(cache):
    r = prune(*QUIET, "--method", "l1", "--macs-keep-ratio", "0.5", "--budget-structure", "heads", "--no-latency")
    assert any("is out of reach for --budget-structure heads" in n for n in r.notes)


@pytest.mark.slow
def test_prune_cpvit_to_a_macs_target(cache):
    r = prune(*QUIET, "--method", "cpvit", "--macs-keep-ratio", "0.7", "--start-block", "0", "--no-latency")
    assert any(n.startswith("budget: keep ratio") for n in r.notes)
    assert 0.66 <= 1 / r.macs_ratio <= 0.7 + 1e-9  # discrete tokens: at most the target, close to it


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--macs-keep-ratio", "1.5"], "--macs-keep-ratio must lie in"),
        (["prune", "--latency-keep-ratio", "0"], "--latency-keep-ratio must lie in"),
        (["prune", "--method", "cpvit", "--latency-keep-ratio", "0.5"], "cpvit takes --macs-keep-ratio"),
        (["prune", "--method", "gohsp", "--admm-epochs", "1", "--macs-keep-ratio", "0.5"], "--admm-epochs prunes"),
        (["prune", "--latency-keep-ratio", "0.5", "--no-latency"], "drop --no-latency"),
        (["prune", "--head-pruning-ratio", "1.0"], "--head-pruning-ratio"),
        (["prune", "--pruning-ratio", "-0.2"], "--pruning-ratio"),
        (["prune", "--model", "vit_tiny_patch16_224", "--method", "taylor", "--finetune-epochs", "0"], "calibration data"),
        (["prune", "--method", "gohsp", "--admm-epochs", "1", "--params-pruning-ratio", "1.0"], "--params-pruning-ratio"),
        (["prune", "--method", "cpvit", "--keep-ratio", "0"], "--keep-ratio"),
        (["prune", "--data-path", "/nowhere"], "need --model"),
        (["prune", "--model", "vit_tiny_patch16_224", "--data-path", "/nowhere"], "does not exist"),
        (
            ["prune", "--model", "deit_smal_patch16_224", "--method", "l2", "--finetune-epochs", "0"],
            "did you mean deit_small_patch16_224",
        ),
        (["prune", "--model", "vit_does_not_exist", "--method", "l2", "--finetune-epochs", "0"], "is not a timm model"),
        (["prune", "--out", "/proc/version/x"], "--out"),
        (["prune", "--out", "/proc/version"], "is a file"),
        (["prune", "--checkpoint", "/nowhere.pt"], "need --model"),
        (["prune", "--sparse-epochs", "-1"], "--sparse-epochs"),
        (["prune", "--threads", "0"], "--threads"),
        (["bench", "--methods", "magic"], "--methods"),
        (["bench", "--macs-keep-ratios", "1.5"], "--macs-keep-ratios"),
        (["bench", "--methods", "vtp", "--finetune-epochs", "0"], "--finetune-epochs >= 1"),
        (["prune", "--method", "l2", "--gate-threshold", "0"], "--gate-threshold"),
        (["prune", "--method", "vtp", "--gate-threshold", "0", "--macs-keep-ratio", "0.5"], "drop --macs-keep-ratio"),
        (["prune", "--method", "vtp", "--shrink", "0"], "--shrink"),
        (["prune", "--method", "cpvit", "--gate-histogram", "g.png"], "--gate-histogram"),
        (["prune", "--method", "cpvit", "--preset", "paper", "--macs-keep-ratio", "0.6"], "--attention-range 0"),
        (["prune", "--method", "gohsp", "--preset", "paper", "--head-pruning-ratio", "0.3"], "--params-pruning-ratio"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("tp-vit")  # one line that says what to change


def test_empty_data_folder_is_refused(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(SystemExit) as e:
        cli.main(["prune", "--model", "vit_tiny_patch16_224", "--data-path", str(tmp_path)])
    assert e.value.code == 2 and "non-empty train/" in capsys.readouterr().err


def test_help_version_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from tp_vit_plugins.demo import cli\n"
        "for argv in (['--help'], ['--version'], ['prune', '--head-pruning-ratio', '2']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        print('exit', e.code)\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "exit 0\n" in out and "exit 2" in out and f"tp-vit (tp_vit_plugins) {tpv.__version__}" in out
    assert out.strip().endswith("torch loaded: False")


def test_checkpoint_state_dict_is_loaded_and_a_mismatch_names_the_file(tmp_path, capsys):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("test_vit")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    r = prune("--model", "test_vit", "--checkpoint", str(weights), "--method", "l2", "--head-pruning-ratio", "0",
              "--pruning-ratio", "0.5", "--finetune-epochs", "0", "--no-latency", "--quiet")  # fmt: skip
    assert f"weights from --checkpoint {weights}" in r.notes
    torch.testing.assert_close(r.model.patch_embed.proj.weight, source.patch_embed.proj.weight)  # loaded, not re-initialised
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"head.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["prune", "--model", "test_vit", "--checkpoint", str(bad), "--method", "l2", "--finetune-epochs", "0", "--quiet"]
        )
    assert e.value.code == 2 and str(bad) in capsys.readouterr().err


def test_method_names_match_the_recipe_table():
    from tp_vit_plugins.demo.methods import METHODS
    from tp_vit_plugins.demo.names import BENCH_METHODS, PRUNE_METHODS

    assert set(METHODS) == {*PRUNE_METHODS, *BENCH_METHODS}


@pytest.mark.parametrize("tokens", [None, [49, 41, 33]])
def test_report_flags_a_model_slower_than_dense(tokens):
    m = prune_cmd.Measurement
    s = Structure([6], [16], [384])
    r = prune_cmd.PruneResult("embedded", "cpvit", m(10, 100, None, {1: 1.0, 64: 20.0}), m(10, 70, None, {1: 1.6, 64: 16.0}),
                              torch.nn.Identity(), s, s, token_schedule=tokens)  # fmt: skip
    lines = prune_cmd.format_report(r).splitlines()
    bs1 = next(line for line in lines if line.startswith("bs 1:"))
    bs64 = next(line for line in lines if line.startswith("bs 64:"))
    assert "SLOWER than dense" in bs1 and "SLOWER" not in bs64  # 0.62x at batch 1, 1.25x at batch 64
    assert ("scoring and merging" in bs1) == (tokens is not None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--method", "cpvit", "--pruning-ratio", "0.2"], "--method cpvit does not use --pruning-ratio"),
        (["prune", "--method", "l2", "--keep-ratio", "0.5"], "--method l2 does not use --keep-ratio"),
        (["prune", "--method", "gohsp", "--admm-epochs", "1", "--head-pruning-ratio", "0.3"], "--params-pruning-ratio"),
        (["prune", "--method", "taylor", "--reg", "0.1"], "does not use --reg"),
        (["prune", "--out", "/proc/x"], "--out '/proc/x' cannot be written"),
        (["prune", "--json", "/proc/x/report.json"], "cannot be written"),
    ],
)
def test_ignored_flags_and_unwritable_outputs_are_refused_in_one_line_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err


def test_an_unreadable_checkpoint_is_refused_in_words_before_any_work(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    with pytest.raises(SystemExit) as e:
        cli.main(["prune", "--model", "test_vit", "--checkpoint", str(text), "--method", "l2", "--finetune-epochs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "is not a torch.save file or a safetensors file of weights" in err[0] and str(text) in err[0]


@pytest.mark.parametrize("old", ["--head-ratio", "--width-ratio", "--target-params", "--target-macs", "--targets"])
def test_flag_spellings_removed_in_0_4_are_refused(old, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["prune", old, "0.25"])
    assert e.value.code == 2 and f"unrecognized arguments: {old}" in capsys.readouterr().err


def test_help_shows_defaults():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["prune"].format_help().split())
    assert "(default: 0.3)" in text and "(default: 0.5; vtp: 0)" in text and "--head-ratio" not in text
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "/nowhere", "m.onnx"], "is not a directory written by tpv.save_pruned"),
        (["prune", "--export", "model.txt"], "must name a .onnx file"),
    ],
)
def test_export_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_prune_export_and_the_export_command(cache, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx_path, saved = tmp_path / "p.onnx", tmp_path / "saved"
    r = prune(*QUIET, "--method", "l2", "--export", str(onnx_path), "--out", str(saved), "--latency-batch-sizes", "1", "4")
    assert r.onnx["max_abs_diff"] <= 1e-4 and onnx_path.stat().st_size > 0
    assert set(r.onnx["latency"]) == {1, 4} and all(v[2] > 0 for v in r.onnx["latency"].values())
    assert cli.main(["export", str(saved), str(tmp_path / "again.onnx"), "--latency-batch-sizes", "2"]) == 0
    assert "max |diff|" in capsys.readouterr().out and (tmp_path / "again.onnx").exists()


def test_presets_keep_their_meaning_through_the_cli():
    """GOHSP's paper preset runs its ADMM phase, VTP removes no whole head unless asked (defaults per method)."""
    parse = cli.build_parser().parse_args
    args = parse(["prune", "--method", "gohsp", "--preset", "paper"])
    cli.validate_prune(args)
    assert cli.prune_options(args).admm_epochs == 2
    args = parse(["prune", "--method", "gohsp"])
    cli.validate_prune(args)
    assert cli.prune_options(args).admm_epochs == 0 and cli.prune_options(args).head_pruning_ratio == 0.5
    for preset in ([], ["--preset", "paper"]):
        args = parse(["prune", "--method", "vtp", *preset])
        cli.validate_prune(args)
        assert cli.prune_options(args).head_pruning_ratio == 0.0
    args = parse(["prune", "--method", "cpvit", "--preset", "paper", "--attention-range", "0", "--macs-keep-ratio", "0.6"])
    cli.validate_prune(args)  # the plain schedule fits a budget when asked for explicitly
    assert prune_cmd.PruneOptions(method="vtp").head_pruning_ratio == 0.0  # the same defaults without the CLI
    assert prune_cmd.PruneOptions(method="gohsp", preset="paper").admm_epochs == 2


@pytest.mark.slow
def test_the_gohsp_paper_preset_prunes_heterogeneously(cache):
    r = prune(*QUIET, "--method", "gohsp", "--preset", "paper", "--no-latency")
    assert r.pruned.params <= 0.6 * r.dense.params + 1  # --params-pruning-ratio 0.4 through ADMM
    assert len(set(r.after.mlp)) > 1 or len(set(r.after.heads)) > 1  # heterogeneous, not a uniform one-shot prune


@pytest.mark.slow
def test_the_vtp_paper_preset_keeps_every_head_and_prunes_block_inputs(cache):
    r = prune(*QUIET, "--method", "vtp", "--preset", "paper", "--sparse-epochs", "1", "--no-latency")
    assert r.after.heads == r.before.heads  # VTP prunes dimensions, never whole heads
    assert any(a < 96 or m < 96 for a, m in r.after.inputs) and r.after.inputs != r.before.inputs


@pytest.mark.slow
def test_a_cascade_pruned_with_the_cli_is_saved_loaded_and_exported_with_its_cascade(cache, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    saved = tmp_path / "saved"
    r = prune(*QUIET, "--method", "cpvit", "--keep-ratio", "0.5", "--out", str(saved))
    loaded = tpv.load_pruned(saved)
    cascade = tpv.cpvit.find_cascade(loaded)
    assert cascade is not None and cascade.counts == r.token_schedule
    capsys.readouterr()
    assert cli.main(["export", str(saved), str(tmp_path / "c.onnx"), "--latency-batch-sizes", "2"]) == 0
    out = capsys.readouterr().out
    assert f"with its CP-ViT cascade (patch tokens per block {r.token_schedule})" in out
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = loaded(x).numpy()
    session = tpv.export.onnx_session(str(tmp_path / "c.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - want).max() <= 1e-4
    assert cli.main(["export", str(saved), str(tmp_path / "d.onnx"), "--latency-batch-sizes", "2", "--no-cascade"]) == 0
    assert "CP-ViT cascade" not in capsys.readouterr().out


def test_a_method_option_is_declared_once_in_its_dataclass(monkeypatch, capsys):
    """A field with a Flag is the whole declaration: flag, help with each preset's value, mapping, validation."""
    import dataclasses

    from tp_vit_plugins.core.options import Flag, option
    from tp_vit_plugins.demo import names

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        strength: float = option(0.25, Flag("--toy-strength", "how hard the toy method prunes"))
        stages: int | None = option(2, Flag("--toy-stages", "stages, 0: continuous", none_at=0))

        @classmethod
        def preset(cls, name: str) -> ToyConfig:
            return cls() if name == "recommended" else cls(strength=0.5, stages=None)

        def __post_init__(self) -> None:
            if self.strength < 0:
                raise ValueError(f"strength must be >= 0, got {self.strength}")

    monkeypatch.setitem(names.REGISTRY, "toy", names.MethodEntry("toy", ToyConfig, structure=False))
    parser = cli.build_parser()
    text = " ".join(parser._subparsers._group_actions[0].choices["prune"].format_help().split())
    assert "toy: how hard the toy method prunes (preset: 0.25, paper 0.5)" in text
    assert "toy: stages, 0: continuous (preset: 2, paper 0)" in text
    args = parser.parse_args(["prune", "--method", "toy", "--toy-strength", "0.1", "--toy-stages", "0"])
    cli.validate_prune(args, {"toy.strength", "toy.stages"})
    assert cli.prune_options(args).method_options == {"strength": 0.1, "stages": None}
    assert cli.method_config(args) == ToyConfig(strength=0.1, stages=None)
    with pytest.raises(ValueError, match="--toy-strength: strength must be >= 0"):
        cli.method_config(parser.parse_args(["prune", "--method", "toy", "--toy-strength", "-1"]))
    with pytest.raises(SystemExit):
        cli.main(["prune", "--method", "l2", "--toy-strength", "0.1"])
    assert "--method l2 does not use --toy-strength" in capsys.readouterr().err
