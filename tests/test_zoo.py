"""The zoo bench: peers written from their papers, paired bootstrap, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys

import pytest
import torch
from conftest import make_model

from tp_vit_plugins.demo import zoo_bench, zoo_report
from tp_vit_plugins.demo.peers import apply_evit, apply_tome, bipartite_merge, evit_blocks, remove_peer
from tp_vit_plugins.demo.zoo import ZOO, ZooModel

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
zoo_runs = importlib.import_module("zoo_runs")  # the benchmarks' merging of saved runs


def test_zoo_spans_what_the_issue_asks_for():
    depths = {m.arch["depth"] for m in ZOO}
    widths = {m.arch["embed_dim"] for m in ZOO}
    heads = {m.arch["num_heads"] for m in ZOO}
    head_dims = {m.arch["embed_dim"] // m.arch["num_heads"] for m in ZOO}
    tokens = {m.tokens for m in ZOO}
    assert len(ZOO) >= 6 and min(depths) == 4 and max(depths) == 12 and min(widths) == 64 and max(widths) == 192
    assert min(heads) == 3 and max(heads) == 12 and min(head_dims) == 8 and max(head_dims) == 32
    assert min(tokens) == 16 and max(tokens) == 196
    assert any("init_values" in m.arch for m in ZOO) and any("reg_tokens" in m.arch for m in ZOO)
    assert any(m.arch.get("class_token") is False for m in ZOO) and {m.dataset for m in ZOO} == {"mnist", "digits"}
    assert len({m.key() for m in ZOO}) == len(ZOO)


def test_bipartite_merge_closed_form():
    # 4 patches: A = {0, 2}, B = {1, 3}; token 2 is identical to token 3, token 0 orthogonal to both B tokens
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [1.0, 1.0]]])
    size = torch.tensor([[[1.0], [1.0], [2.0], [1.0]]])
    metric = torch.tensor([[[1.0, -1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    out, new_size = bipartite_merge(x, size, metric, 1)
    # kept A token 0, then B tokens 1 and 3; token 2 (size 2) merged into 3: (2 * [3, 3] + 1 * [1, 1]) / 3
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7 / 3, 7 / 3]]]))
    torch.testing.assert_close(new_size, torch.tensor([[[1.0], [1.0], [3.0]]]))


def test_peers_at_no_reduction_are_the_model_and_per_image(family, x):
    model = make_model(family, depth=4, img_size=32, patch_size=4)
    if family in ("beit", "eva02", "cait"):  # the peers are ViT-block baselines for the zoo
        with pytest.raises(TypeError, match="VisionTransformer blocks only"):
            apply_tome(model, 1)
        return
    with torch.no_grad():
        ref = model(x)
        for attach in (lambda: apply_tome(model, 0), lambda: apply_evit(model, 1.0)):
            patch = attach()
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
            remove_peer(patch)
        assert torch.equal(model(x), ref)
        for attach in (lambda: apply_tome(model, 6), lambda: apply_evit(model, 0.6)):
            patch = attach()
            with pytest.raises(TypeError, match="already"):
                apply_tome(model, 1)
            batch = model(x)
            single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
            torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)  # an image's output ignores its batch
            assert patch.counts[-1] < 64
            remove_peer(patch)
    assert evit_blocks(12) == [3, 6, 9] and evit_blocks(4) == [1, 2, 3]


def test_paired_bootstrap_closed_form():
    constant = [torch.full((3, 50), 0.25), torch.full((2, 40), -0.05)]
    point, low, high = zoo_report.paired_bootstrap(constant, boot=50)
    assert point == pytest.approx(0.10) and low == pytest.approx(0.10) and high == pytest.approx(0.10)
    g = torch.Generator().manual_seed(0)
    noisy = [(torch.rand(3, 400, generator=g) < 0.6).double() - (torch.rand(3, 400, generator=g) < 0.5).double()]
    point, low, high = zoo_report.paired_bootstrap(noisy, boot=300)
    assert low < point < high and 0.02 < point < 0.2 and high - low < 0.15


def test_hessian_importance_accumulates_squared_gradients(x):
    model = make_model()
    y = torch.tensor([0, 1, 2, 3])
    loader = [(x[:2], y[:2]), (x[2:], y[2:])]
    imp = zoo_bench.hessian_importance(model, loader)
    expected = 0
    for xb, yb in loader:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        expected = expected + model.head.weight.grad.pow(2)
    torch.testing.assert_close(imp._accu_grad[model.head.weight], expected)
    assert imp._counter[model.head.weight] == 2


@pytest.mark.slow
def test_tiny_zoo_run_writes_tables_json_and_heatmap(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("TPV_CACHE_DIR", str(tmp_path / "cache"))
    tiny = (
        ZooModel("tiny-a", "digits", 8, dict(patch_size=2, embed_dim=32, depth=4, num_heads=2), epochs=1),
        ZooModel(
            "tiny-b",
            "digits",
            8,
            dict(patch_size=2, embed_dim=32, depth=4, num_heads=4, class_token=False, global_pool="avg"),
            epochs=1,
        ),
    )
    settings = zoo_bench.ZooSettings.quick()
    lines: list[str] = []
    summary = zoo_bench.run_zoo(str(tmp_path / "out"), settings, progress=False, members=tiny, command="test", log=lines.append)
    assert lines[0].startswith("training zoo model tiny-a (1 epochs; first use only") and "min left" in lines[1]
    assert "zoo protocol heads on tiny-a (1 of 8)" in lines
    assert set(summary) == {"heads | 50% heads removed", "pipeline | -40% params, 2 epochs", "tokens | 70% MACs",
                            "latency | bs 1, 60% MACs"}  # fmt: skip
    heads = summary["heads | 50% heads removed"]
    assert set(heads["accuracy"]) == set(zoo_bench.HEAD_METHODS)
    assert set(heads["versus_best_peer"]) == {"gohsp", "gohsp-paper", "cpvit"}
    point, low, high = heads["versus_best_peer"]["gohsp"]["zoo_mean"]
    assert low <= point <= high
    data = json.loads((tmp_path / "out" / "zoo.json").read_text())
    tokens = [r for r in data["records"] if r["protocol"] == "tokens"]
    assert all(r["kept"] <= 0.7 + 1e-6 for r in tokens)  # every token method at most at the MACs target
    pipeline = [r for r in data["records"] if r["protocol"] == "pipeline" and r["method"] != "dense+E"]
    assert all(r["kept"] <= 0.6 + 1e-3 for r in pipeline), [(r["method"], r["kept"]) for r in pipeline]
    assert "mean rank" in (tmp_path / "out" / "ZOO.md").read_text()
    assert (tmp_path / "out" / "zoo_ranks.png").stat().st_size > 1000
    # the per-image outcomes are kept, so runs merge with the same paired intervals
    merged = zoo_runs.merge_runs(str(tmp_path / "merged"), [str(tmp_path / "out" / "zoo.json")], "merge", boot=settings.boot)
    assert merged["heads | 50% heads removed"]["versus_best_peer"] == heads["versus_best_peer"]
    assert merged["tokens | 70% MACs"]["accuracy"] == summary["tokens | 70% MACs"]["accuracy"]
    source = f"{tmp_path / 'out' / 'zoo.json'}:gohsp=gohsp-renamed"
    only = zoo_runs.merge_runs(str(tmp_path / "only"), [source], "merge", boot=settings.boot, methods=["gohsp-renamed", "l2"])
    assert set(only["heads | 50% heads removed"]["accuracy"]) == {"gohsp-renamed", "l2"}
    assert only["heads | 50% heads removed"]["accuracy"]["gohsp-renamed"] == heads["accuracy"]["gohsp"]
    with pytest.raises(ValueError, match="no records"):
        zoo_runs.merge_runs(str(tmp_path / "none"), [source], "merge", methods=["nothing"])


def test_summary_of_a_method_measured_on_some_models_only(tmp_path):
    """A merge where one variant covers part of the zoo: it is compared on its models and left unranked."""

    def rec(model: str, method: str, hits: int, seed: int = 0) -> zoo_report.Record:
        correct = [i < hits for i in range(10)]
        return zoo_report.Record("pipeline", "-40% params", model, method, seed, hits / 10, 0.6, correct)

    rows = [rec("a", "taylor", 6), rec("b", "taylor", 8), rec("a", "l2", 5), rec("b", "l2", 7)]
    rows += [rec("a", "gohsp", 7), rec("b", "gohsp", 9), rec("a", "gohsp-sgd", 4)]
    block = zoo_report.summarize(rows, boot=50)["pipeline | -40% params"]
    assert block["mean_rank"] == {"gohsp": 1.0, "taylor": 2.0, "l2": 3.0}  # the partial variant is not ranked
    assert block["accuracy"]["gohsp-sgd"] == {"a": 0.4}
    partial = block["versus_best_peer"]["gohsp-sgd"]
    assert partial["peer"] == "taylor" and set(partial["per_model"]) == {"a"}
    assert partial["zoo_mean"][0] == pytest.approx(-0.2)  # 4 of 10 vs 6 of 10, on model a only
    assert block["versus_best_peer"]["gohsp"]["zoo_mean"][0] == pytest.approx(0.1)
    table = zoo_report.render({"pipeline | -40% params": block}, {"a": 0.9, "b": 0.9}, "cmd")
    assert "| gohsp-sgd | 40.00 | – | 40.00 (1 of 2) | – | 0.600 |" in table
    disjoint = zoo_report.summarize([rec("a", "taylor", 6), rec("b", "gohsp", 7)], boot=50)  # nothing on every model
    assert disjoint["pipeline | -40% params"]["mean_rank"] == {}
    if importlib.util.find_spec("matplotlib"):
        zoo_report._heatmap(disjoint, str(tmp_path / "ranks.png"))  # an empty panel, no error


def test_a_flag_below_the_random_reference_carries_its_paired_interval():
    def rec(model: str, method: str, correct: list[bool]) -> zoo_report.Record:
        return zoo_report.Record("heads", "50% heads removed", model, method, 0, sum(correct) / 4, 0.5, correct)

    rows = [rec("a", "random", [True, True, False, False]), rec("a", "gohsp", [True, False, False, False])]
    rows += [
        rec("b", "random", [True] * 4),
        rec("b", "gohsp", [True] * 4),
        rec("a", "l2", [True] * 4),
        rec("b", "l2", [True] * 4),
    ]
    block = zoo_report.summarize(rows, boot=200)["heads | 50% heads removed"]
    (flag,) = block["flags"]
    assert flag.startswith("gohsp is below random on a -25.00 [")  # one image of four, model b not flagged
    assert ", b" not in flag


def test_tp_loop_and_isomorphic_peers_reach_the_parameter_budget(tmp_path, monkeypatch):
    """``gohsp@tp`` / ``vtp@tp`` (tp's calls only), tp's isomorphic pruning and LAMP run and land on the budget."""
    monkeypatch.setenv("TPV_CACHE_DIR", str(tmp_path / "cache"))
    tiny = (ZooModel("tiny-a", "digits", 8, dict(patch_size=2, embed_dim=32, depth=4, num_heads=2), epochs=1),)
    methods = ("l2-iso", "taylor-iso", "lamp", "gohsp@tp", "vtp@tp")
    variants = importlib.import_module("zoo_variants")  # benchmarks/: the package runs the defaults and peers only
    monkeypatch.setattr(zoo_bench, "PIPELINE_METHODS_EXTRA", dict(variants.PIPELINE))
    settings = dataclasses.replace(zoo_bench.ZooSettings.quick(("pipeline",)), pipeline_methods=methods)
    summary = zoo_bench.run_zoo(str(tmp_path / "out"), settings, progress=False, members=tiny)
    block = summary["pipeline | -40% params, 2 epochs"]
    assert set(block["accuracy"]) == set(methods)
    assert set(block["versus_best_peer"]) == {"gohsp@tp", "vtp@tp"}  # ours, compared with the peers
    records = json.loads((tmp_path / "out" / "zoo.json").read_text())["records"]
    assert all(0.55 <= r["kept"] <= 0.6 + 1e-3 for r in records), [(r["method"], r["kept"]) for r in records]
    vtp = next(r for r in records if r["method"] == "vtp@tp")
    assert vtp["extra"]["gate_zero_share"] > 0  # closing rounds ran from update_regularizer() alone


def test_the_vtp_paper_preset_reaches_the_parameter_budget_with_its_own_step(tmp_path, monkeypatch):
    """The pipeline prunes ``vtp-paper`` by its pruner's fitted step: per-block input dims go too, at the budget."""
    monkeypatch.setenv("TPV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo_bench, "VTP_VARIANTS", dict(zoo_bench.VTP_VARIANTS))
    zoo_bench.register_variants(vtp={"vtp-paper": {"preset": "paper"}})
    tiny = (ZooModel("tiny-a", "digits", 8, dict(patch_size=2, embed_dim=32, depth=4, num_heads=2), epochs=1),)
    settings = dataclasses.replace(zoo_bench.ZooSettings.quick(("pipeline",)), pipeline_methods=("vtp-paper",))
    zoo_bench.run_zoo(str(tmp_path / "out"), settings, progress=False, members=tiny)
    (record,) = json.loads((tmp_path / "out" / "zoo.json").read_text())["records"]
    assert 0.55 <= record["kept"] <= 0.6 + 1e-3
    assert record["extra"]["input_dims_removed"] > 0


def test_the_package_runs_the_library_defaults_and_the_peers_only():
    from tp_vit_plugins.demo.names import ZOO_PIPELINE_METHODS, ZOO_TOKEN_METHODS

    defaults = {"dense+E", "l2", "taylor", "group_norm", *zoo_bench.GOHSP_VARIANTS, *zoo_bench.VTP_VARIANTS}
    assert set(ZOO_PIPELINE_METHODS) == defaults
    assert set(zoo_bench.PIPELINE_METHODS) <= set(ZOO_PIPELINE_METHODS) and zoo_bench.VTP_VARIANTS["vtp"] == {}
    assert set(ZOO_TOKEN_METHODS) == {*zoo_bench.CPVIT_VARIANTS, "tome", "evit"}
    assert zoo_bench.CPVIT_VARIANTS["cpvit"] == {}  # cpvit = apply_cascade's defaults
    assert zoo_bench.PIPELINE_METHODS_EXTRA == {}  # isomorphic / tp-loop peers live in benchmarks/zoo_variants.py


def test_benchmark_variants_register_and_every_one_builds(monkeypatch):
    """``benchmarks/zoo_variants.py`` only uses options the library still has."""
    import copy
    import importlib.util
    import pathlib

    import tp_vit_plugins as tpv
    from tp_vit_plugins.demo.zoo_bench import _cascade_config

    for table in ("GOHSP_VARIANTS", "VTP_VARIANTS", "CPVIT_VARIANTS", "PIPELINE_METHODS_EXTRA"):
        monkeypatch.setattr(zoo_bench, table, dict(getattr(zoo_bench, table)))
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "zoo_variants.py"
    spec = importlib.util.spec_from_file_location("zoo_variants", path)
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    variants.register()
    assert set(variants.CPVIT) <= set(zoo_bench.CPVIT_VARIANTS) and set(variants.VTP) <= set(zoo_bench.VTP_VARIANTS)
    with pytest.raises(ValueError, match="library defaults"):
        zoo_bench.register_variants(vtp={"vtp": {"close": False}})
    model, x = make_model(num_heads=4, depth=4), torch.randn(1, 3, 32, 32)  # the paper cascade needs depth
    for opts in variants.GOHSP.values():
        opts = {k: v for k, v in opts.items() if k not in ("rounds", "calibrate", "per_block")}
        tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.3, config=opts.pop("preset", None), **opts)
    for opts in variants.VTP.values():
        opts = {k: v for k, v in opts.items() if k != "aggregation" and v != "sparse"}
        tpv.VTPPruner(copy.deepcopy(model), x, pruning_ratio=0.0, sparse_steps=4, config=opts.pop("preset", None), **opts)
    for name in variants.CPVIT:
        tpv.apply_cascade(model, _cascade_config(name, model), calib=[torch.randn(4, 3, 32, 32)]).remove()
