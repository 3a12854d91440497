"""Summarise several zoo runs together.

    python benchmarks/zoo_merge.py [--only M1,M2] [--section NAME] [--made-by CMD ...] OUT_DIR RUN.json[:old=new,...] ...

Used to compare new method variants with peers measured in an earlier run of the same code
and settings (records are deterministic per model, method, seed and setting, so the paired
intervals stay valid). ``--only`` keeps those methods (names after relabelling); ``--made-by``
names the command that produced a source which does not record its own (a ``zoo_partial.json``
of a stopped run); ``--section`` then rewrites that section of RESULTS.md. Writes ``OUT_DIR/ZOO.md``,
``zoo.json`` and ``zoo_ranks.png``. Paths are written as ``OUT`` / ``RUNi``.
"""

from __future__ import annotations

import os
import shlex
import sys

from zoo_runs import merge_runs
from zoo_section import zoo_section

if __name__ == "__main__":
    args = sys.argv[1:]
    only, section, made_by = None, None, []
    while args and args[0] in ("--only", "--section", "--made-by") and len(args) > 1:
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--only":
            only = value.split(",")
        elif flag == "--section":
            section = value
        else:
            made_by.append(value)
    if len(args) < 2:
        sys.exit(__doc__)
    out, sources = args[0], args[1:]
    shown = ["OUT"] + [f"RUN{i}/{os.path.basename(p)}" for i, p in enumerate(sources, 1)]
    flags = (["--only", ",".join(only)] if only else []) + (["--section", section] if section else [])
    flags += [part for c in made_by for part in ("--made-by", c)]
    command = "python benchmarks/zoo_merge.py " + shlex.join(flags + shown)
    merge_runs(out, sources, command=command, methods=only, runs=made_by)
    with open(f"{out}/ZOO.md") as f:
        print(f.read())
    if section is not None:
        zoo_section(section, out)
