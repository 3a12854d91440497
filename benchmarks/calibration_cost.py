"""What the plugins cost next to the work they prune: calibration, sparse-training steps, the cascade.

    python benchmarks/calibration_cost.py                 # writes the "Cost" section of RESULTS.md
    python benchmarks/calibration_cost.py --models deit_small_patch16_224 --no-write

Random-weight timm models at 224 px (DeiT-S, ViT-B, ViT-L; ``--models`` adds e.g. ``vit_huge_patch14_224``), 2 batches of 8 images, the machine's threads; every ratio is
measured in one run against the model's own no-grad forward over the same images, the two timed
alternately (medians of ``--repeats`` pairs). Calibration: the default GOHSP flow graph (sketched), the exact
flow graph (``flow_sketch=None``; not on ViT-L / ViT-H, where it alone takes minutes), the paper preset's
similarity graph and CP-ViT's cumulative head score. Training: an AdamW step with GOHSP's and
VTP's ``regularize`` against a plain AdamW step (deit_small; the three timed one after the other,
medians of ``--repeats``). The cascade at ``keep_ratio=1.0``
against the plain forward. Flow rankings: the smallest per-block Spearman correlation of the
sketched and exact flow-graph head scores. Peak memory of calibration and each pruner's
``step()`` against stock tp's at the same ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import timm
import torch
import torch_pruning
from common import tpv, write_section
from scipy.stats import spearmanr

from tp_vit_plugins.core.metrics import alternate

MODELS = ("deit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _alternated(base, fn, repeats: int) -> tuple[float, float]:
    """Medians of ``base`` and ``fn`` timed alternately (``base, fn, base, fn, ...``): drifts hit both alike."""
    timing = alternate(lambda warm: _median_time(base, 1), lambda warm: _median_time(fn, 1), repeats)
    return timing.dense, timing.reduced


def calibration_rows(name: str, repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    data = [torch.randn(8, 3, 224, 224) for _ in range(2)]

    @torch.no_grad()
    def forward() -> None:
        for x in data:
            model(x)

    forward()  # warm-up
    rows = []
    fwds = []
    importances = {
        "GOHSP flow graph (default, sketched)": lambda: tpv.GraphHeadImportance(progress=False),
        "GOHSP flow graph, exact": lambda: tpv.GraphHeadImportance(progress=False, flow_sketch=None),
        "GOHSP similarity graph (paper preset)": lambda: tpv.GraphHeadImportance(progress=False, config="paper"),
        "CP-ViT cumulative head score": lambda: tpv.CumulativeHeadImportance(progress=False),
    }
    scores = {}
    for label, make in importances.items():
        if "exact" in label and ("large" in name or "huge" in name):
            continue
        holder = {}
        fwd, t = _alternated(forward, lambda make=make, holder=holder: holder.__setitem__("imp", make().calibrate(model, data)),
                             repeats)  # fmt: skip
        fwds.append(fwd)
        scores[label] = holder["imp"]
        rows.append(f"| {name} | calibration: {label} | {t:.2f} s | {t / fwd:.2f} |")
        print(rows[-1], flush=True)
    exact = scores.get("GOHSP flow graph, exact")
    if exact is not None:
        sketched = scores["GOHSP flow graph (default, sketched)"]
        rho = min(spearmanr(a.numpy(), b.numpy())[0] for a, b in zip(exact.pagerank.values(), sketched.pagerank.values()))
        rows.append(f"| {name} | flow ranking: sketched vs exact, smallest per-block Spearman | – | {rho:.3f} |")
        print(rows[-1], flush=True)
    twin = copy.deepcopy(model)
    tpv.apply_cascade(twin, keep_ratio=1.0)

    @torch.no_grad()
    def cascaded() -> None:
        for x in data:
            twin(x)

    fwd, t = _alternated(forward, cascaded, repeats)
    fwds.append(fwd)
    rows.append(f"| {name} | CP-ViT cascade at keep_ratio 1.0 (forward) | {t:.2f} s | {t / fwd:.2f} |")
    print(rows[-1], flush=True)
    return [f"| {name} | no-grad forward, 2 x 8 images (median over the rows) | {statistics.median(fwds):.2f} s | 1.00 |", *rows]


def zoo_agreement_rows() -> list[str]:
    """Smallest Spearman correlation of sketched and exact flow rankings, per block and zoo seed, on every zoo model.

    Each seed's calibration batches are the ones the zoo's protocols calibrate on, so 1.000 means the
    sketch keeps exactly the heads the exact statistic keeps in the zoo's one-shot heads protocol.
    """
    from torch.utils.data import TensorDataset

    from tp_vit_plugins.demo.data import calibration_loader
    from tp_vit_plugins.demo.zoo import ZOO, load_zoo_model
    from tp_vit_plugins.demo.zoo_bench import ZooSettings

    s = ZooSettings()
    rows = []
    for member in ZOO:
        model, split, _ = load_zoo_model(member, progress=False)
        model.eval()
        rhos = []
        for seed in range(s.seeds):
            data = calibration_loader(TensorDataset(split.x_train, split.y_train), s.calib_batches, s.batch_size, seed)
            exact = tpv.GraphHeadImportance(progress=False, flow_sketch=None).calibrate(model, data).pagerank.values()
            sketched = tpv.GraphHeadImportance(progress=False).calibrate(model, data).pagerank.values()
            rhos += [spearmanr(a.numpy(), b.numpy())[0] for a, b in zip(exact, sketched)]
        rows.append(
            f"| zoo {member.name} (trained) | flow ranking: sketched vs exact, smallest per-block Spearman "
            f"(the zoo's calibration batches, seeds 0-{s.seeds - 1}) | – | {min(rhos):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def _peak_rss_child(name: str, label: str, queue) -> None:
    """In a fresh process: peak RSS after a forward over the images, and after calibrating on them (bytes)."""
    import resource

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    data = [torch.randn(8, 3, 224, 224) for _ in range(2)]
    with torch.no_grad():
        for x in data:
            model(x)
    after_forward = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    make = {
        "GOHSP flow graph (default, sketched)": lambda: tpv.GraphHeadImportance(progress=False),
        "CP-ViT cumulative head score": lambda: tpv.CumulativeHeadImportance(progress=False),
    }[label]
    make().calibrate(model, data)
    queue.put((after_forward, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def memory_rows(name: str) -> list[str]:
    """Peak resident memory of calibration against that of the no-grad forward over the same images."""
    import multiprocessing as mp

    rows = []
    ctx = mp.get_context("spawn")
    for label in ("GOHSP flow graph (default, sketched)", "CP-ViT cumulative head score"):
        queue = ctx.Queue()
        child = ctx.Process(target=_peak_rss_child, args=(name, label, queue))
        child.start()
        forward_peak, calib_peak = queue.get()
        child.join()
        rows.append(
            f"| {name} | peak memory: {label} (process peak after the forward: {forward_peak / 2**30:.2f} GiB) "
            f"| {calib_peak / 2**30:.2f} GiB | {calib_peak / forward_peak:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def step_rows(name: str) -> list[str]:
    """``step()`` of each pruner against stock tp ``BasePruner.step()`` at the same ratios (heads 0.5, MLP 0.3)."""
    x = torch.randn(1, 3, 224, 224)
    rows, base = [], None
    builds = {
        "stock tp BasePruner.step()": lambda m: torch_pruning.pruner.BasePruner(
            m, x, importance=torch_pruning.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.3,
            prune_num_heads=True, head_pruning_ratio=0.5, **tpv.vit_pruning_kwargs(m)),
        "ViTPruner.step()": lambda m: tpv.ViTPruner(m, x, pruning_ratio=0.3, head_pruning_ratio=0.5),
        "GOHSPPruner.step() (40 % of the parameters)": lambda m: tpv.GOHSPPruner(
            m, x, tpv.GraphHeadImportance(progress=False).calibrate(m, [x]), pruning_ratio=0.4, metric="euclidean"),
        "VTPPruner.step() (40 % of the dims)": lambda m: tpv.VTPPruner(m, x, pruning_ratio=0.4),
    }  # fmt: skip
    for label, build in builds.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        pruner = build(model)
        start = time.perf_counter()
        pruner.step()
        t = time.perf_counter() - start
        base = t if base is None else base
        rows.append(f"| {name} | {label} | {t:.2f} s | {t / base:.2f} |")
        print(rows[-1], flush=True)
    return rows


def training_rows(repeats: int) -> list[str]:
    name = "deit_small_patch16_224"
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
    rows, base = [], None
    for label in ("plain AdamW step", "with GOHSPPruner.regularize", "with VTPPruner.regularize"):
        model = timm.create_model(name, pretrained=False)
        if "GOHSP" in label:
            imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
            pruner = tpv.GOHSPPruner(model, x[:1], imp, pruning_ratio=0.4)
        elif "VTP" in label:
            pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.4)
        else:
            pruner = None
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, pruner=pruner, opt=opt) -> None:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if pruner is not None:
                pruner.regularize(model)
            opt.step()
            opt.zero_grad()

        step()  # warm-up (GOHSP: its first Fisher step)
        t = _median_time(step, repeats)
        base = t if base is None else base
        rows.append(f"| {name} | training step, batch 8: {label} | {t:.2f} s | {t / base:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        rows.extend(calibration_rows(name, args.repeats))
        rows.extend(memory_rows(name))
        rows.extend(step_rows(name))
    rows.extend(zoo_agreement_rows())
    rows.extend(training_rows(args.repeats))
    command = "python benchmarks/calibration_cost.py" + (f" --models {args.models}" if args.models != ",".join(MODELS) else "")
    body = "\n".join(
        [
            f"Random-weight timm models at 224 px, {torch.get_num_threads()} threads, medians of {args.repeats} timings; "
            "every ratio against the first row of its model (a no-grad forward over the same 2 x 8 images, or a plain "
            "AdamW step); `step()` rows against stock tp's `BasePruner.step()` at the same ratios (one timing each, pruner "
            "built untimed); peak-memory rows: a fresh process's peak resident memory after calibrating ÷ its peak after "
            f"the forward over the same images. `{command}` rewrites this section. Random "
            "weights make heads nearly alike, so their Spearman rows are a floor; the zoo rows compare the rankings on the "
            "six trained zoo models with the calibration batches of the zoo's protocols (1.000: the one-shot heads "
            "protocol removes the same heads with either statistic).",
            "",
            "| model | what | time | ÷ forward (or plain step) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    if not args.no_write:
        write_section("Cost", body)
    return body


if __name__ == "__main__":
    main()
    sys.exit(0)
