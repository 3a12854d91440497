"""Summarise several zoo runs together: ``python benchmarks/zoo_merge.py OUT_DIR RUN.json[:old=new,...] ...``.

Used to compare new method variants with peers measured in an earlier run of the same code
and settings (records are deterministic per model, method, seed and setting, so the paired
intervals stay valid). Writes ``OUT_DIR/ZOO.md``, ``zoo.json`` and ``zoo_ranks.png``.
"""

from __future__ import annotations

import sys

from tp_vit_plugins.demo.zoo_bench import merge_runs

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, sources = sys.argv[1], sys.argv[2:]
    merge_runs(out, sources, command="python benchmarks/zoo_merge.py " + " ".join(sys.argv[1:]))
    with open(f"{out}/ZOO.md") as f:
        print(f.read())
