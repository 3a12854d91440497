"""Paper vs recommended presets, and what each named contribution does, from zoo runs.

    python benchmarks/presets.py HEADS.json TOKENS.json PIPELINE.json [PIPELINE.json ...]

The inputs are the ``zoo.json`` files behind the "Zoo: one-shot heads", "Zoo: tokens" and
"Zoo: pipeline, 2 epochs" sections (more pipeline runs may add variants; each comparison uses
the models both sides have). Prints, and writes into the "Presets" section of RESULTS.md,
paired 95 % intervals (bootstrap over test images and seeds, 1,000 replicates) of
recommended − paper per method and budget, of each contribution switched on or off against the
recommended preset, and the one-shot head rankings per model against tp's L2 criterion.
"""

from __future__ import annotations

import sys

from common import write_section
from zoo_runs import load_runs

from tp_vit_plugins.demo.zoo_report import by_method, format_interval, paired_bootstrap, paired_diff

#: (method, other, what the difference means), per protocol.
PAIRS = {
    "heads": [("gohsp", "gohsp-paper", "GOHSP recommended − paper graph (one-shot ranking)")],
    "tokens": [
        ("cpvit", "cpvit-paper", "CP-ViT recommended − paper preset"),
        ("cpvit-heads", "cpvit", "CP-ViT head skipping (25 % per input) on − off"),
        ("cpvit-range", "cpvit", "CP-ViT attention-range adjustment (β 0.5) on − off"),
    ],
    "pipeline": [
        ("gohsp", "gohsp-paper", "GOHSP recommended − paper preset"),
        ("gohsp-paper", "gohsp-paper-sgd", "GOHSP paper preset: W-step proximal − through the gradient"),
        ("gohsp", "gohsp-nograph", "GOHSP graph guideline on − off"),
        ("vtp", "vtp-paper", "VTP recommended (closing) − paper preset (L1-trained gates)"),
    ],
}


def main(heads: str, tokens: str, *pipelines: str) -> str:
    lines = [
        "What each preset and named contribution does on the zoo, from the runs behind the three zoo",
        "sections above (paired 95 % intervals over test images and seeds, in points; a positive value",
        "favours the first named). `python benchmarks/presets.py HEADS.json TOKENS.json PIPELINE.json ...`",
        "rewrites this section from those runs' `zoo.json`.",
        "",
        "| comparison | setting | zoo mean | models where it is negative |",
        "|---|---|---|---|",
    ]
    below: list[str] = []
    for protocol, paths in (("heads", [heads]), ("tokens", [tokens]), ("pipeline", list(pipelines))):
        rows = load_runs(paths)[0]
        for (proto, setting), methods in by_method(rows).items():
            if proto != protocol:
                continue
            for a, b, what in PAIRS[protocol]:
                if a not in methods or b not in methods:
                    continue
                models = sorted(set(methods[a]) & set(methods[b]))
                diffs = [paired_diff(methods[a][m], methods[b][m]) for m in models]
                worse = [m for m, d in zip(models, diffs) if paired_bootstrap([d], 1000)[0] < 0]
                lines.append(
                    f"| {what} | {setting} | {format_interval(paired_bootstrap(diffs, 1000))} | {', '.join(worse) or '–'} |"
                )
            if protocol == "heads":
                for m in ("gohsp", "gohsp-paper", "taylor"):
                    for model in sorted(methods.get(m, {})):
                        t = paired_bootstrap([paired_diff(methods[m][model], methods["l2"][model])], 1000)
                        if t[0] < 0:
                            below.append(f"| {m} | {setting} | {model} | {format_interval(t)} |")
    lines += ["", "One-shot head rankings below tp's L2 criterion on a model (per-model paired intervals):", ""]
    lines += ["| ranking | setting | model | − L2 |", "|---|---|---|---|", *below]
    body = "\n".join(lines)
    print(body)
    return body


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    write_section("Presets", main(*sys.argv[1:]))
