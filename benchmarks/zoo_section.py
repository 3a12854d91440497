"""Write a zoo run's tables into their section of RESULTS.md (no measurement here).

    python benchmarks/zoo_section.py SECTION OUT_DIR

``zoo_run.py`` and ``zoo_merge.py`` call it with ``--section SECTION``: the section is rewritten
in place from ``OUT_DIR/ZOO.md``, under the section's fixed introduction (:data:`INTROS`).
"""

from __future__ import annotations

import json
import os
import sys

from common import write_section

from tp_vit_plugins.demo.zoo import ZOO

_ZOO = """{models} of `tp_vit_plugins/demo/zoo.py` (ViTs trained here on MNIST-5000 and
scikit-learn's digits; 4 to 12 blocks of 3 to 12 heads, class-token and average-pool heads,
register tokens, LayerScale; dense accuracies below), 40 % of each dataset held out (2,000 MNIST / 719 digits test images), the same
seeded calibration batches for every method of a seed. Intervals: paired 95 % bootstrap over test
images and seeds (1,000 replicates), each library method (and variant) against the peer with the
best zoo mean; a FLAG marks a library method below its random reference on some model."""

#: Section name -> the paragraph above its tables (what is measured; the numbers come from the run).
INTROS = {
    "Zoo: one-shot heads": _ZOO
    + """

Uniform head removal at 30 / 50 / 70 % of each block's heads, no fine-tune. `gohsp` is
`GraphHeadImportance()` (the recommended flow graph), `gohsp-paper` is
`GraphHeadImportance(config="paper")` (attention-map correlation graph, heads ranked by
redundancy); `l2` / `taylor` / `lamp` are tp's group importances (LAMP: layer-adaptive magnitude).
tp ranks attention heads in their own scope, so its isomorphic pruning keeps the same heads as
plain tp here (`tests/test_tp_seams.py`); it is a peer in the pipeline protocol.""",
    "Zoo: tokens": _ZOO
    + """

Inference-time token reduction at 80 / 70 / 60 / 50 % of the dense MACs (each method's keep ratio
fitted to the budget), no fine-tune. `cpvit` is `apply_cascade()`'s recommended preset,
`cpvit-paper` the paper preset (ramp from `depth // 4`, dropped tokens after whole blocks, 25 % of
the heads skipped per input, the attention-range adjustment `beta=0.5` calibrated), `cpvit-heads`
/ `cpvit-range` the recommended preset plus head skipping (`head_keep_ratio=0.75`) / plus the
attention-range adjustment (`beta=0.5`); `cpvit-random` the recommended schedule with random
scores; `tome` / `evit` ToMe- and EViT-style peers written here from their papers. One seed:
only the calibration of `beta` depends on it.""",
    "Zoo: tokens, CP-ViT paper preset": _ZOO
    + """

The CP-ViT paper preset as it now is (`keep_ratio` the mean patch share over the blocks on a
cascade from block 0, dropped tokens after whole blocks, 25 % of the heads skipped per input by their
attention to the kept patches, the attention-range adjustment `beta=0.5` calibrated), at 80 / 70 / 60 / 50 %
of the dense MACs, no fine-tune, beside the recommended preset (`cpvit`), the paper preset with
random token scores (`cpvit-paper-random`), without head skipping (`cpvit-paper-noheads`), with the
head score weighted by the cumulative patch score (`cpvit-paper-cumheads`, and its random twin), and
ToMe- / EViT-style peers, on all six zoo models. The paper preset runs only where its schedule
reaches the MACs target (a setting it cannot reach has no row for it). The preset's head score was
chosen on this table: `cpvit-paper` − `cpvit-paper-cumheads` +0.83 [+0.30, +1.41], +1.16 [+0.62, +1.72],
+1.56 [+1.01, +2.16], +1.38 [+0.67, +2.10] at 80 / 70 / 60 / 50 % MACs (`python benchmarks/zoo_pair.py
cpvit-paper cpvit-paper-cumheads OUT/zoo.json`). The first run's `cpvit-paper` / `cpvit-paper-random` records
ran the cumulative head score and are relabelled `cpvit-paper-cumheads` / `-random`; the later runs ran
today's preset under the variant names `cpvit-paper-blockheads` / `-random`, relabelled `cpvit-paper` / `-random`.""",
    "Zoo: pipeline, 2 epochs": _ZOO
    + """

Prune to 60 % / 30 % of the parameters (−40 % / −70 %) and train, every method with the same total
epochs `E = 2` (two-phase methods: half sparse training, half fine-tune): `gohsp` / `vtp` are the
recommended presets driven by the library's recipe, `gohsp@tp` / `vtp@tp` the same defaults built
from model, example, importance and a ratio and driven by tp's calls only (`regularize`,
`update_regularizer()`, `step()`), `gohsp-paper` / `vtp-paper` the paper presets,
`gohsp-nograph` the recommended GOHSP without its graph guideline; peers: tp's magnitude (`l2`),
LAMP (`lamp`), Taylor, isomorphic (`-iso`) and GroupNorm pruners followed by the same fine-tune; `dense+E` the
dense model trained for the same epochs.""",
    "Zoo: pipeline, 12 epochs": _ZOO
    + """

The pipeline protocol at a longer budget, `E = 12` epochs in all (methods as in the 2-epoch
section).""",
    "Zoo: pipeline, VTP paper preset": _ZOO
    + """

The 2-epoch pipeline protocol with the VTP paper preset as it is now (`vtp-paper`: L1-trained gates
on the inputs of qkv, proj, fc1 and fc2, `reg` relative to each gate position's mean gradient, `|g|`
ranking with each block's own input dims, folding),
pruned by its own `step()` at the ratio `VTPPruner.fit_params` fits to the parameter budget, beside
the recommended preset (`vtp`) and the best tp peer of the 2-epoch section (`taylor`).""",
    "Zoo: pipeline, VTP paper preset, 6 epochs": _ZOO
    + """

The pipeline protocol at `E = 6` epochs (3 of L1 sparse training, 3 of fine-tuning) for the VTP
paper preset (`vtp-paper`, `reg` relative to each gate position's mean gradient) and two other
gradient scales for its gates: `vtp-paper-gate` (each gate's own running RMS gradient, RMSprop's
scale) and `vtp-paper-capped` (the position's mean, raised to the gate's RMS where larger, so no
gate steps more than a few `gate_lr`). At 2 epochs (17 to 47 sparse steps) both bounded scales avoid the
preset's collapse on digits16-gap-d6 (zoo mean +8.4 / +7.5 pt for `capped`, `python
benchmarks/zoo_pair.py vtp-paper-capped vtp-paper RUN1/zoo.json RUN2/zoo.json` on
`zoo_run.py pipeline all vtp-paper-capped 1 1 OUT 2` and the 2-epoch section's run); here, at 6 epochs,
both lose to the per-position scale (paired, −40 / −70 %: `capped` −1.56 [−1.97, −1.15] /
−3.48 [−3.95, −3.00], `gate` −1.33 [−1.74, −0.91] / −5.47 [−6.05, −4.89], `python
benchmarks/zoo_pair.py vtp-paper-capped vtp-paper RUN3/zoo.json RUN1/zoo.json`), so the preset keeps it.""",
    "Zoo: pipeline, GOHSP flow sketch": _ZOO
    + """

The 2-epoch pipeline protocol with GOHSP driven by tp's calls (`gohsp@tp`) on the default sketched
flow graph and on the exact flow statistic (`gohsp@tp-exactflow`, `flow_sketch=None`): the sketch's
effect on a pipeline result. Paired intervals of the two: `python benchmarks/zoo_pair.py gohsp@tp
gohsp@tp-exactflow OUT/zoo.json`.""",
}


def covered_models(names: list[str]) -> str:
    """How the introduction names the zoo models a run covered (all of them, or which ones)."""
    if set(names) >= {z.name for z in ZOO}:
        return f"The {len(ZOO)} zoo models"
    return f"{len(names)} of the {len(ZOO)} zoo models ({', '.join(names)})"


def zoo_section(section: str, out_dir: str) -> None:
    """Rewrite ``## section`` of RESULTS.md from ``out_dir/ZOO.md`` (and the runs recorded in its ``zoo.json``)."""
    if section not in INTROS:
        raise SystemExit(f"unknown section {section!r}; one of {sorted(INTROS)}")
    with open(os.path.join(out_dir, "ZOO.md")) as f:
        tables = f.read().split("\n", 2)[2]  # drop the file's own title
    with open(os.path.join(out_dir, "zoo.json")) as f:
        run = json.load(f)
    runs = run.get("settings", {}).get("runs", [])
    intro = INTROS[section].format(models=covered_models(list(run.get("zoo", {}))))
    where = "Runs merged: " + "; ".join(f"`{c}`" for c in runs) + ".\n\n" if runs else ""
    write_section(section, intro + "\n\n" + where + tables.replace("\n### ", "\n#### "))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    zoo_section(sys.argv[1], sys.argv[2])
