"""Merging saved zoo runs (``zoo.json`` files) and rewriting a run's ``ZOO.md``: the benchmarks' side of the zoo.

``tp-vit bench --zoo`` (:mod:`tp_vit_plugins.demo.zoo_bench`) measures and reports one run; the
RESULTS sections combine several runs of the same code and settings with :func:`merge_runs`.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence

from tp_vit_plugins.demo.zoo import ZOO, load_zoo
from tp_vit_plugins.demo.zoo_report import Record, render, summarize, write_outputs

__all__ = ["load_records", "load_runs", "merge_runs", "rerender"]


def rerender(out_dir: str) -> None:
    """Rewrite ``ZOO.md`` from ``zoo.json`` (e.g. after the renderer changed); intervals are not recomputed."""
    with open(os.path.join(out_dir, "zoo.json")) as f:
        data = json.load(f)
    summary = data["summary"]
    groups: dict = {}
    for r in data["records"]:
        groups.setdefault(f"{r['protocol']} | {r['setting']}", {}).setdefault(r["method"], []).append(r["kept"])
    for key, block in summary.items():
        if not key.startswith("latency") and "kept" not in block:
            block["kept"] = {m: statistics.mean(v) for m, v in groups.get(key, {}).items()}
    with open(os.path.join(out_dir, "ZOO.md")) as f:
        command = f.read().split("Command: `", 1)[1].split("`", 1)[0]
    with open(os.path.join(out_dir, "ZOO.md"), "w") as f:
        f.write("# tp-vit bench --zoo\n\n" + render(summary, data["zoo"], command) + "\n")


def load_records(path: str) -> tuple[list[Record], dict]:
    """Records (with per-image outcomes) and the zoo accuracies of a ``zoo.json`` or ``zoo_partial.json``."""
    with open(path) as f:
        data = json.load(f)
    raw, zoo_meta = (data, {}) if isinstance(data, list) else (data["records"], data.get("zoo", {}))
    rows = []
    for r in raw:
        correct = r.get("correct") or ""
        if not correct and r["protocol"] != "latency":  # latency rows carry no per-image outcome
            raise ValueError(f"{path} holds no per-image outcomes (written before they were kept); rerun it")
        r = {**r, "correct": [c in ("1", True) for c in correct]}
        rows.append(Record(**r))
    return rows, zoo_meta


def _run_commands(path: str) -> list[str]:
    """The commands recorded in a ``zoo.json`` (its own run, or the runs a merge combined); none in a partial file."""
    with open(path) as f:
        data = json.load(f)
    settings = data.get("settings", {}) if isinstance(data, dict) else {}
    own = [settings["command"]] if settings.get("command") else []
    return [*settings.get("runs", []), *own]


def load_runs(
    sources: Sequence[str], methods: Sequence[str] | None = None, runs: Sequence[str] = ()
) -> tuple[list[Record], dict, list[str]]:
    """The records of several zoo runs, a later source's record replacing an earlier one with the same key.

    Args:
        sources: ``zoo.json`` / ``zoo_partial.json`` paths, each optionally followed by
            ``:old=new,old2=new2`` to relabel methods.
        methods: Keep only these methods (after relabelling); ``None`` keeps all.
        runs: Commands that made sources which record none, listed first.

    Returns:
        The records (one per protocol, setting, model, method and seed), the zoo's dense
        accuracies the sources record, and the commands that made the sources.
    """
    merged: dict[tuple, Record] = {}
    zoo_meta: dict = {}
    runs = list(dict.fromkeys(runs))  # the commands that made the sources (zoo runs record theirs)
    for spec in sources:
        path, _, renames = spec.partition(":")
        rename = dict(pair.split("=", 1) for pair in renames.split(",") if pair)
        rows, meta = load_records(path)
        runs.extend(c for c in _run_commands(path) if c not in runs)
        zoo_meta.update(meta)
        for r in rows:
            r.method = rename.get(r.method, r.method)
            if methods is None or r.method in methods:
                merged[(r.protocol, r.setting, r.model, r.method, r.seed)] = r
    return list(merged.values()), zoo_meta, runs


def merge_runs(
    out_dir: str,
    sources: Sequence[str],
    command: str,
    boot: int = 1000,
    methods: Sequence[str] | None = None,
    runs: Sequence[str] = (),
) -> dict:
    """Summarise several zoo runs together (e.g. new variants against peers measured earlier).

    Every run's records are deterministic functions of (model, method, seed, setting), so the
    paired intervals stay valid across runs made with the same code and settings; a
    (protocol, setting, model, method, seed) measured twice keeps the last source's record.

    Args:
        out_dir: Where ``ZOO.md``, ``zoo.json`` and ``zoo_ranks.png`` go.
        sources: ``zoo.json`` / ``zoo_partial.json`` paths, each optionally followed by
            ``:old=new,old2=new2`` to relabel methods (e.g. a variant that became the default).
        command: The command lines written into ``ZOO.md``.
        boot: Bootstrap resamples.
        methods: Keep only these methods (after relabelling); ``None`` keeps all.
        runs: Commands that made sources which record none (a ``zoo_partial.json`` of a stopped
            run); listed first, before the commands the sources record.

    Returns:
        The summary.
    """
    rows, zoo_meta, runs = load_runs(sources, methods, runs)
    if not rows:
        raise ValueError(f"no records left from {list(sources)} (methods={methods})")
    summary = summarize(rows, boot)
    missing = {r.model for r in rows} - set(zoo_meta)  # a partial file records no dense accuracies
    if missing:
        members = tuple(z for z in ZOO if z.name in missing)
        zoo_meta.update({m.name: meta["test_accuracy"] for m, _, _, meta in load_zoo(members, False)})
    os.makedirs(out_dir, exist_ok=True)
    write_outputs(out_dir, rows, summary, zoo_meta, command, {"merged_from": list(sources), "runs": runs})
    return summary
