"""Exact counters that cost a hit almost nothing: one small list per thread.

``x += 1`` on a shared attribute can lose updates when threads switch mid-statement; a
lock on every cache hit would cost more than the hit. Each thread counts in its own
list instead, and a snapshot adds them up.
"""

from __future__ import annotations

import threading
from collections import Counter

HITS, MISSES, STALE, BACKEND_READS = range(4)
_FIELDS = 4


class Counters:
    """Per-thread tallies of hits, misses, stale serves and backend reads, plus errors."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[list[int]] = []
        self._lock = threading.Lock()
        self._errors: Counter[str] = Counter()

    def mine(self) -> list[int]:
        """This thread's tallies, indexed by ``HITS``, ``MISSES``, ..."""
        try:
            return self._local.box  # type: ignore[no-any-return]
        except AttributeError:
            box = self._local.box = [0] * _FIELDS
            with self._lock:
                self._all.append(box)
            return box

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def totals(self) -> tuple[list[int], dict[str, int]]:
        """Every thread's tallies added up, and errors by class name."""
        with self._lock:
            boxes = list(self._all)
            errors = dict(self._errors)
        return [sum(box[i] for box in boxes) for i in range(_FIELDS)], errors
