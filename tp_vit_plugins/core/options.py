"""Method options as frozen dataclasses: keyword overrides and one error message."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["check_pruner_kwargs", "split_options"]

T = TypeVar("T")


def split_options(cls: type[T], config: T | str | None, kwargs: dict[str, Any], owner: str = "") -> tuple[T, dict[str, Any]]:
    """Take ``cls``'s fields out of ``kwargs`` and apply them to ``config`` (default ``cls()``).

    Args:
        cls: A frozen dataclass of options.
        config: The options given as an object, a preset's name (``cls.preset(name)``), or ``None``.
        kwargs: Keyword arguments of a constructor: the fields of ``cls`` override ``config``;
            the rest is returned (e.g. for ``tp.pruner.BasePruner``).
        owner: The constructor's name, for messages.

    Returns:
        ``(config, other_kwargs)``.

    Raises:
        TypeError: ``config`` is not a ``cls``.
    """
    base = cls() if config is None else cls.preset(config) if isinstance(config, str) else config  # type: ignore[attr-defined]
    if not isinstance(base, cls):
        raise TypeError(f"{owner or cls.__name__}: config must be a {cls.__name__}, got {type(base).__name__}")
    rest = dict(kwargs)
    fields = {f.name for f in dataclasses.fields(cls)}
    changes = {k: rest.pop(k) for k in list(rest) if k in fields}
    return (dataclasses.replace(base, **changes) if changes else base), rest


def check_pruner_kwargs(owner: str, kwargs: dict[str, Any], *takers: Any, config_cls: type | None = None) -> None:
    """Refuse keywords that none of ``takers`` (callables the pruner passes its keywords on to) accepts.

    Args:
        owner: The constructor's name, for the message.
        kwargs: The keywords left after the pruner took its own and its options' fields.
        *takers: Callables whose parameters are accepted (e.g. ``tp.pruner.BasePruner.__init__``).
        config_cls: The options dataclass, named in the message.

    Raises:
        TypeError: Names the unknown keywords and where valid ones are listed.
    """
    import inspect

    accepted = {name for t in takers for name in inspect.signature(t).parameters} - {"self", "model", "example_inputs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        where = f"a field of {config_cls.__name__}, " if config_cls is not None else ""
        raise TypeError(f"{owner}: unknown keyword(s) {unknown}: not {where}an argument of {owner} nor of tp.pruner.BasePruner")
