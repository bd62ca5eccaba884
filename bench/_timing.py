"""Timing machinery for bench/run.py: interleaved rounds, threaded throughput, imports.

Every contestant of a group is timed once per round, in a rotated order, and the median
of the rounds is reported: a noisy neighbour then hurts all contestants alike instead of
whichever one happened to run during the noise.
"""

from __future__ import annotations

import functools
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

Call = Callable[[], object]

ROUNDS = 7
THROUGHPUT_ROUNDS = 5


def fmt_us(us: float) -> str:
    """Microseconds for a table cell, with the precision the size deserves."""
    if us < 10:
        return f"{us:.2f} µs"
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{us:,.0f} µs"


def per_op_us(func: Call, n: int) -> float:
    """Mean µs per call of ``func`` over ``n`` back-to-back calls."""
    start = time.perf_counter_ns()
    for _ in range(n):
        func()
    return (time.perf_counter_ns() - start) / n / 1000


def round_order(names: Sequence[str], r: int) -> list[str]:
    """The order contestants run in round ``r``: rotated by ``r // 2``, and every other
    round reversed, so of any two of them each runs first in about half the rounds
    whatever their number (rotation alone keeps neighbours in one order until it wraps
    round; reversing alone, or with a rotation by ``r``, undoes it for two)."""
    turn = (r // 2) % len(names)
    order = [*names[turn:], *names[:turn]]
    return order[::-1] if r % 2 else order


def interleaved(
    contestants: Mapping[str, tuple[Call, int]], rounds: int = ROUNDS
) -> dict[str, float]:
    """Median µs per call of each ``name: (func, n)``, timed in interleaved rounds."""
    for func, n in contestants.values():  # warm-up: connections, caches, lazy imports
        per_op_us(func, max(1, n // 10))
    names = list(contestants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            func, n = contestants[name]
            samples[name].append(per_op_us(func, n))
    return {name: statistics.median(values) for name, values in samples.items()}


class Workers:
    """Long-lived threads, like an application's thread pool: call ``i`` of a sample
    always runs on thread ``i``, so per-thread state (connections) is set up once, in
    the warm-up, and not again in every sample."""

    def __init__(self, size: int) -> None:
        self._queues: list[queue.SimpleQueue[Callable[[], None] | None]] = [
            queue.SimpleQueue() for _ in range(size)
        ]
        self._threads = [
            threading.Thread(target=self._serve, args=(q,), daemon=True) for q in self._queues
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while (job := jobs.get()) is not None:
            job()

    def ops_per_s(self, calls: Sequence[Call], n: int) -> float:
        """Calls per second when each of ``calls`` runs ``n`` times on its own thread."""
        if len(calls) > len(self._queues):
            raise ValueError(f"{len(calls)} calls, only {len(self._queues)} threads")
        started = threading.Barrier(len(calls) + 1)
        finished = threading.Barrier(len(calls) + 1)
        spans: list[tuple[float, float]] = []
        errors: list[BaseException] = []

        def job(call: Call) -> None:
            started.wait()
            begin = time.perf_counter()
            try:
                for _ in range(n):
                    call()
            except BaseException as exc:
                errors.append(exc)
            finally:
                spans.append((begin, time.perf_counter()))
                finished.wait()

        for q, call in zip(self._queues, calls, strict=False):
            q.put(functools.partial(job, call))
        started.wait()
        finished.wait()
        if errors:
            raise errors[0]
        # Timed by the workers: the main thread may get the GIL back only after the
        # first of them has run for a switch interval.
        elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
        return len(calls) * n / elapsed

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def interleaved_throughput(
    workers: Workers,
    contestants: Mapping[str, tuple[Sequence[Call], int]],
    rounds: int = THROUGHPUT_ROUNDS,
) -> dict[str, float]:
    """Median ops/s of each ``name: (one call per thread, total calls)``, interleaved."""
    for calls, total in contestants.values():
        workers.ops_per_s(calls, max(1, total // len(calls) // 10))
    names = list(contestants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            calls, total = contestants[name]
            samples[name].append(workers.ops_per_s(calls, total // len(calls)))
    return {name: statistics.median(values) for name, values in samples.items()}


def cold_import_ms(modules: Sequence[str], runs: int = 9) -> dict[str, float]:
    """Median ms for a fresh interpreter to import each module, interleaved."""
    samples: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(runs):
        for module in modules:
            start = time.perf_counter_ns()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            samples[module].append((time.perf_counter_ns() - start) / 1e6)
    return {m: statistics.median(v) for m, v in samples.items()}


def _tcp_client_ports(server_port: int) -> set[int] | None:
    """Local ports of this host's TCP sockets connected to ``server_port`` (Linux)."""
    ports: set[int] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    local, remote = line.split()[1:3]
                    if int(remote.rsplit(":", 1)[1], 16) == server_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return ports


def new_connections(run: Call, server_port: int) -> int | None:
    """TCP connections to the server that appeared while ``run`` ran (None: not Linux).

    Run it warm: 0 means every request went over a connection that was already open.
    """
    before = _tcp_client_ports(server_port)
    run()
    after = _tcp_client_ports(server_port)
    if before is None or after is None:
        return None
    return len(after - before)


def median_seconds(
    contestants: Mapping[str, Callable[[], object]],
    rounds: int,
    prepare: Callable[[], object] | None = None,
    *,
    warm_up: bool = False,
) -> dict[str, float]:
    """Each contestant once per round, in rotated order (after one untimed call each
    with ``warm_up``); the median seconds of its rounds. ``prepare`` runs untimed before
    every call (files: start from the same state)."""
    names = list(contestants)
    for name in names if warm_up else ():
        if prepare is not None:
            prepare()
        contestants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in round_order(names, r):
            if prepare is not None:
                prepare()
            start = time.perf_counter()
            contestants[name]()
            samples[name].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in samples.items()}
