"""Method options as frozen dataclasses: keyword overrides and one error message."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["Flag", "check_pruner_kwargs", "flags_of", "option", "split_options"]

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


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


@dataclasses.dataclass(frozen=True)
class Flag:
    """How an option appears on a command line: declared on the option's dataclass field.

    ``tp-vit`` builds its method flags, their help (with each preset's value) and the mapping
    back to the option from these declarations (:func:`option`, :func:`flags_of`), so an option
    is declared once, in its method's config dataclass.

    Attributes:
        name: The flag, e.g. ``"--keep-ratio"``.
        help: What it does (the CLI appends each preset's value).
        choices: Allowed values (default: any value of the field's type).
        value: For a switch (a flag without an argument): the value it sets.
        none_at: A command-line value that means ``None`` (e.g. ``0`` schedule steps: the ramp).
    """

    name: str
    help: str
    choices: tuple[Any, ...] | None = None
    value: Any = _UNSET
    none_at: Any = _UNSET

    @property
    def is_switch(self) -> bool:
        """A flag without an argument (it sets :attr:`value`)."""
        return self.value is not _UNSET

    def to_option(self, given: Any) -> Any:
        """The option's value for a command-line value."""
        if self.none_at is not _UNSET and given == self.none_at:
            return None
        return given

    def to_text(self, value: Any) -> str:
        """An option value as the command line writes it (for help texts)."""
        if value is None and self.none_at is not _UNSET:
            return str(self.none_at)
        return str(value)


def option(default: Any, *flags: Flag) -> Any:
    """A dataclass field with ``default`` and the command-line ``flags`` that set it."""
    return dataclasses.field(default=default, metadata={"flags": flags})


def flags_of(cls: type) -> list[tuple[str, Flag, str]]:
    """``(field name, flag, the field's annotation as text)`` for every flag declared on ``cls``'s fields."""
    return [
        (f.name, flag, str(f.type))
        for f in dataclasses.fields(cls)
        for flag in f.metadata.get("flags", ())  # type: ignore[arg-type]
    ]
