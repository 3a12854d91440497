"""Summarise several zoo runs together: ``python benchmarks/zoo_merge.py [--only M1,M2] OUT_DIR RUN.json[:old=new,...] ...``.

Used to compare new method variants with peers measured in an earlier run of the same code
and settings (records are deterministic per model, method, seed and setting, so the paired
intervals stay valid). ``--only`` keeps those methods (names after relabelling). Writes ``OUT_DIR/ZOO.md``, ``zoo.json`` and ``zoo_ranks.png``.
"""

from __future__ import annotations

import sys

from tp_vit_plugins.demo.zoo_report import merge_runs

if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if args[:1] == ["--only"] and len(args) > 1:
        only, args = args[1].split(","), args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    out, sources = args[0], args[1:]
    merge_runs(out, sources, command="python benchmarks/zoo_merge.py " + " ".join(sys.argv[1:]), methods=only)
    with open(f"{out}/ZOO.md") as f:
        print(f.read())
