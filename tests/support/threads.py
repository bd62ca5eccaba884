"""Start many threads at the same instant: what single-flight and lock tests need."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def all_at_once(count: int, call: Callable[[], _T]) -> list[_T | BaseException]:
    """Run ``call`` in ``count`` threads released together by a barrier; return each
    thread's result, or the exception it raised, in completion order."""
    barrier = threading.Barrier(count)
    results: list[_T | BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            outcome: _T | BaseException = call()
        except BaseException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
