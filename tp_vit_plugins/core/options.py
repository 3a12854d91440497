"""Method options as frozen dataclasses: keyword overrides, removed options, one error message."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, TypeVar

__all__ = ["split_options"]

T = TypeVar("T")


def split_options(
    cls: type[T],
    config: T | str | None,
    kwargs: dict[str, Any],
    removed: dict[str, tuple[Any, str]] | None = None,
    owner: str = "",
) -> tuple[T, dict[str, Any]]:
    """Take ``cls``'s fields out of ``kwargs`` and apply them to ``config`` (default ``cls()``).

    Args:
        cls: A frozen dataclass of options.
        config: The options given as an object, a preset's name (``cls.preset(name)``), or ``None``.
        kwargs: Keyword arguments of a constructor: the fields of ``cls`` override ``config``;
            the rest is returned (e.g. for ``tp.pruner.BasePruner``).
        removed: Options that left the API: ``name -> (value that was the default, what to do
            instead)``. Passing the old default warns (``DeprecationWarning``); any other value
            raises, since the behaviour it selected is gone.
        owner: The constructor's name, for messages.

    Returns:
        ``(config, other_kwargs)``.

    Raises:
        TypeError: ``config`` is not a ``cls``, or a removed option with a non-default value.
    """
    base = cls() if config is None else cls.preset(config) if isinstance(config, str) else config  # type: ignore[attr-defined]
    if not isinstance(base, cls):
        raise TypeError(f"{owner or cls.__name__}: config must be a {cls.__name__}, got {type(base).__name__}")
    rest = dict(kwargs)
    for name, (default, instead) in (removed or {}).items():
        if name in rest:
            value = rest.pop(name)
            if value != default:
                raise TypeError(f"{owner}: the option {name!r} was removed ({instead})")
            warnings.warn(f"{owner}: the option {name!r} is ignored and will be rejected in the next release ({instead})",
                          DeprecationWarning, 3)  # fmt: skip
    fields = {f.name for f in dataclasses.fields(cls)}
    changes = {k: rest.pop(k) for k in list(rest) if k in fields}
    return (dataclasses.replace(base, **changes) if changes else base), rest
