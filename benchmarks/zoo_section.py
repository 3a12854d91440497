"""Copy the zoo runs' ZOO.md files into a section of RESULTS.md (no measurement here).

python benchmarks/zoo_section.py benchmarks/zoo benchmarks/zoo_latency [benchmarks/zoo_pipeline]
python benchmarks/zoo_section.py --section "Zoo: method reworks" --intro FILE DIR [DIR ...]
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


def main(dirs: list[str], section: str = "Zoo", intro: str = INTRO) -> None:
    parts = [intro]
    for d in dirs:
        with open(os.path.join(d, "ZOO.md")) as f:
            text = f.read().split("\n", 2)[2]  # drop the file's own title
        parts.append(f"#### `{d}`\n\n" + text.replace("\n### ", "\n##### "))
    write_section(section, "\n".join(parts))


if __name__ == "__main__":
    args = sys.argv[1:]
    kwargs = {}
    while args and args[0] in ("--section", "--intro"):
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--section":
            kwargs["section"] = value
        else:
            with open(value) as f:
                kwargs["intro"] = f.read()
    main(args, **kwargs)
