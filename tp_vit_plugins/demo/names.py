"""The CLI's method registry, kept free of heavy imports so ``tp-vit --help`` is instant.

One :class:`MethodEntry` per ``tp-vit prune`` method is the registration a method needs besides
its recipe in :mod:`tp_vit_plugins.demo.methods` (a test checks that the two agree). A method
with an options dataclass gets a command-line flag for every field that declares one
(:func:`tp_vit_plugins.core.options.option`), its help with each preset's value, and the
mapping back to the dataclass — adding an option to a method touches its ``config.py`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..cpvit.config import CascadeConfig
from ..gohsp.config import GOHSPConfig
from ..vtp.config import VTPConfig

__all__ = [
    "MethodEntry",
    "REGISTRY",
    "STRUCTURE_FLAGS",
    "PRUNE_METHODS",
    "BENCH_METHODS",
    "ZOO_PROTOCOLS",
    "ZOO_PIPELINE_METHODS",
    "ZOO_TOKEN_METHODS",
]

#: Destinations of the structure flags (ratios and switches) that tp-criteria methods read.
STRUCTURE_FLAGS = ("head_pruning_ratio", "pruning_ratio", "global_pruning", "prune_head_dims", "prune_embed_dim", "prune_mlp")


@dataclass(frozen=True)
class MethodEntry:
    """One ``tp-vit prune --method``.

    Attributes:
        name: The method's name on the command line.
        needs_data: It needs calibration / training data (gradients, attention statistics,
            sparse training), so a ``--model`` needs ``--data-path``.
        config: Its options dataclass (with a ``preset(name)`` classmethod); each field that
            declares a :class:`~tp_vit_plugins.core.options.Flag` becomes a flag of this method.
        structure: Reads the structure flags (:data:`STRUCTURE_FLAGS`).
        flags: Demo flags (destinations) it also reads, e.g. ``("sparse_epochs",)``.
        defaults: Its own defaults for flags shared with other methods (``None`` on the parser),
            e.g. VTP removes no whole head unless asked: ``{"head_pruning_ratio": 0.0}``.
        preset_defaults: ``{preset: {flag destination: default}}``, e.g. GOHSP's paper preset runs
            two ADMM epochs.
        replaces_structure: A flag (destination) that, when non-zero, makes the method decide the
            structure itself, so the structure flags are not read (GOHSP's ``admm_epochs``).
    """

    name: str
    config: type | None = None
    needs_data: bool = False
    structure: bool = True
    flags: tuple[str, ...] = ()
    defaults: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    preset_defaults: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: MappingProxyType({}))
    replaces_structure: str | None = None

    def default(self, dest: str, preset: str | None, fallback: object) -> object:
        """The value of flag ``dest`` when the command line does not give it."""
        return self.preset_defaults.get(preset or "recommended", {}).get(dest, self.defaults.get(dest, fallback))

    def reads(self, values: Mapping[str, object]) -> set[str]:
        """The flags (destinations, beside its config's) this method reads, given the parsed ``values``."""
        own = {*self.flags, "preset"} if self.config is not None else set(self.flags)
        if self.replaces_structure and values.get(self.replaces_structure):
            return own
        return {*own, *(STRUCTURE_FLAGS if self.structure else ())}


#: Every ``tp-vit prune --method``: tp's criteria, then the library's methods.
REGISTRY: dict[str, MethodEntry] = {
    e.name: e
    for e in (
        MethodEntry("random"),
        MethodEntry("l1"),
        MethodEntry("l2"),
        MethodEntry("taylor", needs_data=True),
        MethodEntry(
            "gohsp",
            GOHSPConfig,
            needs_data=True,
            flags=("admm_epochs", "admm_rounds", "params_pruning_ratio"),
            defaults={"admm_epochs": 0},
            preset_defaults={"paper": {"admm_epochs": 2}},
            replaces_structure="admm_epochs",
        ),
        MethodEntry(
            "vtp", VTPConfig, needs_data=True, flags=("sparse_epochs", "gate_histogram"), defaults={"head_pruning_ratio": 0.0}
        ),
        MethodEntry("cpvit", CascadeConfig, structure=False),
    )
}

#: ``tp-vit prune --method`` choices.
PRUNE_METHODS = tuple(REGISTRY)
#: ``tp-vit bench --methods`` choices (``gohsp+cpvit`` / ``vtp+cpvit`` combine structure and tokens).
BENCH_METHODS = ("random", "l2", "taylor", "gohsp", "vtp", "cpvit", "gohsp+cpvit", "vtp+cpvit")
#: ``tp-vit bench --zoo --protocols`` choices (see :mod:`tp_vit_plugins.demo.zoo_bench`).
ZOO_PROTOCOLS = ("heads", "pipeline", "tokens", "latency")
#: Methods the zoo's pipeline protocol runs from the package (``--pipeline-methods``): the
#: "dense + same epochs" control, tp's criteria and the library's defaults (the settings they
#: are compared with live in ``benchmarks/zoo_variants.py``).
ZOO_PIPELINE_METHODS = ("dense+E", "l2", "taylor", "group_norm", "gohsp", "vtp")
#: Methods the zoo's tokens protocol runs (``--token-methods``): the cascade, its random-score
#: twin and the peers.
ZOO_TOKEN_METHODS = ("cpvit", "cpvit-random", "tome", "evit")
