"""What a forked child must not inherit: one owner for every process-bound resource.

After ``os.fork()`` the child has a copy of the parent's memory but only the forking
thread. Sockets in a connection pool are then shared with the parent (two processes
reading one keep-alive connection get each other's answers), locks may be held by
threads that no longer exist, and loads in flight wait on threads that will never finish
them. Everything that holds such state registers here and gets ``after_fork()`` called
in the child, before any code of the child runs (``os.register_at_fork``, one hook for
every live object). A pid check on use is the second line, for forks that bypass
Python's hooks (a C library calling ``fork()`` itself).

Modelled on what CPython's own ``threading`` and ``logging`` do after a fork, and on
urllib3's advice (never share a pool across a fork).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["ForkAware", "PerProcess", "reset_after_fork"]

_T = TypeVar("_T")


class ForkAware(Protocol):
    """Holds something bound to this process, and knows how to drop it in a child."""

    def after_fork(self) -> None:
        """Drop inherited sockets, pools, locks and loads in flight (never closing
        what the parent still uses); keep what stays true (tokens, cached values)."""
        ...


# Weak: registering must not keep a manager alive. Iterated only in the child, where the
# forking thread is the only thread.
_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_after_fork(owner: ForkAware) -> None:
    """Call ``owner.after_fork()`` in every child this process forks from now on."""
    _live.add(owner)


class PerProcess(Generic[_T]):
    """``make()``'s :attr:`value`, made again in every forked child (a lock the
    parent's threads may have held, this process's id)."""

    __slots__ = ("__weakref__", "_make", "value")

    def __init__(self, make: Callable[[], _T]) -> None:
        self._make = make
        self.value = make()
        reset_after_fork(self)

    def after_fork(self) -> None:
        self.value = self._make()


def _after_fork_in_child() -> None:
    for owner in list(_live):
        owner.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
