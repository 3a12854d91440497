"""Copy the zoo runs' ZOO.md files into the "Zoo" section of RESULTS.md (no measurement here).

python benchmarks/zoo_section.py benchmarks/zoo benchmarks/zoo_latency [benchmarks/zoo_pipeline]
"""

from __future__ import annotations

import os
import sys

from common import write_section

INTRO = """Every table below comes from `tp-vit bench --zoo` (command above each part) on the six zoo
models of `tp_vit_plugins/demo/zoo.py` (trained here; dense accuracies in each part), 3 seeds, the
same seeded calibration batches for every method of a seed, 40 % of each dataset held out (2,000
MNIST / 719 digits test images). Intervals: paired 95 % bootstrap over test images and seeds
(1,000 replicates), each library method against the peer with the best zoo mean. The runs used
`--threads 1` and ran two at a time on the 2-core machine (the latency part ran next to the
pipeline run, each on one core). Rank heatmaps: `benchmarks/zoo*/zoo_ranks.png`; raw records:
`benchmarks/zoo*/zoo.json`.
"""


def main(dirs: list[str]) -> None:
    parts = [INTRO]
    for d in dirs:
        with open(os.path.join(d, "ZOO.md")) as f:
            text = f.read().split("\n", 2)[2]  # drop the file's own title
        parts.append(f"#### `{d}`\n\n" + text.replace("\n### ", "\n##### "))
    write_section("Zoo", "\n".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
