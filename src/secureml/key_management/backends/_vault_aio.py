"""One HTTP/1.1 exchange with a Vault node on asyncio: the async manager's wire.

:func:`._vault_http.send` hands a request here when it runs in a bridged greenlet
(:mod:`.._bridge`), so an async read costs no thread. Everything above the wire is the
sync path's: the request is built there, the answer judged there, and the failures
raised here are the urllib3 exceptions the sync wire raises for the same events, so the
transport's retry, fail-over and deadline rules see no difference.

Why not aiohttp: the async face must cost less than a raw aiohttp read, and aiohttp's
client spends more Python per request than the whole of a secureml read. The request's
bytes and the answer's parser are the sync wire's (:mod:`._http11`); a malformed or
oversized answer is a broken connection, never a crash.

Connections are kept alive per event loop and origin, at most
:data:`CONNECTIONS_PER_ORIGIN` open; TLS uses a context built from the same options
urllib3 gets (CA bundle, client certificate, verification on unless the user turned
it off).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import select
import socket
import ssl
import time
from typing import Any
from urllib.parse import SplitResult

import urllib3
from urllib3.util.ssl_ import create_urllib3_context

from .._bridge import CutOffError, Signal, wait
from ._deadline import DeadlinePassedError, note_new_connection
from ._http11 import AnswerParser, MalformedAnswerError, ParsedAnswer

__all__ = ["Wire", "exchange", "tls_context"]

#: Connections open at most per origin and event loop; callers beyond wait for one to
#: come free rather than open and drop their own. Above aiohttp's 100 (Go's client,
#: Vault's own, sets no limit at all): a service with a few hundred reads in flight
#: should not queue behind its own pool. Idle ones stay until Vault closes them
#: (its idle timeout) or the loop ends.
CONNECTIONS_PER_ORIGIN = 256
#: How often exchanges in flight are checked against their timeouts: a timeout fires
#: at most this much late.
SWEEP_SECONDS = 0.02
#: What one read from a socket may take (into a buffer made once per wire, that is per
#: backend and event loop, and reused): more than a KV answer.
READ_BUFFER_BYTES = 64 * 1024
#: Written over what a read left in that buffer: an answer (a secret, a login's token)
#: must not stay there for the loop's life. (Only there: the copies a read makes, in its
#: parser and its answer, live as long as the read's own objects, as in any client.)
_ZEROS = memoryview(bytes(READ_BUFFER_BYTES))


class _Selected:
    """Where ``select.poll`` does not exist (Windows): a ``select()`` per question."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def poll(self, timeout: float) -> list[int]:
        return select.select([self._fd], [], [], timeout)[0]


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection, one exchange at a time, parsed as bytes arrive.

    Buffered: asyncio reads into ``into`` (one buffer for all of a wire's connections)
    instead of allocating a fresh 256 KiB ``bytes`` per read, which glibc maps, shrinks
    and unmaps, three system calls per answer (it was a tenth of a read's CPU)."""

    def __init__(self, into: memoryview) -> None:
        self.transport: asyncio.Transport | None = None
        self._into = into
        self._parser = AnswerParser()
        self._waiter: Signal | None = None
        self._eof = False
        self._lost: BaseException | None = None
        self._readable: select.poll | _Selected | None = None  # asks for unread bytes

    # -- asyncio's side ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream transport
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # One poll object for the connection's life: asking it costs a third of a
            # select() built per call, on every reuse.
            if hasattr(select, "poll"):
                readable = select.poll()
                readable.register(sock.fileno(), select.POLLIN)
                self._readable = readable
            else:
                self._readable = _Selected(sock.fileno())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._into

    def buffer_updated(self, nbytes: int) -> None:
        # Called right after the read that filled ``into``, before any other
        # connection's: what it holds is copied out before the next read reuses it.
        into = self._into
        self._parser.buffer += into[:nbytes]
        into[:nbytes] = _ZEROS[:nbytes]
        self._advance()

    def eof_received(self) -> bool:
        self._eof = True
        self._advance()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._advance()

    # -- the exchange --------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Idle and still open: neither end has closed it, and nothing unasked arrived."""
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self._eof
            and not self._parser.buffer
        )

    @property
    def reusable_now(self) -> bool:
        """:attr:`usable`, and nothing is waiting unread on its socket either: bytes a
        peer sent after an answer, while the loop was busy, would otherwise be taken
        for the next request's answer (the check urllib3 makes before a reuse)."""
        # Usable means not closing, so the socket (and its number) is still this one's.
        readable = self._readable
        return readable is not None and self.usable and not readable.poll(0)

    def send(self, request: bytes, *, head_only: bool) -> Signal:
        """Write ``request``; the signal fires with the whole answer (``head_only``: a
        HEAD's), from ``buffer_updated``: the read waiting on it resumes right there."""
        assert self.transport is not None  # noqa: S101 - connected before use
        self._parser.expect(head_only=head_only)
        waiter = self._waiter = Signal()
        self.transport.write(request)
        if self._eof or self._parser.buffer:  # else nothing can have come yet
            self._advance()
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # half-used or unwanted: never reused, no lingering

    @property
    def head_done(self) -> bool:
        return self._parser.head_done

    def _advance(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = self._parser.parse(self._eof)
        except Exception as exc:  # any parse failure is a broken answer
            # Never out of buffer_updated: asyncio would log it, buffers and all.
            why = (
                exc
                if isinstance(exc, MalformedAnswerError)
                else MalformedAnswerError("an answer that could not be parsed")
            )
            self._parser.buffer.clear()
            waiter.set_exception(urllib3.exceptions.ProtocolError("Connection aborted.", why))
            return
        if answer is not None:
            self._waiter = None
            waiter.set_result(answer)
        elif self._eof:
            lost = self._lost
            if isinstance(lost, ssl.SSLError):
                waiter.set_exception(urllib3.exceptions.SSLError(lost))
            else:
                ended = lost or ConnectionResetError("the connection closed before the answer")
                waiter.set_exception(urllib3.exceptions.ProtocolError("Connection aborted.", ended))


class _Waiter:
    """A caller waiting for a connection to be handed over. What it was given is kept
    here, not in its :class:`Signal` (which only wakes it): the loop's thread alone
    touches it, so whoever settles it first (a hand-over, the sweep's timeout, the
    caller's end) is the one that counts, whatever order the wake-ups run in."""

    __slots__ = ("conn", "due", "given", "settled", "signal")

    def __init__(self, due: float) -> None:
        self.due = due  # time.monotonic() seconds: it gives up then
        self.signal = Signal()
        self.settled = False  # given, timed out, or gone: never handed anything again
        self.given = False
        self.conn: _Connection | None = None  # what was given (None: a free slot)

    def give(self, conn: _Connection | None) -> bool:
        """Hand ``conn`` (or a free slot) over; False if it no longer waits."""
        if self.settled:
            return False
        self.settled = self.given = True
        self.conn = conn
        self.signal.set_result(None)
        return True


class _Origin:
    """One origin's connections on one loop: the idle ones, how many are out, and the
    callers waiting for one (at most :data:`CONNECTIONS_PER_ORIGIN` are open)."""

    __slots__ = ("host", "idle", "out", "port", "waiting")

    def __init__(self, parts: SplitResult) -> None:
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.idle: list[_Connection] = []
        self.out = 0
        self.waiting: collections.deque[_Waiter] = collections.deque()


class Wire:
    """Kept-alive connections for one event loop, per origin, over ``tls`` (a context
    built from the pool's TLS options by :func:`tls_context`; None: plain http)."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        # Exchanges in flight: when each one's head, and its whole answer, are due.
        self._due: dict[_Connection, tuple[float, float, Signal]] = {}
        # Callers waiting for a connection to come free (timed out by the same sweep:
        # a loop timer each would cost more than the rest of their wait).
        # (A dict for its order: the longest waiting are timed out first.)
        self._queued: dict[_Waiter, None] = {}
        self._sweeping = False
        self._tls = tls
        # Shared by this wire's connections (:class:`_Connection`): one loop, so one
        # thread, and a read's bytes are taken out of it before the next read.
        self._into = memoryview(bytearray(READ_BUFFER_BYTES))

    def idle(self, origin: str) -> _Connection | None:
        """An idle connection to ``origin`` that is still good, taken out; or None."""
        place = self._origins.get(origin)
        if place is None:
            return None
        idle = place.idle
        while idle:
            conn = idle.pop()
            if conn.reusable_now:
                place.out += 1
                return conn
            conn.close()
        return None

    def connection(
        self, parts: SplitResult, origin: str, timeout: float, deadline: float
    ) -> _Connection:
        """A connection to ``origin`` when none is idle: a new one, or (all are out)
        the first one handed back. In a bridged greenlet (it waits on the loop).

        Raises:
            urllib3.exceptions.ConnectTimeoutError: None could be had within ``timeout``.
        """
        place = self._origins.get(origin)
        if place is None:
            place = self._origins[origin] = _Origin(parts)
        if place.out >= CONNECTIONS_PER_ORIGIN:
            found = self._handed(place, origin, _within(timeout, deadline))
            if found is not None:
                return found  # counted out by the hand-over
            place.out -= 1  # a slot came free, not a connection: open one below
        place.out += 1
        try:
            conn: _Connection = wait(self._open(place, parts, _within(timeout, deadline)))
        except CutOffError:
            # Its task (asyncio's connect needs one) was cancelled by other code, the
            # loop going on: a connection never made, which the rules may try again.
            self._freed(place)
            raise urllib3.exceptions.NewConnectionError(
                None,  # type: ignore[arg-type]
                "Failed to establish a new connection: the attempt was cancelled by other code",
            ) from None
        except BaseException:
            self._freed(place)
            raise
        return conn

    def _handed(self, place: _Origin, origin: str, timeout: float) -> _Connection | None:
        """Wait (on the loop) for a connection, or a free slot (None), to be handed over."""
        waiter = _Waiter(time.monotonic() + timeout)
        place.waiting.append(waiter)
        self._queued[waiter] = None
        self._sweep_soon()
        try:
            wait(waiter.signal)
        except _NoConnectionError:
            raise urllib3.exceptions.ConnectTimeoutError(
                None, f"no connection to {place.host} came free within {timeout} s"
            ) from None
        except BaseException:
            # Ended while waiting (its loop shut down): what was handed goes on.
            waiter.settled = True
            if waiter.given:
                given, waiter.conn = waiter.conn, None
                if given is None:
                    self._freed(place)
                else:
                    self.put(origin, given)  # still counted out, as put expects
            raise
        finally:
            self._queued.pop(waiter, None)
        given, waiter.conn = waiter.conn, None
        return given

    async def _open(self, place: _Origin, parts: SplitResult, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls if parts.scheme == "https" else None
        note_new_connection(True)  # a failure here is before anything was sent
        host = place.host
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(_Connection, self._into),
                    host,
                    place.port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise urllib3.exceptions.ConnectTimeoutError(
                None, f"Connection to {host} timed out. (connect timeout={timeout})"
            ) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise urllib3.exceptions.SSLError(exc) from None
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(host, None, exc) from None  # type: ignore[arg-type]
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                None,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc.strerror or type(exc).__name__}",
            ) from None
        return conn  # asyncio sets TCP_NODELAY on it

    def put(self, origin: str, conn: _Connection) -> None:
        """Hand ``conn`` back after a whole exchange: to a waiting caller, or idle."""
        place = self._origins[origin]
        if not conn.usable or self._closed:
            conn.close()
            self._freed(place)
            return
        if place.waiting and not conn.reusable_now:
            conn.close()
            self._freed(place)  # a waiter opens a connection of its own instead
            return
        while place.waiting:
            if place.waiting.popleft().give(conn):
                return
        place.out -= 1
        place.idle.append(conn)

    def discard(self, origin: str, conn: _Connection) -> None:
        """Close ``conn`` (half-used, or not reusable) and free its slot."""
        conn.close()
        self._freed(self._origins[origin])

    def watch(self, conn: _Connection, waiter: Signal, head_by: float, deadline: float) -> None:
        """End ``conn``'s exchange with a timeout if its head is not in by ``head_by``,
        or its answer by ``deadline`` (``time.monotonic()`` seconds; at most
        :data:`SWEEP_SECONDS` late)."""
        self._due[conn] = (head_by, deadline, waiter)
        self._sweep_soon()

    def _sweep_soon(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def unwatch(self, conn: _Connection) -> None:
        self._due.pop(conn, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn, (head_by, deadline, waiter) in list(self._due.items()):
            if waiter.done():
                continue
            if now >= deadline and conn.head_done:
                waiter.set_exception(_ExpiredError(mid_answer=True))
            elif now >= head_by and not conn.head_done:
                waiter.set_exception(_ExpiredError(mid_answer=False))
        for queued in [q for q in self._queued if now >= q.due]:
            # Checked as each is reached: one timed out before it may have freed a
            # slot, handed to a later one in this very list.
            if not queued.settled:
                queued.settled = True
                queued.signal.set_exception(_NoConnectionError())
        if self._due or self._queued:
            asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)
        else:
            self._sweeping = False

    def close(self) -> None:
        """Close every idle connection (those out close when their exchange ends)."""
        self._closed = True
        for place in self._origins.values():
            idle, place.idle = place.idle, []
            for conn in idle:
                conn.close()

    @staticmethod
    def _freed(place: _Origin) -> None:
        place.out -= 1
        while place.waiting:  # a slot, not a connection: the waiter opens its own
            if place.waiting.popleft().give(None):
                place.out += 1
                return


def exchange(
    wire: Wire,
    parts: SplitResult,
    origin: str,
    request: bytes,
    *,
    head_only: bool,
    timeout: float,
    deadline: float,
) -> tuple[int, Any, bytes, str]:
    """Send ``request`` (a whole HTTP/1.1 request) to ``origin``; the answer's status,
    headers, body and reason. Called in a bridged greenlet: it waits on the event loop
    (:func:`.._bridge.wait`). ``timeout`` bounds connecting and the wait for the head;
    ``deadline`` (``time.monotonic()`` seconds) the whole answer.

    Raises what :func:`._vault_http.send` does, the urllib3 exception types the sync
    wire raises for the same failures.
    """
    conn = wire.idle(origin)
    new = conn is None
    if conn is None:
        try:
            conn = wire.connection(parts, origin, timeout, deadline)
        except BaseException:
            note_new_connection(True)  # other reads ran meanwhile: say it again
            raise
    ok = False
    waiter = conn.send(request, head_only=head_only)
    # The head within ``timeout``, then the rest within the deadline (swept, not timed:
    # a timer per request costs as much as parsing its answer).
    wire.watch(conn, waiter, time.monotonic() + _within(timeout, deadline), deadline)
    try:
        answer: ParsedAnswer = wait(waiter)
        ok = answer.reusable
    except BaseException as exc:
        note_new_connection(new)  # read by the transport as the failure reaches it
        if not isinstance(exc, _ExpiredError):
            raise
        if exc.mid_answer:
            raise DeadlinePassedError(
                "the call's deadline passed while the answer arrived"
            ) from None
        raise urllib3.exceptions.ReadTimeoutError(
            None,  # type: ignore[arg-type]
            origin,
            f"Read timed out. (read timeout={timeout})",
        ) from None
    finally:
        wire.unwatch(conn)
        if ok:
            wire.put(origin, conn)
        else:
            wire.discard(origin, conn)
    return answer.status, answer.headers, answer.body, answer.reason


def _within(timeout: float, deadline: float) -> float:
    """``timeout``, or what is left until ``deadline`` if that is less: each stage
    (a free connection, connecting, the head) waits at most this."""
    return max(0.001, min(timeout, deadline - time.monotonic()))


class _NoConnectionError(Exception):
    """No connection came free within the timeout (a signal within this module)."""


class _ExpiredError(Exception):
    def __init__(self, mid_answer: bool) -> None:
        super().__init__("expired")
        self.mid_answer = mid_answer


def tls_context(options: dict[str, Any]) -> ssl.SSLContext | None:
    """A client TLS context from the options urllib3's pools get (the same checks);
    None for a plain http pool. It may block (reading a CA bundle as large as certifi's
    takes tens of milliseconds): build it off the event loop, once."""
    if "cert_reqs" not in options:
        return None
    verify = options["cert_reqs"] != "CERT_NONE"
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    if verify:
        context.check_hostname = True
        context.load_verify_locations(
            cafile=options.get("ca_certs"), capath=options.get("ca_cert_dir")
        )
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.get("cert_file"):
        context.load_cert_chain(options["cert_file"], options.get("key_file"))
    return context
