"""CP-ViT cascade speed: measured speed-up vs the MACs ratio, dense and cascade timed alternately.

    python benchmarks/cascade_speed.py [--rounds 5] [--threads 2] [--compile] [--score-at prune] [--steps N] [--fold drop]
        [--timm-models NAME,...] [--batch-sizes 1 64]

Models: the shipped embedded MNIST ViT and ``deit_small_patch16_224`` with random weights
(timing does not need trained weights). For each MACs target the cascade's keep ratio is
fitted with :func:`tp_vit_plugins.fit_keep_ratio` (default settings), and dense and cascade
are timed one after the other in every round (:func:`~tp_vit_plugins.core.metrics.alternated_speedup`);
the table reports the median speed-up, the MACs ratio (dense / cascade, from ``count_macs``)
and their quotient. The **bound** columns time, against dense in the same way, the model's own
blocks on the cascade's token counts with the tokens simply sliced off (:func:`sliced_copy`:
no scoring, no ranking, no merging): the speed-up of a token selection that costs nothing, an
upper bound for any token pruning at these counts on this machine; "cascade ÷ bound" is the
share of it the cascade keeps. Writes the "Cascade speed" section of RESULTS.md; with ``--compile`` both
models are timed through ``torch.compile`` (inductor, static shapes: the cascade's token
counts are fixed per model) and the section is "Cascade speed (torch.compile)"; with
``--score-at prune`` the cascade scores at its pruning blocks only (``apply_cascade(score_at=)``),
``--steps`` / ``--fold`` set ``schedule_steps`` / ``fold``; ``--timm-models`` times other timm
models (random weights, their own image size) instead; the section name lists such flags.
"""

from __future__ import annotations

import argparse
import copy

import timm
import torch
from common import load_embedded, write_section

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import alternated_speedup
from tp_vit_plugins.cpvit import apply_cascade, remove_cascade
from tp_vit_plugins.hosts.timm.blocks import block_halves


class _Sliced:
    """Replacement block forward: attention half, keep the first ``tokens`` tokens, MLP half.

    EVA's rotary embedding (``rope``, one row per patch of the full grid) is cut to the patches
    present, which are the first ones of the grid.
    """

    def __init__(self, block: torch.nn.Module, halves, tokens: int | None, num_prefix: int) -> None:
        self.block, self.halves, self.tokens, self.num_prefix = block, halves, tokens, num_prefix

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs.get("rope") is not None:
            kwargs["rope"] = kwargs["rope"][: x.shape[1] - self.num_prefix]
        h = self.halves.attn(self.block, x, **kwargs)
        return self.halves.mlp(self.block, h if self.tokens is None else h[:, : self.tokens])


def sliced_copy(model: torch.nn.Module, cascade) -> torch.nn.Module:
    """A copy of ``model`` whose blocks run on ``cascade``'s token counts, tokens sliced off before each MLP.

    Tokens leave where the cascade's leave (``prune_at="mlp"``: between attention and MLP; the
    last block's MLP on the prefix alone when the cascade trims it); which tokens go is not
    chosen (the last ones are cut), so it costs nothing beyond the slice.
    """
    if type(model).__name__ == "Beit":
        raise SystemExit("the bound cannot slice BEiT's relative position bias (built for the full grid)")
    bound = copy.deepcopy(model)
    p, counts, depth = cascade.num_prefix, cascade.counts, len(bound.blocks)
    for i, blk in enumerate(bound.blocks):
        if i == depth - 1:
            tokens = p if cascade.trim_last else None
        else:
            tokens = p + counts[i + 1] if counts[i + 1] < counts[i] else None
        blk.forward = _Sliced(blk, block_halves(blk), tokens, p)
    return bound


def rows_for(
    name: str,
    model: torch.nn.Module,
    example: torch.Tensor,
    targets,
    batch_sizes,
    rounds: int,
    compiled: bool = False,
    options: dict | None = None,
) -> list[str]:
    options = options or {}
    out = []
    dense_macs = tpv.count_macs(model, example)
    run = (lambda m: torch.compile(m, dynamic=False)) if compiled else (lambda m: m)
    dense = run(model)
    for target in targets:
        keep = tpv.cpvit.fit_keep_ratio(model, tuple(example.shape[1:]), target, **options)
        reduced = copy.deepcopy(model)
        cascade = apply_cascade(reduced, keep_ratio=keep, **options)
        bound = sliced_copy(model, cascade)
        macs_ratio = dense_macs / tpv.count_macs(reduced, example)
        bound_macs_ratio = dense_macs / tpv.count_macs(bound, example)
        timing = alternated_speedup(dense, run(reduced), example, batch_sizes, rounds=rounds, min_run_time=0.3)
        top = alternated_speedup(dense, run(bound), example, batch_sizes, rounds=rounds, min_run_time=0.3)
        for bs, (d, r, speedup, _) in timing.items():
            best = top[bs][2]
            out.append(
                f"| {name} | {target:.2f} | {keep:.3f} | {bs} | {1e3 * d:.2f} | {1e3 * r:.2f} | {speedup:.2f} | "
                f"{macs_ratio:.2f} | {speedup / macs_ratio:.2f} | {best:.2f} | {best / bound_macs_ratio:.2f} | "
                f"{speedup / best:.2f} |"
            )
            print(out[-1], flush=True)
        remove_cascade(reduced)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="time both models through torch.compile")
    p.add_argument("--score-at", default="all", choices=("all", "prune"), help="apply_cascade(score_at=...)")
    p.add_argument("--steps", type=int, default=None, help="apply_cascade(schedule_steps=...) (default: its default)")
    p.add_argument("--fold", default=None, choices=("drop", "merge"), help="apply_cascade(fold=...) (default: merge)")
    p.add_argument(
        "--timm-models", default=None,
        help="comma-separated timm model names (random weights) timed instead of the embedded model and deit_small",
    )  # fmt: skip
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes to time")
    args = p.parse_args()
    options = {"score_at": args.score_at}
    if args.steps is not None:
        options["schedule_steps"] = args.steps
    if args.fold is not None:
        options["fold"] = args.fold
    flags = (
        (f" --timm-models {args.timm_models}" if args.timm_models else "")
        + (f" --batch-sizes {' '.join(map(str, args.batch_sizes))}" if args.batch_sizes != [1, 64] else "")
        + (f" --score-at {args.score_at}" if args.score_at != "all" else "")
        + (f" --steps {args.steps}" if args.steps is not None else "")
        + (f" --fold {args.fold}" if args.fold is not None else "")
    )
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        "| model | MACs target | keep ratio | batch | dense ms | cascade ms | speed-up | MACs ratio | speed-up ÷ MACs ratio "
        "| bound speed-up | bound ÷ MACs ratio | cascade ÷ bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bss = tuple(args.batch_sizes)
    if args.timm_models:
        for name in args.timm_models.split(","):
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
            example = torch.randn(1, 3, *model.patch_embed.img_size)
            lines += rows_for(f"{name} (random weights)", model, example, (0.8, 0.6), bss, args.rounds, args.compile, options)
    else:
        embedded, split, _ = load_embedded()
        deit = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10).eval()
        lines += rows_for("embedded MNIST ViT", embedded, split.x_test[:1], (0.8, 0.6), bss, args.rounds, args.compile, options)
        deit_example = torch.randn(1, 3, 224, 224)
        lines += rows_for("deit_small (random weights)", deit, deit_example, (0.8, 0.6), bss, args.rounds, args.compile, options)
    cmd = f"python benchmarks/cascade_speed.py --rounds {args.rounds} --threads {args.threads}" + (
        " --compile" if args.compile else ""
    )
    cmd += flags
    body = (
        f"`{cmd}` (torch {torch.__version__}, {args.threads} CPU threads; cascade defaults: start block 0, "
        "3-stage stepped schedule, tokens merged before the pruning blocks' MLP, last MLP trimmed"
        + (f"; non-default options: `{flags.strip()}`" if flags else "")
        + "; dense and cascade timed alternately, medians over rounds; bound: the model's own blocks on the "
        "cascade's token counts, tokens sliced off before each MLP (selection costs nothing), timed alternately "
        "with dense).\n\n" + "\n".join(lines)
    )
    section = "Cascade speed (torch.compile)" if args.compile else "Cascade speed"
    write_section(section + (f" ({flags.strip()})" if flags else ""), body)


if __name__ == "__main__":
    main()
