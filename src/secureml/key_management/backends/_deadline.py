"""A watchdog that ends a request at its deadline, however slowly the server talks.

Socket timeouts bound each ``recv``, not a whole answer: a server (or a proxy in the
way) that sends its status line and headers a byte at a time can hold a request for
ever while every single ``recv`` returns in time. The watchdog is one daemon thread per
process with a heap of deadlines; when one passes while its request is still running,
it shuts the connection's socket down and marks the request as cut, so the transport
treats whatever half-answer it got as a broken connection.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from typing import Any

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .._process import reset_after_fork

logger = logging.getLogger("secureml.key_management")

_local = threading.local()


class _Watchdog:
    def __init__(self) -> None:
        self._reset()

    def after_fork(self) -> None:
        """In a forked child: the parent's lock and thread do not exist there."""
        self._reset()

    def _reset(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, Any] = {}  # ticket -> connection
        self._by_conn: dict[int, int] = {}  # id(connection) -> ticket
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fired: set[int] = set()

    def watch(self, deadline: float, conn: Any) -> int:
        """Shut ``conn`` down at ``deadline`` unless it is released first."""
        with self._wake:
            ticket = next(self._ids)
            self._watched[ticket] = conn
            self._by_conn[id(conn)] = ticket
            heapq.heappush(self._heap, (deadline, ticket))
            if len(self._heap) > 2 * len(self._watched) + 64:
                # Released tickets leave entries behind; rebuild rather than let them pile up.
                self._heap = [e for e in self._heap if e[1] in self._watched]
                heapq.heapify(self._heap)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="secureml-deadline-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == ticket:
                self._wake.notify()
        return ticket

    def release(self, ticket: int) -> bool:
        """Stop watching ``ticket``; return whether it had already been cut."""
        with self._wake:
            conn = self._watched.pop(ticket, None)
            if conn is not None and self._by_conn.get(id(conn)) == ticket:
                del self._by_conn[id(conn)]
            if ticket in self.fired:
                self.fired.discard(ticket)
                return True
            return False

    def release_conn(self, conn: Any) -> None:
        """``conn`` goes back to its pool: whatever watched it must stop, before another
        request (another thread's, with another deadline) can take it."""
        with self._wake:
            ticket = self._by_conn.pop(id(conn), None)
            if ticket is not None:
                self._watched.pop(ticket, None)

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # the watchdog must outlive any one bad socket
                logger.exception("the deadline watchdog failed to cut a connection")

    def _step(self) -> None:
        with self._wake:
            while self._heap and self._heap[0][1] not in self._watched:
                heapq.heappop(self._heap)  # released in time: forget it
            if not self._heap:
                self._wake.wait()
                return
            deadline, ticket = self._heap[0]
            delay = deadline - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                return
            heapq.heappop(self._heap)
            conn = self._watched.pop(ticket)
            if self._by_conn.get(id(conn)) == ticket:
                del self._by_conn[id(conn)]
            self.fired.add(ticket)
            # Under the lock: a connection being handed back waits for this, so the cut
            # can never land on the next request that takes it.
            _cut(conn)


def _cut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    # TLS inside a TLS proxy tunnel: urllib3's SSLTransport wraps the real socket.
    sock = getattr(sock, "socket", sock)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = _Watchdog()
reset_after_fork(WATCHDOG)


class DeadlinePassedError(Exception):
    """The call's deadline passed while the answer was still arriving."""


class Cut(Exception):  # noqa: N818 - a signal between two functions, never raised to users
    """The watchdog cut this thread's request at its deadline."""


class deadline_for_this_thread:  # noqa: N801 - used as the function it was
    """Requests made by this thread inside the block are cut off at ``deadline``.

    A class rather than a ``@contextmanager``: it runs on every request.

    Raises:
        Cut: The watchdog cut a request of the block (whatever it seemed to return).
    """

    __slots__ = ("_deadline",)

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __enter__(self) -> None:
        _local.deadline = self._deadline
        _local.tickets = []

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        tickets = _local.tickets
        _local.deadline = None
        _local.tickets = []
        cut = False
        for ticket in tickets:
            cut = WATCHDOG.release(ticket) or cut
        if cut and kind is None:  # an exception from the block goes on as it is
            raise Cut


def watch(conn: Any) -> None:
    """A request of this thread starts on ``conn``: note whether the connection is new
    (see :func:`on_new_connection`), and have the watchdog cut it at the deadline of
    the thread's :func:`deadline_for_this_thread` block, if any, until ``conn`` goes
    back to its pool."""
    _local.new_connection = getattr(conn, "sock", None) is None
    deadline = getattr(_local, "deadline", None)
    if deadline is not None:
        _local.tickets.append(WATCHDOG.watch(deadline, conn))


class _Watched:
    """Pool mix-in: a request is watched from when it starts on a connection until the
    connection goes back to the pool (or the thread's block ends)."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        watch(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]

    def _put_conn(self, conn: Any) -> None:
        WATCHDOG.release_conn(conn)
        super()._put_conn(conn)  # type: ignore[misc]


def note_new_connection(new: bool) -> None:
    """Record, for :func:`on_new_connection`, whether this thread's request (the async
    wire's, on the event loop's thread) opened its connection."""
    _local.new_connection = new


def on_new_connection() -> bool:
    """Whether this thread's last request opened its connection (rather than reuse one):
    a TLS failure there is the handshake's, before the request could be processed."""
    return bool(getattr(_local, "new_connection", True))


class WatchedHTTPConnectionPool(_Watched, HTTPConnectionPool):
    """An HTTP pool whose requests end at the calling thread's deadline."""


class WatchedHTTPSConnectionPool(_Watched, HTTPSConnectionPool):
    """An HTTPS pool whose requests end at the calling thread's deadline."""


POOL_CLASSES = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}
