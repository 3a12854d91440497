"""Paired difference of two methods of zoo runs, per setting: zoo mean and per model, 95 % intervals.

    python benchmarks/zoo_pair.py A B RUN.json [RUN.json ...]

``A`` and ``B`` are method names in the runs' records (``zoo.json`` / ``zoo_partial.json``; a
later run's record replaces an earlier one with the same key). Prints, per protocol and setting,
the paired bootstrap interval (over test images and seeds, 1,000 replicates) of ``A - B`` in
points: the zoo mean over the models both have, then each model.
"""

from __future__ import annotations

import sys

from zoo_runs import load_runs

from tp_vit_plugins.demo.zoo_report import by_method, format_interval, paired_bootstrap, paired_diff


def pair_lines(a: str, b: str, sources: list[str]) -> list[str]:
    """One line per setting where both ``a`` and ``b`` ran."""
    rows = load_runs(sources)[0]
    lines = []
    for (protocol, setting), methods in by_method(rows).items():
        if a not in methods or b not in methods:
            continue
        models = sorted(set(methods[a]) & set(methods[b]))
        diffs = [paired_diff(methods[a][m], methods[b][m]) for m in models]
        per_model = ", ".join(f"{m} {format_interval(paired_bootstrap([d], 1000))}" for m, d in zip(models, diffs))
        lines.append(f"{protocol} | {setting}: {a} − {b} zoo mean {format_interval(paired_bootstrap(diffs, 1000))}; {per_model}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    print("\n".join(pair_lines(sys.argv[1], sys.argv[2], sys.argv[3:])) or "no setting has both methods")
