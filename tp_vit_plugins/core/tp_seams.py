"""The one place where tp_vit_plugins relies on Torch-Pruning internals.

Everything else goes through tp's public API (``BasePruner`` arguments, ``Importance``,
``DependencyGraph.get_pruning_group``, ``Group.prune``, customized layer pruners). Three
behaviours need more than that, and all three pruners (:class:`~tp_vit_plugins.ViTPruner`,
:class:`~tp_vit_plugins.GOHSPPruner`, :class:`~tp_vit_plugins.VTPPruner`) rely on them:

* ``BasePruner._prune()`` — a private generator of groups that ``step()`` prunes. The
  pruners override it to yield exact head groups first (tp rounds head counts up and prunes
  no head at ``pruning_ratio=0``), GOHSP's ADMM support, and VTP's folded gates.
* ``BasePruner._is_atten_group(group) -> (bool, qkv_layers)`` — tells attention groups
  (head dims) from MLP / embedding groups, so a width ratio can be restricted by structure.
* the bookkeeping attributes ``DG``, ``num_heads``, ``init_num_heads``,
  ``out_channel_groups``, ``current_step``, ``iterative_steps`` that tp keeps on the pruner
  and that exact head removal must update as tp itself would.

:func:`check_tp_seams` verifies their shape before a pruner touches the model, so a tp
release that changes them fails loudly at construction instead of silently mis-pruning.
Checked against the versions in :data:`CHECKED_TP_VERSIONS`.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import warnings

import torch_pruning as tp

__all__ = ["CHECKED_TP_VERSIONS", "check_tp_seams", "check_pruner_state", "tp_version", "TPSeamError"]

#: torch-pruning releases the overrides were written and tested against.
CHECKED_TP_VERSIONS = ("1.6.1",)

_STATE = ("DG", "num_heads", "init_num_heads", "out_channel_groups", "current_step", "iterative_steps")
_warned: set[str] = set()


class TPSeamError(RuntimeError):
    """The installed torch-pruning no longer has the internals this library overrides."""


def tp_version() -> str:
    """The installed torch-pruning release (package metadata; ``tp.__version__`` lags in 1.6.1)."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout on sys.path
        return str(getattr(tp, "__version__", "unknown"))


def _fail(what: str) -> TPSeamError:
    version = tp_version()
    return TPSeamError(
        f"torch-pruning {version} changed an internal that tp_vit_plugins overrides: {what}. "
        f"This library was checked against torch-pruning {', '.join(CHECKED_TP_VERSIONS)}; "
        f"install one of those (pip install 'torch-pruning=={CHECKED_TP_VERSIONS[-1]}') or update tp_vit_plugins."
    )


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)


def check_tp_seams(base: type | None = None) -> None:
    """Check that ``base`` (default ``tp.pruner.BasePruner``) still has the private seams.

    Warns once for a tp version outside :data:`CHECKED_TP_VERSIONS` whose seams still look right.

    Raises:
        TPSeamError: ``_prune`` is no longer a generator method of ``self`` alone,
            ``_is_atten_group`` / ``estimate_importance`` are gone or take other arguments,
            or ``step`` lost its ``interactive`` argument.
    """
    base = tp.pruner.BasePruner if base is None else base
    prune = getattr(base, "_prune", None)
    if prune is None or not inspect.isgeneratorfunction(prune) or _params(prune) != ["self"]:
        raise _fail("BasePruner._prune must be a generator method taking only self")
    atten = getattr(base, "_is_atten_group", None)
    if atten is None or _params(atten) != ["self", "group"]:
        raise _fail("BasePruner._is_atten_group(self, group) is missing or takes other arguments")
    estimate = getattr(base, "estimate_importance", None)
    if estimate is None or _params(estimate)[:2] != ["self", "group"]:
        raise _fail("BasePruner.estimate_importance(self, group) is missing")
    step = getattr(base, "step", None)
    if step is None or "interactive" not in _params(step):
        raise _fail("BasePruner.step(self, interactive) is missing")
    version = tp_version()
    if version not in CHECKED_TP_VERSIONS and version not in _warned:
        _warned.add(version)
        warnings.warn(
            f"torch-pruning {version} is not among the versions tp_vit_plugins was checked against "
            f"({', '.join(CHECKED_TP_VERSIONS)}); its private seams look unchanged, but verify results.",
            stacklevel=3,
        )


def check_pruner_state(pruner: object) -> None:
    """Check the bookkeeping attributes tp's ``BasePruner.__init__`` set on ``pruner``.

    Also checks that ``_is_atten_group`` returns the ``(bool, list)`` pair the overrides unpack.

    Raises:
        TPSeamError: An attribute is missing or has another type.
    """
    missing = [name for name in _STATE if not hasattr(pruner, name)]
    if missing:
        raise _fail(f"BasePruner no longer sets {', '.join(missing)}")
    for name in ("num_heads", "init_num_heads", "out_channel_groups"):
        if not isinstance(getattr(pruner, name), dict):
            raise _fail(f"BasePruner.{name} is no longer a dict keyed by layer")
    if not isinstance(pruner.current_step, int) or not isinstance(pruner.iterative_steps, int):
        raise _fail("BasePruner.current_step / iterative_steps are no longer ints")
    try:
        answer = pruner._is_atten_group([])  # an empty group: no attention layer in it
    except Exception as e:  # noqa: BLE001 - any failure means the seam moved
        raise _fail(f"BasePruner._is_atten_group failed on an empty group ({e!r})") from e
    if not (isinstance(answer, tuple) and len(answer) == 2 and answer[0] is False):
        raise _fail("BasePruner._is_atten_group no longer returns (is_attention, qkv_layers)")
