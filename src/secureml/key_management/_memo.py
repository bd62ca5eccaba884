"""Answers remembered per name, for checks a hot read would otherwise repeat per call.

Keyed by exact ``str`` only: a ``str`` subclass can fake its hash and equality and so
be answered for another name. Bounded in entries and in size: a name longer than any
real one is never remembered (so a path from input cannot keep megabytes alive), and
a full memo is emptied, so hostile names cannot grow one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["LONGEST_REMEMBERED", "NameMemo"]

#: The longest name remembered, in characters: above a secret name's limit plus a
#: mount and path, so every real name is; a longer one is worked out on each call.
LONGEST_REMEMBERED = 1024

_V = TypeVar("_V")


class NameMemo(Generic[_V]):
    """A bounded map from names (plain ``str``) to what was worked out for them.

    Thread-safe as dict operations are: a race recomputes, it never mixes answers.
    """

    __slots__ = ("_found", "_most")

    def __init__(self, most: int = 4096) -> None:
        self._found: dict[str, _V] = {}
        self._most = most

    def get(self, name: object) -> _V | None:
        """What was remembered for ``name``; None if nothing (or not a plain str)."""
        if type(name) is not str:
            return None
        return self._found.get(name)

    def put(self, name: object, value: _V) -> None:
        """Remember ``value`` for ``name`` (nothing, unless a plain str of at most
        :data:`LONGEST_REMEMBERED` characters)."""
        if type(name) is not str or len(name) > LONGEST_REMEMBERED:
            return
        found = self._found
        if len(found) >= self._most:
            found.clear()
        found[name] = value
