"""Exact counters that cost a hit almost nothing: one small list per thread.

``x += 1`` on a shared attribute can lose updates when threads switch mid-statement; a
lock on every cache hit would cost more than the hit. Each thread counts in its own
list instead, and a snapshot adds them up.
"""

from __future__ import annotations

import threading
from collections import Counter

from ._process import reset_after_fork

HITS, MISSES, STALE, BACKEND_READS = range(4)
_FIELDS = 4


class Counters:
    """Per-thread tallies of hits, misses, stale serves and backend reads, plus errors."""

    def __init__(self) -> None:
        self._reset()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: count this process's work from zero, with a fresh lock."""
        self._reset()

    def _reset(self) -> None:
        self._local = threading.local()
        self._boxes: list[tuple[threading.Thread, list[int]]] = []
        self._retired = [0] * _FIELDS  # from threads that have ended
        self._lock = threading.Lock()
        self._errors: Counter[str] = Counter()

    def mine(self) -> list[int]:
        """This thread's tallies, indexed by ``HITS``, ``MISSES``, ..."""
        try:
            return self._local.box  # type: ignore[no-any-return]
        except AttributeError:
            box = self._local.box = [0] * _FIELDS
            with self._lock:
                self._retire_ended()  # so a thread-per-request server does not grow this
                self._boxes.append((threading.current_thread(), box))
            return box

    def _retire_ended(self) -> None:
        alive = []
        for thread, box in self._boxes:
            if thread.is_alive():
                alive.append((thread, box))
            else:
                self._retired = [a + b for a, b in zip(self._retired, box, strict=True)]
        self._boxes = alive

    def error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def totals(self) -> tuple[list[int], dict[str, int]]:
        """Every thread's tallies added up, and errors by class name."""
        with self._lock:
            self._retire_ended()
            boxes = [box for _, box in self._boxes] + [self._retired]
            errors = dict(self._errors)
        return [sum(box[i] for box in boxes) for i in range(_FIELDS)], errors
