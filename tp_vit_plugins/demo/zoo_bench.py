"""``tp-vit bench --zoo``: every method and peer on every zoo model, with paired bootstrap intervals.

Protocols (each over the whole zoo, ``seeds`` seeds, one seeded calibration subset per seed
shared by every method):

* ``heads`` — one-shot head ranking: 30 / 50 / 70 % of each block's heads removed, no
  training. Peers: tp random, L1, L2, Taylor, Hessian (squared-gradient OBD); seed methods:
  GOHSP ``GraphHeadImportance`` and CP-ViT ``CumulativeHeadImportance`` (their defaults).
* ``pipeline`` — −40 % and −70 % parameters with **equal total epochs** ``E`` for every
  method: tp L2 / Taylor / LAMP prune then fine-tune
  ``E``; tp ``GroupNormPruner`` sparse training
  ``E // 2`` then L2 prune and fine-tune the rest; GOHSP ADMM ``E // 2`` then prune and
  fine-tune; VTP gates ``E // 2`` then prune and fine-tune; and a "dense + E epochs" control.
  Benchmark scripts add methods (:data:`PIPELINE_METHODS_EXTRA`: tp's isomorphic pruning, the
  library defaults driven through tp's own loop, in ``benchmarks/zoo_variants.py``).
  tp criteria prune heads, head dims and MLP neurons globally at one scalar ratio bisected to
  the parameter budget.
* ``tokens`` — token reduction at equal measured MACs (FlopCounterMode, one image), no
  fine-tune: the CP-ViT cascade (defaults, ``beta = 0`` so the MACs are exact and per image),
  the same schedule with random scores, ToMe-style merging and EViT-style pruning with fusion
  (:mod:`.peers`); each method's knob is bisected to keep at most the target MACs.
* ``latency`` — CPU speed-up ÷ MACs ratio at batch 1 and 64 for a structured (tp L2, 60 % of
  the MACs) and two token (CP-ViT, ToMe at 60 %) reductions, dense and reduced timed
  alternately in one run (median of the per-round ratios).

Reporting: per-model accuracy tables, the mean rank of every method across the zoo, paired
differences of each seed method against the best peer with 95 % bootstrap intervals
(resampling test images and seeds, per model and for the zoo mean), a rank heatmap PNG and
``zoo.json``; a seed method below the random peer on any model is flagged.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..budget import clone_with_grads, fit_budget, remap_state, vit_prune_fn
from ..core.calibration import accumulate_gradients, iter_batches
from ..core.criteria import tp_importance
from ..core.glue import vit_pruning_kwargs
from ..core.metrics import alternated_speedup, count_macs, count_params
from ..core.pruner import ViTPruner
from ..core.search import bisect_threshold
from ..core.training import finetune
from ..cpvit import (
    Cascade,
    CascadeConfig,
    CumulativeHeadImportance,
    apply_cascade,
    cascade_macs,
    fit_keep_ratio,
    remove_cascade,
)
from ..gohsp import GraphHeadImportance
from ..hosts import host_for
from .data import calibration_loader
from .methods import MethodSettings, get_method, run_recipe
from .peers import apply_evit, apply_tome, remove_peer
from .zoo import QUICK_ZOO, ZOO, ZooModel, load_zoo
from .zoo_report import Record, summarize, write_outputs

__all__ = ["ZooSettings", "run_zoo", "register_variants", "PROTOCOLS", "HEAD_METHODS"]

PROTOCOLS = ("heads", "pipeline", "tokens", "latency")
#: Pipeline methods run by default (``ZooSettings.pipeline_methods``; VTP variants may be added).
PIPELINE_METHODS = ("dense+E", "l2", "taylor", "group_norm", "gohsp", "vtp")
#: Token methods run by default (``ZooSettings.token_methods``; CP-ViT variants may be added).
TOKEN_METHODS = ("cpvit", "cpvit-random", "tome", "evit")


@dataclass
class ZooSettings:
    """What one zoo run measures (``quick()`` for smoke runs)."""

    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (more seeds for an earlier run)
    calib_batches: int = 8
    batch_size: int = 64
    head_ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    param_cuts: tuple[float, ...] = (0.4, 0.7)
    epochs: int = 2
    lr: float = 5e-4
    mac_targets: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5)
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_rounds: int = 5
    protocols: tuple[str, ...] = PROTOCOLS
    boot: int = 1000
    pipeline_methods: tuple[str, ...] = PIPELINE_METHODS
    token_methods: tuple[str, ...] = TOKEN_METHODS
    head_methods: tuple[str, ...] = ()  # () = HEAD_METHODS (defined below)

    def __post_init__(self) -> None:
        if not self.head_methods:
            self.head_methods = HEAD_METHODS

    @classmethod
    def quick(cls, protocols: tuple[str, ...] = PROTOCOLS) -> ZooSettings:
        return cls(seeds=1, calib_batches=2, head_ratios=(0.5,), param_cuts=(0.4,), epochs=2, mac_targets=(0.7,),
                   latency_batch_sizes=(1,), latency_rounds=2, protocols=protocols, boot=200)  # fmt: skip


# ---------------------------------------------------------------------------- helpers
@torch.no_grad()
def _correct(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    model.eval()
    return torch.cat([(model(x).argmax(-1) == y) for x, y in loader])


def _calib(split, seed: int, s: ZooSettings) -> DataLoader:
    return calibration_loader(TensorDataset(split.x_train, split.y_train), s.calib_batches, s.batch_size, seed)


def _train_loader(split, seed: int, s: ZooSettings) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=s.batch_size, shuffle=True, generator=gen)


def hessian_importance(model: nn.Module, loader: Iterable) -> tp.importance.GroupHessianImportance:
    """Tp's ``GroupHessianImportance`` with squared mini-batch gradients accumulated over ``loader``.

    tp 1.6.1's ``accumulate_grad`` keys its running sums by parameter but tests membership by
    name, so every call restarts the sum; the sums are accumulated here instead.
    """
    imp = tp.importance.GroupHessianImportance()
    was = model.training
    model.eval()
    try:
        for images, targets in iter_batches(loader, desc="hessian", progress=False, with_targets=True):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), targets).backward()
            for p in model.parameters():
                if p.grad is not None:
                    imp._accu_grad[p] = imp._accu_grad.get(p, 0) + p.grad.detach().pow(2)
                    imp._counter[p] = imp._counter.get(p, 0) + 1
    finally:
        model.train(was)
    return imp


def head_importance(name: str, model: nn.Module, calib: DataLoader) -> tp.importance.Importance:
    """The calibrated importance the zoo's protocols name ``name`` (tp criteria by name, the library's, Hessian, LAMP)."""
    if name == "gohsp":  # the library default: the directed "who reads whom" chain (gohsp/flow.py)
        return GraphHeadImportance(progress=False).calibrate(model, calib)
    if name == "gohsp-l2":  # the flow score times the head's tp group-L2 magnitude
        return GraphHeadImportance(progress=False, combine="product").calibrate(model, calib)
    if name == "gohsp-paper":  # the paper preset: attention-map correlation graph, heads ranked by redundancy
        return GraphHeadImportance(progress=False, config="paper").calibrate(model, calib)
    if name == "cpvit":
        return CumulativeHeadImportance(progress=False).calibrate(model, calib)
    if name == "hessian":
        return hessian_importance(model, calib)
    if name == "taylor":
        accumulate_gradients(model, calib, progress=False)
    if name == "lamp":  # tp's LAMP (Lee et al., ICLR 2021): layer-adaptive magnitude scores
        return tp.importance.LAMPImportance(p=2)
    return tp_importance(name)


# ---------------------------------------------------------------------------- protocols
HEAD_METHODS = ("random", "l1", "l2", "taylor", "hessian", "gohsp", "gohsp-paper", "cpvit")


def protocol_heads(member: ZooModel, model: nn.Module, split, s: ZooSettings, test: DataLoader) -> list[Record]:
    """One-shot uniform head removal at every ratio with every criterion."""
    rows = []
    example = split.x_test[:1]
    for seed in range(s.first_seed, s.first_seed + s.seeds):
        calib = _calib(split, seed, s)
        for name in s.head_methods:
            torch.manual_seed(seed)
            base = copy.deepcopy(model)
            imp = head_importance(name, base, calib)
            for r in s.head_ratios:
                pruned = clone_with_grads(base)
                ViTPruner(pruned, example, remap_state(imp, base, pruned), head_pruning_ratio=r).step()
                c = _correct(pruned, test)
                kept = sum(host_for(pruned).heads_per_block(pruned)) / sum(host_for(model).heads_per_block(model))
                rows.append(
                    Record(
                        "heads",
                        f"{int(100 * r)}% heads removed",
                        member.name,
                        name,
                        seed,
                        float(c.float().mean()),
                        kept,
                        c.tolist(),
                    )
                )
    return rows


#: The library's own methods in the pipeline protocol, as the CLI / bench recipes run them, by
#: name. A GOHSP setting may hold ``rounds`` (ADMM dual updates over the sparse phase; ``None``:
#: one per sparse epoch), ``calibrate`` (``calibrate_fisher``'s ``labels``; absent: no
#: calibration) and ``per_block`` (``GraphHeadImportance(normalize_per_layer=...)``); the rest are
#: ``GOHSPPruner`` options. A VTP setting holds ``VTPPruner`` options, ``prune_embed_dim`` and
#: ``aggregation`` (``GateImportance``). Benchmark scripts add the settings they compare with
#: :func:`register_variants` (``benchmarks/zoo_variants.py``); the package carries the defaults only.
GOHSP_VARIANTS: dict[str, dict] = {"gohsp": dict(rounds=10, calibrate="data")}
VTP_VARIANTS: dict[str, dict] = {"vtp": {}}

#: Suffix of a two-phase method run with one learning-rate schedule over its sparse phase and
#: fine-tune (``finetune(schedule_span=...)``) instead of a fine-tune restarted at the peak rate.
#: VTP with closing always runs so (its prune is exact: the run just continues).
ONE_SCHEDULE = "-1sched"


def register_variants(
    gohsp: dict[str, dict] | None = None, vtp: dict[str, dict] | None = None, cpvit: dict[str, dict] | None = None
) -> None:
    """Add named method settings to the zoo's protocols (benchmark scripts; the library defaults stay).

    Raises:
        ValueError: A name that would replace a library default.
    """
    for table, new in ((GOHSP_VARIANTS, gohsp), (VTP_VARIANTS, vtp), (CPVIT_VARIANTS, cpvit)):
        clash = set(new or {}) & {"gohsp", "vtp", "cpvit", "cpvit-random"}
        if clash:
            raise ValueError(f"{sorted(clash)} name the library defaults; register variants under other names")
        table.update(new or {})


def prune_to_params(
    model: nn.Module, example: torch.Tensor, imp, target_params: float, prune_embed_dim: bool = False, **kwargs
) -> nn.Module:
    """Global heads + width + head dims at the scalar ratio whose model has at most ``target_params`` parameters.

    ``kwargs`` go to the pruner (e.g. ``isomorphic=True``: tp's isomorphic pruning, which ranks
    each family of structurally identical groups separately).
    """
    prune = vit_prune_fn(imp, model, lambda r: r, lambda r: r, prune_head_dims=True, prune_embed_dim=prune_embed_dim,
                         **kwargs)  # fmt: skip

    def build(r: float) -> nn.Module:
        twin = clone_with_grads(model)
        prune(twin, example, r)
        return twin

    _, hi = bisect_threshold(lambda r: count_params(build(r)) > target_params, 0.0, 0.95, iterations=10)
    return build(hi)


@dataclass
class PipelineStep:
    """What a registered pipeline method (:data:`PIPELINE_METHODS_EXTRA`) gets: one model copy to prune and train.

    Attributes:
        example: ``[1, C, H, W]`` input for tracing.
        calib: The seed's calibration batches.
        loader: The training loader.
        target_params: Parameters to keep at most.
        cut: The share of parameters removed.
        epochs: The total epoch budget ``E`` (the method spends ``sparse`` of it before pruning).
        train: ``finetune`` keyword arguments of this seed (lr, seed, ...).
        one_schedule: The sparse phase and the fine-tune share one learning-rate schedule.
    """

    example: torch.Tensor
    calib: DataLoader
    loader: DataLoader
    target_params: float
    cut: float
    epochs: int
    train: dict
    one_schedule: bool


#: Pipeline methods benchmark scripts register (``benchmarks/zoo_variants.py``): name ->
#: ``fn(model_copy, step) -> (pruned model, sparse epochs spent, what it reports)``; the
#: fine-tune of the remaining epochs follows in the protocol.
PIPELINE_METHODS_EXTRA: dict[str, Callable[[nn.Module, PipelineStep], tuple[nn.Module, int, dict]]] = {}


def _pipeline_one(name: str, model: nn.Module, split, seed: int, cut: float, s: ZooSettings) -> tuple[nn.Module, dict]:
    """Prune ``model`` (a copy) with ``name`` to ``1 - cut`` of its parameters, spending exactly ``s.epochs`` epochs.

    GOHSP and VTP settings run through the recipe engine the CLI and the bench use
    (:func:`~tp_vit_plugins.demo.methods.run_recipe`), with the cut as their parameter budget.
    Returns the pruned, fine-tuned model and what the method reports (ADMM residuals, zero-gate share).
    """
    extra: dict = {}
    example, E = split.x_test[:1], s.epochs
    suffix = name.endswith(ONE_SCHEDULE)
    name = name.removesuffix(ONE_SCHEDULE)
    target = (1 - cut) * count_params(model)
    loader, calib = _train_loader(split, seed, s), _calib(split, seed, s)
    m = clone_with_grads(model)
    train = dict(lr=s.lr, seed=seed, warmup_epochs=0.0, progress=False)
    sparse, one_schedule = 0, suffix
    if name == "dense+E":
        finetune(m, loader, epochs=E, **train)
        return m, extra
    if name in ("l2", "taylor", "lamp"):
        m = prune_to_params(m, example, head_importance(name, m, calib), target)
    elif name in PIPELINE_METHODS_EXTRA:
        step = PipelineStep(example, calib, loader, target, cut, E, train, suffix)
        m, sparse, extra = PIPELINE_METHODS_EXTRA[name](m, step)
    elif name == "group_norm":
        sparse = E // 2
        imp = tp.importance.GroupMagnitudeImportance(p=2)
        gnp = tp.pruner.GroupNormPruner(m, example, importance=imp, reg=1e-4, **vit_pruning_kwargs(m))
        if sparse:
            span = (0, E) if suffix else None
            finetune(m, loader, epochs=sparse, step_hook=lambda mm, loss: gnp.regularize(mm), schedule_span=span, **train)
        m = prune_to_params(m, example, tp_importance("l2"), target)
    elif name in GOHSP_VARIANTS or name in VTP_VARIANTS:
        recipe = get_method("gohsp" if name in GOHSP_VARIANTS else "vtp")
        opts = dict(GOHSP_VARIANTS.get(name, VTP_VARIANTS.get(name)))
        settings = MethodSettings(
            preset=opts.pop("preset", None), progress=False, calib_batches=s.calib_batches, params_budget=cut, seed=seed,
            admm_rounds=opts.pop("rounds", None),
            fisher_labels=opts.pop("calibrate", None), graph_per_block=opts.pop("per_block", True),
            prune_embed_dim=opts.pop("prune_embed_dim", False), gate_aggregation=opts.pop("aggregation", "mean"), options=opts,
        )  # fmt: skip
        sparse = recipe.sparse_epochs(settings, 0, budget=E)

        def sparse_phase(n: int, one: bool, step_hook, epoch_hook) -> None:
            span = (0, E) if one or suffix else None
            finetune(m, loader, epochs=n, step_hook=step_hook, epoch_hook=epoch_hook, schedule_span=span, **train)

        run = run_recipe(recipe, m, example, calib, loader, settings, sparse, sparse_phase)
        extra, one_schedule = dict(run.stats), run.one_schedule or suffix
        if run.reaches_budget:  # GOHSP: the hard prune removes Z's support, the parameter budget
            run.pruner.step()
        elif run.pruner.prune_inputs:  # VTP's paper preset: its own step (per-block input dims), fitted to the budget
            run.pruner.fit_params(target)
            run.pruner.step()
            extra["input_dims_removed"] = sum(a + b for a, b in run.pruner.inputs_removed)
        else:  # VTP: the gate ranking, fitted to the parameter budget
            m = prune_to_params(m, example, run.pruner.importance, target, prune_embed_dim=settings.prune_embed_dim)
    m.zero_grad(set_to_none=True)
    finetune(m, loader, epochs=E - sparse, schedule_span=(sparse, E) if one_schedule else None, **train)
    return m, extra


def protocol_pipeline(member: ZooModel, model: nn.Module, split, s: ZooSettings, test: DataLoader) -> list[Record]:
    rows = []
    dense_params = count_params(model)
    for seed in range(s.first_seed, s.first_seed + s.seeds):
        for cut in s.param_cuts:
            for name in s.pipeline_methods:
                torch.manual_seed(seed)
                pruned, extra = _pipeline_one(name, model, split, seed, cut, s)
                c = _correct(pruned, test)
                setting = f"-{int(100 * cut)}% params, {s.epochs} epochs"
                kept = count_params(pruned) / dense_params
                acc = float(c.float().mean())
                rows.append(Record("pipeline", setting, member.name, name, seed, acc, kept, c.tolist(), extra))
    return rows


#: CP-ViT settings in the tokens protocol: ``cpvit`` is ``apply_cascade``'s defaults and
#: ``cpvit-random`` the same schedule with random scores (the reference the cumulative score must
#: beat on every model). A start block may be ``"depth//4"`` (resolved per model).
_Q = "depth//4"
CPVIT_VARIANTS: dict[str, dict] = {"cpvit": {}, "cpvit-random": dict(score="random")}


def _cascade_config(name: str, model: nn.Module) -> CascadeConfig:
    """A CP-ViT setting's options (a ``preset`` key names the preset they modify; ``"depth//4"`` a start block)."""
    kwargs = dict(CPVIT_VARIANTS[name])
    if kwargs.get("start_block") == _Q:
        kwargs["start_block"] = len(model.blocks) // 4
    return CascadeConfig.preset(kwargs.pop("preset", "recommended")).replace(**kwargs)


def _token_patch(name: str, model: nn.Module, knob: float, seed: int, calib: Iterable | None = None):
    if name in CPVIT_VARIANTS:
        cfg = _cascade_config(name, model)
        return apply_cascade(model, cfg, keep_ratio=knob, seed=seed, calib=calib if cfg.beta > 0 else None)
    if name == "tome":
        return apply_tome(model, knob)
    return apply_evit(model, knob)


def _remove(patch) -> None:
    if isinstance(patch, Cascade):
        remove_cascade(patch.model)
    else:
        remove_peer(patch)


def _fit_tokens(
    name: str, model: nn.Module, example: torch.Tensor, target: float, dense_macs: int, seed: int, calib: Iterable | None = None
) -> float:
    """The knob keeping at most ``target`` of the measured MACs (largest keep / smallest merge); ``None``: out of reach.

    A cascade whose ``keep_ratio`` is a mean share (the CP-ViT paper preset) cannot keep less than
    its unpruned first blocks; a target below what it reaches there is out of reach.
    """
    cfg = _cascade_config(name, model) if name in CPVIT_VARIANTS else None
    low = 1e-3
    if cfg is not None and cfg.keep_mean:
        start, _ = cfg.start_blocks(len(model.blocks))
        low = (start + 1) / len(model.blocks) + 1e-3
    if cfg is not None and cfg.beta == 0:  # analytic MACs are exact (merging included)
        if cfg.keep_mean and cascade_macs(model, tuple(example.shape[1:]), cfg, keep_ratio=low) > target * cascade_macs(
            model, tuple(example.shape[1:]), cfg, keep_ratio=1.0
        ):
            return None
        return fit_keep_ratio(model, tuple(example.shape[1:]), target, cfg)

    def kept(knob: float) -> float:
        patch = _token_patch(name, model, knob, seed, calib)
        try:
            return count_macs(model, example) / dense_macs
        finally:
            _remove(patch)

    if name == "tome":  # more merging, fewer MACs: find the smallest r that reaches the target
        depth = len(model.blocks)
        hi = (model.patch_embed.num_patches - 1) / max(1, depth - 1)
        _, r = bisect_threshold(lambda r: kept(r) > target, 0.0, hi, iterations=14)
        return r
    if kept(low) > target:
        return None
    lo, _ = bisect_threshold(lambda k: kept(k) <= target, low, 1.0, iterations=14)  # evit / calibrated cascade: keep share
    return lo


def protocol_tokens(member: ZooModel, model: nn.Module, split, s: ZooSettings, test: DataLoader) -> list[Record]:
    rows = []
    example = split.x_test[:1]
    dense_macs = count_macs(model, example)
    for target in s.mac_targets:
        for name in s.token_methods:
            cached = None
            for seed in range(s.first_seed, s.first_seed + s.seeds):
                cfg = _cascade_config(name, model) if name in CPVIT_VARIANTS else None
                calib = _calib(split, seed, s) if cfg is not None and cfg.beta > 0 else None  # per-seed calibration
                randomised = cfg is not None and (cfg.score == "random" or calib is not None)
                if cached is None or randomised:  # the others are deterministic: measured once
                    knob = _fit_tokens(name, model, example, target, dense_macs, seed, calib)
                    if knob is None:  # out of this setting's reach: no row
                        break
                    patch = _token_patch(name, model, knob, seed, calib)
                    try:
                        kept = count_macs(model, example) / dense_macs
                        cached = (_correct(model, test), kept, knob)
                    finally:
                        _remove(patch)
                c, kept, knob = cached
                setting = f"{int(100 * target)}% MACs"
                rows.append(
                    Record("tokens", setting, member.name, name, seed, float(c.float().mean()), kept, c.tolist(), {"knob": knob})
                )
    return rows


def protocol_latency(member: ZooModel, model: nn.Module, split, s: ZooSettings, test: DataLoader) -> list[Record]:
    rows = []
    example = split.x_test[:1]
    dense_macs = count_macs(model, example)

    def structured():
        return fit_budget(
            model, example, 0.6, importance=tp_importance("l2"), prune_head_dims=True, global_pruning=True
        ).model, lambda: None

    def tokens(name):
        def make():
            twin = copy.deepcopy(model)
            patch = _token_patch(name, twin, _fit_tokens(name, twin, example, 0.6, dense_macs, 0), 0)
            return twin, lambda: _remove(patch)

        return make

    reductions: dict[str, Callable[[], tuple[nn.Module, Callable[[], None]]]] = {
        "l2 (structure)": structured,
        "cpvit": tokens("cpvit"),
        "tome": tokens("tome"),
    }
    for name, make in reductions.items():
        reduced, cleanup = make()
        macs_ratio = dense_macs / count_macs(reduced, example)
        for bs in s.latency_batch_sizes:
            speedup = alternated_speedup(model, reduced, example, (bs,), s.latency_rounds)[bs][2]
            extra = {"batch_size": bs, "speedup": speedup, "macs_ratio": macs_ratio}
            rows.append(
                Record("latency", f"bs {bs}, 60% MACs", member.name, name, 0, float("nan"), speedup / macs_ratio, [], extra)
            )
        cleanup()
    return rows


_PROTOCOL_FNS = {"heads": protocol_heads, "pipeline": protocol_pipeline, "tokens": protocol_tokens, "latency": protocol_latency}


def run_zoo(
    out_dir: str,
    settings: ZooSettings | None = None,
    quick: bool = False,
    progress: bool = True,
    command: str = "",
    members: tuple[ZooModel, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the protocols on the zoo; write ``ZOO.md``, ``zoo.json`` and ``zoo_ranks.png`` to ``out_dir``.

    Args:
        out_dir: Output directory.
        settings: What to measure (default :class:`ZooSettings`, or ``ZooSettings.quick()``).
        quick: Two zoo members and the quick settings.
        progress: tqdm bars.
        command: The command line written into ``ZOO.md``.
        members: Zoo members to use instead of :data:`~tp_vit_plugins.demo.zoo.ZOO`.
        log: Receives one line per phase (zoo models trained on first use with their progress
            and time left, then each protocol and model); ``None``: silent.

    Returns:
        The summary (what ``zoo.json`` holds besides the raw records).

    Raises:
        ValueError: Unknown protocol.
    """
    s = settings or (ZooSettings.quick() if quick else ZooSettings())
    bad = set(s.protocols) - set(PROTOCOLS)
    if bad:
        raise ValueError(f"unknown protocols {sorted(bad)}; choose from {PROTOCOLS}")
    os.makedirs(out_dir, exist_ok=True)
    zoo = load_zoo(members or (QUICK_ZOO if quick else ZOO), progress=progress, log=log)
    rows: list[Record] = []
    jobs = [(p, z) for p in s.protocols for z in zoo]
    for i, (protocol, (member, model, split, _)) in enumerate(tqdm(jobs, desc="zoo bench", disable=not progress)):
        if log is not None:
            log(f"zoo protocol {protocol} on {member.name} ({i + 1} of {len(jobs)})")
        test = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=256)
        rows.extend(_PROTOCOL_FNS[protocol](member, model, split, s, test))
        with open(os.path.join(out_dir, "zoo_partial.json"), "w") as f:  # what is measured so far survives a stop
            json.dump([asdict(r) for r in rows], f)
    summary = summarize(rows, s.boot)
    zoo_meta = {member.name: meta["test_accuracy"] for member, _, _, meta in zoo}
    write_outputs(out_dir, rows, summary, zoo_meta, command, {**asdict(s), "command": command})
    os.remove(os.path.join(out_dir, "zoo_partial.json"))
    return summary
