"""One registry type for everything chosen by name: methods, gradient methods, step-size
controllers, lanes, backends, models and tasks.

A :class:`Registry` maps names to objects (a class, a factory or an instance). It is live:
whatever lists names — a block's checks, the command line's choices, a help text — reads it when
it runs, so that something registered later is accepted everywhere names are. Registering a
name twice replaces the first entry with a warning (never silently); :meth:`Registry.get` of an
unknown name is an :class:`~neuralode.errors.InvalidArgumentError` that lists the valid names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import InvalidArgumentError, InvalidTypeError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one kind.

    Args:
        kind: what an entry is, for messages (``"method"``, ``"task"``, ...).
        hint: appended to the unknown-name error (how to add one, for example).
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}
        self.find: Callable[[str], T | None] = self._entries.get
        """The object registered under a name, or ``None`` (a plain dictionary look-up: the
        engine's hot path uses it; :meth:`get` explains a miss)."""

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    @overload
    def register(
        self, name: str, obj: None = None, *, replace: bool = False
    ) -> Callable[[T], T]: ...

    def register(
        self, name: str, obj: T | None = None, *, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator.

        A name registered already is replaced, with a ``UserWarning`` unless ``replace`` says
        that this is meant."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise InvalidTypeError(
                f"a {self.kind} name must be a non-empty string without surrounding spaces, "
                f"got {name!r}"
            )
        if obj is None:
            return lambda o: self.register(name, o, replace=replace)
        if name in self._entries and self._entries[name] is not obj and not replace:
            warnings.warn(
                f"registering {self.kind} {name!r} replaces the one registered before "
                f"({self._entries[name]!r}); pass replace=True if that is meant",
                UserWarning,
                stacklevel=3,
            )
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named."""
        return self._entries.pop(self._key(name))

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name is an
        :class:`~neuralode.errors.InvalidArgumentError` that lists the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        return self._entries[self._key(name)]

    def _key(self, name: object) -> str:
        if isinstance(name, str) and name in self._entries:
            return name
        valid = ", ".join(repr(n) for n in self._entries) or "(none registered)"
        hint = f"; {self.hint}" if self.hint else ""
        raise InvalidArgumentError(
            f"unknown {self.kind} {name!r}; valid {self.kind}s are: {valid}{hint}"
        )

    __getitem__ = get

    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
