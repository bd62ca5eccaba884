"""The manager's read cache: TTL, LRU bound, single-flight loads, stale-if-error.

Policy lives in the core (:mod:`._core`); this module only keeps entries. A hit is a dict lookup and
a clock check, with no lock: ML jobs read the same key thousands of times a second.
Misses for the same key are single-flight: one caller loads, the others wait for its
result (or its error). Entries outlive their TTL, up to ``max_stale`` seconds after they
were fetched, so an outage can be ridden through on values that were true recently.

A forked child keeps the entries (they are as true there) but not the loads in flight:
their threads stayed in the parent (:meth:`SecretCache.after_fork`).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._bridge import Latch, LoopEndedError, done_within
from ._process import reset_after_fork

__all__ = ["ABSENT", "CacheEntry", "CacheKey", "SecretCache", "WaitExpiredError", "caller_copy"]

#: Field values a caller cannot change in place: a dict of only these is copied by
#: copying the dict, not by deepcopy (which walks every value, ~10x slower; served to
#: hundreds of waiters in one loop turn, it stalled the loop).
_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


def caller_copy(value: Any) -> Any:
    """``value`` as the caller may keep it: str and bytes are immutable and shared; a
    dict of fields is copied, so changing it cannot change what others are served."""
    if type(value) is not dict:
        return value
    if all(type(field) in _IMMUTABLE for field in value.values()):
        return dict(value)  # keys of a JSON object are str: nothing else to copy
    return copy.deepcopy(value)


#: (name, version): a cache belongs to one manager, whose primary source is fixed.
CacheKey = tuple[str, "int | None"]


class WaitExpiredError(Exception):
    """Another caller's load of the key did not finish within this caller's wait.

    Its own class (not ``TimeoutError``, which a loader may raise itself): only the
    waiting is treated as an outage.
    """


class _Absent:
    """The backend answered "no such secret" (cached too: env-served names are hot)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
_AGAIN: Any = object()  # a shared load that gave no answer


@dataclass
class CacheEntry:
    """A value the backend returned, and when."""

    value: Any = field(repr=False)
    fetched_at: float
    expires_at: float
    used_at: float


class SecretCache:
    """A bounded TTL cache with single-flight loading. Thread-safe.

    Args:
        ttl: Seconds an entry is fresh; 0 disables caching (loads still single-flight).
        size: Most entries kept; the least recently used goes first.
        max_stale: Seconds after fetching that an entry may still be served stale.
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        ttl: float,
        size: int,
        max_stale: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.max_stale = max_stale
        self._clock = clock
        self._entries: dict[CacheKey, CacheEntry] = {}
        self._lock = threading.Lock()
        self._loading: dict[CacheKey, Latch] = {}
        self._pid = os.getpid()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: fresh lock, no loads in flight (their threads are gone).

        Cached entries stay: they were true in the parent and are true here.
        """
        self._lock = threading.Lock()
        self._loading = {}
        self._pid = os.getpid()

    def fresh(self, key: CacheKey) -> CacheEntry | None:
        """The entry for ``key`` if it is still fresh (no lock: a hit must be cheap)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires_at:
            return None
        entry.used_at = now
        return entry

    def stale(self, key: CacheKey) -> CacheEntry | None:
        """The entry for ``key`` if it is at most ``max_stale`` seconds old."""
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry.fetched_at > self.max_stale:
            return None
        return entry

    def load(
        self, key: CacheKey, loader: Callable[..., Any], *args: Any, wait: float | None = None
    ) -> tuple[Any, bool]:
        """The value for ``key``: fresh from the cache, or loaded once for all callers
        (``loader(*args)``).

        Args:
            wait: Seconds to wait at most for another caller's load of ``key`` (the
                waiting caller's own deadline); ``None``: as long as it takes.

        Returns:
            The value, and whether this caller ran ``loader`` (False: it shared another
            caller's load, or hit the cache).

        Raises:
            WaitExpiredError: Another caller's load did not finish within ``wait``.
            Whatever ``loader`` raised (each waiting caller gets its own copy).
        """
        if self._pid != os.getpid():  # forked behind the hooks' back
            self.after_fork()
        while True:
            with self._lock:
                entry = self.fresh(key)
                if entry is not None:
                    return entry.value, False
                flight = self._loading.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._loading[key] = Latch()
            if leader:
                break
            shared = self._shared(key, flight, wait)
            if shared is not _AGAIN:
                return shared, False
        try:
            value = loader(*args)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            self._put(key, value, flight)
            flight.set_result(value)
            return value, True
        finally:
            with self._lock:
                if self._loading.get(key) is flight:
                    del self._loading[key]

    def _shared(self, key: CacheKey, flight: Latch, wait: float | None) -> Any:
        """What another caller's load of ``key`` gave, or :data:`_AGAIN` when it was
        interrupted (KeyboardInterrupt, its event loop ended): no answer for the others,
        who load it again, one of them leading."""
        if not done_within(flight, wait):  # on an event loop, awaited: never blocked
            with self._lock:  # a leader past every deadline is presumed gone
                if self._loading.get(key) is flight:
                    del self._loading[key]
            raise WaitExpiredError(f"another caller's load ran past {wait} s")
        failure = flight.exception()
        if failure is None:
            return flight.result()
        if not isinstance(failure, Exception) or isinstance(failure, LoopEndedError):
            return _AGAIN
        # Never the loader's own exception: raised here, it would grow this thread's
        # frames into the traceback the loader's caller sees. A copy chains nothing.
        raise copy.copy(failure)

    def _put(self, key: CacheKey, value: Any, flight: Latch) -> None:
        """Remember what ``flight`` loaded (if caching is on), evicting the least
        recently used."""
        if self.ttl <= 0:
            return
        now = self._clock()
        with self._lock:
            if self._loading.get(key) is not flight:
                return  # invalidated while it loaded: the value may predate a write
            if key not in self._entries and len(self._entries) >= self.size:
                oldest = min(self._entries, key=lambda k: self._entries[k].used_at)
                del self._entries[oldest]
            self._entries[key] = CacheEntry(value, now, now + self.ttl, now)

    def invalidate(self, match: Callable[[CacheKey], bool] | None = None) -> int:
        """Drop the entries whose key ``match`` accepts (all when ``None``); count them.

        Loads already in flight are cut loose too: their result is not cached, and
        callers that come after this start a new load rather than share an old one.
        """
        with self._lock:
            doomed = [k for k in self._entries if match is None or match(k)]
            for key in doomed:
                del self._entries[key]
            for key in [k for k in self._loading if match is None or match(k)]:
                del self._loading[key]
            return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)
