"""A watchdog that ends a request at its deadline, however slowly the server talks.

Socket timeouts bound each ``recv``, not a whole answer: a server (or a proxy in the
way) that sends its status line and headers a byte at a time can hold a request for
ever while every single ``recv`` returns in time. The watchdog is one daemon thread per
process with a heap of deadlines; when one passes while its request is still running,
it shuts the connection's socket down, which wakes the blocked read with an error that
the transport then treats like any broken connection.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from typing import Any

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class _Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, Any] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, conn: Any) -> int:
        """Shut ``conn`` down at ``deadline`` unless :meth:`release` comes first."""
        with self._wake:
            ticket = next(self._ids)
            self._watched[ticket] = conn
            heapq.heappush(self._heap, (deadline, ticket))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="secureml-deadline-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == ticket:
                self._wake.notify()
        return ticket

    def release(self, ticket: int) -> None:
        with self._wake:
            self._watched.pop(ticket, None)

    def release_conn(self, conn: Any) -> None:
        """``conn`` goes back to its pool: whatever watched it must stop, before another
        request (another thread's, with another deadline) can take it."""
        with self._wake:
            for ticket in [t for t, c in self._watched.items() if c is conn]:
                del self._watched[ticket]

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)  # released in time: forget it
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, ticket = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                heapq.heappop(self._heap)
                conn = self._watched.pop(ticket, None)
            _cut(conn)


def _cut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = _Watchdog()


@contextlib.contextmanager
def deadline_for_this_thread(deadline: float) -> Any:
    """Requests made by this thread inside the block are cut off at ``deadline``."""
    _local.deadline = deadline
    _local.tickets = []
    try:
        yield
    finally:
        for ticket in _local.tickets:
            WATCHDOG.release(ticket)
        _local.deadline = None
        _local.tickets = []


class _Watched:
    """Pool mix-in: a request is watched from when it starts on a connection until the
    connection goes back to the pool (or the thread's block ends)."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_local, "deadline", None)
        if deadline is not None:
            _local.tickets.append(WATCHDOG.watch(deadline, conn))
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]

    def _put_conn(self, conn: Any) -> None:
        WATCHDOG.release_conn(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class WatchedHTTPConnectionPool(_Watched, HTTPConnectionPool):
    """An HTTP pool whose requests end at the calling thread's deadline."""


class WatchedHTTPSConnectionPool(_Watched, HTTPSConnectionPool):
    """An HTTPS pool whose requests end at the calling thread's deadline."""


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
