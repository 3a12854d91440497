"""``tp-vit bench`` on the embedded MNIST ViT, written into the "Embedded bench" section of RESULTS.md.

    python benchmarks/embedded_bench.py [TP-VIT BENCH OPTIONS ...]

Runs ``tp-vit bench`` (every method at the same MACs budgets, the same total epochs, dense + same
epochs as control, each pruned model timed alternately with the dense one) into a scratch
directory and rewrites the section with its table. Time it on an otherwise idle machine: the
speed-up columns are measured.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time

from common import write_section

from tp_vit_plugins.demo import cli

INTRO = """`tp-vit bench` on the embedded MNIST ViT (its shipped weights; 6 blocks of 6 heads): every method
fitted to 80 % and 60 % of the dense MACs, then trained for the same total epochs (a sparse phase
counts), 2 seeds, mean ± std; `dense+E` is the dense model trained for those epochs. Latency: each
model timed alternately with the dense one in the same run (CPU, 2 threads). One model: the
methods side by side at equal measured MACs, not a zoo result."""

if __name__ == "__main__":
    extra = sys.argv[1:]
    start = time.time()
    with tempfile.TemporaryDirectory() as out:
        code = cli.main(["bench", "--out", out, "--quiet", *extra])
        if code:
            sys.exit(code)
        with open(os.path.join(out, "RESULTS.md")) as f:
            table = f.read().split("\n", 2)[2]  # drop the file's own title
    command = "python benchmarks/embedded_bench.py" + (" " + shlex.join(extra) if extra else "")
    took = f"({time.time() - start:.0f} s on this run's machine)"
    write_section("Embedded bench", f"{INTRO}\n\nCommand: `{command}` {took}\n\n{table}")
