"""One zoo protocol on chosen models and methods (what ``tp-vit bench --zoo`` runs, narrowed).

    python benchmarks/zoo_run.py pipeline MODELS METHODS THREADS SEEDS OUT_DIR [EPOCHS] [--section NAME]
    python benchmarks/zoo_run.py tokens   MODELS METHODS THREADS SEEDS OUT_DIR [--section NAME]
    python benchmarks/zoo_run.py heads    MODELS METHODS THREADS SEEDS OUT_DIR [--section NAME]

MODELS and METHODS are comma lists (``all`` = every zoo model; METHODS may name the settings of
``benchmarks/zoo_variants.py``); SEEDS is ``N`` (seeds 0 .. N-1) or
``A:B`` (seeds A .. B-1, e.g. more seeds for an earlier run, merged with ``benchmarks/zoo_merge.py``). Writes ``OUT_DIR/ZOO.md``,
``zoo.json`` (with per-image outcomes, for ``benchmarks/zoo_merge.py``) and ``zoo_ranks.png``.
EPOCHS (pipeline only) sets the equal total epoch budget ``E`` (default ``ZooSettings.epochs``).
``--section NAME`` then rewrites that section of RESULTS.md (``benchmarks/zoo_section.py``).
"""

from __future__ import annotations

import shlex
import sys
import time

import torch
from zoo_section import zoo_section
from zoo_variants import register

from tp_vit_plugins.demo.zoo import ZOO
from tp_vit_plugins.demo.zoo_bench import ZooSettings, run_zoo

if __name__ == "__main__":
    args = sys.argv[1:]
    section = None
    if "--section" in args:
        i = args.index("--section")
        section, args = args[i + 1], args[:i] + args[i + 2 :]
    if len(args) not in (6, 7) or args[0] not in ("pipeline", "tokens", "heads"):
        sys.exit(__doc__)
    protocol, models, methods, threads, seeds, out = args[:6]
    extra = {"epochs": int(args[6])} if len(args) == 7 else {}
    torch.set_num_threads(int(threads))
    register()  # the settings the defaults are compared with (benchmarks/zoo_variants.py)
    names = {z.name for z in ZOO} if models == "all" else set(models.split(","))
    chosen = tuple(methods.split(","))
    key = {"pipeline": "pipeline_methods", "tokens": "token_methods", "heads": "head_methods"}[protocol]
    first, _, last = seeds.rpartition(":")  # "N": seeds 0 .. N-1; "A:B": seeds A .. B-1
    span = dict(seeds=int(last) - int(first or 0), first_seed=int(first or 0))
    settings = ZooSettings(protocols=(protocol,), **span, **{key: chosen}, **extra)
    start = time.time()
    command = "python benchmarks/zoo_run.py " + shlex.join("OUT" if a == out else a for a in sys.argv[1:])
    run_zoo(out, settings, progress=False, members=tuple(z for z in ZOO if z.name in names), command=command)
    print(open(f"{out}/ZOO.md").read())
    print(f"took {time.time() - start:.0f} s")
    if section is not None:
        zoo_section(section, out)
