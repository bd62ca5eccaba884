"""AsyncKeyManager: the asyncio facade over the same core as :class:`KeyManager`.

Not a second client. An ``AsyncKeyManager`` wraps a ``KeyManager`` and shares its core:
one cache, one token, one set of loads in flight, one audit trail. So a coroutine and a
thread that want the same cold name cause one Vault read.

- A fresh cache hit of ``get_secret`` that the cache alone can answer is served on the
  event loop, with no thread hop (an audit hook to call or a fallback to walk is not).
- An uncached Vault read runs on the event loop too: the sync read path itself, in a
  greenlet (:mod:`._bridge`), over an asyncio HTTP/1.1 wire (``backends/_vault_aio``).
  So the retry, fail-over, deadline and redirect rules are the sync ones, in one place,
  and a read costs no thread. What would block goes to a small bounded thread pool:
  logins and renewals, proxied requests, other backends, reads with an audit hook
  (the user's code), and the CPU-bound calls (encryption).
- Coroutines that miss on the same name share one read: 1,000 of them cause one
  request.
- A cancelled caller stops waiting. The shared read goes on for the others, and its
  result is cached as usual, so a cancellation never poisons the cache or orphans a
  load. A read still waiting when its loop shuts down ends as an outage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from . import _bridge
from ._boundary import scrub
from ._bridge import Outcome
from ._cache import caller_copy
from ._encoding import Encoding
from ._manager import KeyManager
from ._materials import DEFAULT_KEY
from ._process import reset_after_fork
from ._secrets import MISS, Secrets
from ._status import KeyManagerStats
from ._transit import TransitKeys
from .backends.base import SecretValue
from .errors import VaultUnavailableError

if TYPE_CHECKING:
    from ._spec import KeyManagerSpec

__all__ = ["AsyncKeyManager", "AsyncTransitKeys"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

#: Each loop's reads in flight, by (name, version): a bridged read's outcome, or a pool job.
_Flights = dict[tuple[str, "int | None"], "asyncio.Future[Any] | Outcome"]

#: Threads an AsyncKeyManager runs sync calls on at most (Vault reads, encryption).
DEFAULT_THREADS = 32
#: A cache entry this close to expiring is read through the pool instead: serving it
#: on the loop could turn into a blocking read a microsecond later.
_HIT_MARGIN = 0.25
#: Bytes a stream adapter asks the coroutine side for at a time.
_CHUNK = 1 << 20


class _Offload:
    """The thread pool one async facade runs sync calls on: made on first use, made
    again in a forked child (whose pool threads stayed in the parent)."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: no pool (its threads are the parent's), a fresh lock."""
        self._lock = threading.Lock()
        self._pool, self._pid = None, os.getpid()

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        if self._pid != os.getpid():  # forked behind the hooks' back
            self.after_fork()
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._threads, thread_name_prefix="secureml-async"
                )
            return self._pool

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=False)  # calls queued still run: reads in flight finish


async def _run(
    offload: _Offload, call: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``call(*args, **kwargs)`` on the pool, awaited. A cancelled caller stops waiting:
    a call already running goes on (its result is dropped), one still queued behind a
    busy pool never starts.

    The arguments (plaintexts, values) are dropped from this frame once submitted, and
    an exception leaving it is scrubbed (``_boundary``): coroutine frames stay in a
    traceback with their locals, and error trackers read them. Callers drop theirs the
    same way: make the coroutine, delete the arguments, then await it."""
    bound = functools.partial(call, *args, **kwargs)
    job = asyncio.get_running_loop().run_in_executor(offload.pool(), bound)
    del call, args, kwargs, bound
    try:
        return await job
    except BaseException as exc:
        scrub(exc)
        raise


def _scrubbed(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """An async facade method whose arguments leave no trace in an exception: they are
    deleted from its frame before the exception goes on (as ``guarded`` does for sync
    calls, which cannot wrap a coroutine)."""

    @functools.wraps(method)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except BaseException as exc:
            del args, kwargs
            scrub(exc)
            raise

    return call


def _awaitable(
    method: Callable[Concatenate[Any, _P], _R],
) -> Callable[Concatenate[Any, _P], Coroutine[Any, Any, _R]]:
    """The async form of a sync facade method: the same arguments, run on the pool.

    One wrapper for every method that has nothing to gain on the loop, so the async face
    cannot drift from the sync one: names, arguments, defaults, errors and audit events
    are the sync method's own."""
    name = method.__name__

    async def call(self: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        sync: Callable[_P, _R] = getattr(self._sync, name)
        running = _run(self._offload, sync, *args, **kwargs)
        # The plaintexts and values are the pool job's alone now: a coroutine's frame is
        # never cleared (scrub), and it stays in the traceback of whatever the call
        # raises, locals and all.
        del args, kwargs
        return await running

    call.__name__ = name
    call.__qualname__ = f"Async.{name}"
    call.__doc__ = (
        f"Awaitable :meth:`{method.__qualname__}`, run off the event loop.\n\n"
        + inspect.cleandoc(method.__doc__ or "")
    )
    call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return call


class AsyncKeyManager:
    """:class:`KeyManager` for asyncio: the same calls, awaitable, over the same core.

    ``AsyncKeyManager(km)`` shares ``km``'s cache, token and loads in flight.
    ``AsyncKeyManager(**kwargs)`` builds its own manager from ``KeyManager``'s
    arguments, and :meth:`from_spec` uses a worker's manager for a spec.
    :meth:`derive_key`, :meth:`stats` and :meth:`invalidate` stay synchronous: they
    do no I/O.

    Args:
        manager: The manager to share (positional only). Leave it out to pass
            ``KeyManager``'s arguments instead.
        threads: The most sync calls run at once on this facade's thread pool
            (encryption, logins, proxied Vault requests, reads with an audit hook;
            plain Vault reads run on the event loop and need none).
        **settings: ``KeyManager``'s arguments, when no ``manager`` is given.

    Example:
        >>> akm = AsyncKeyManager(km)                          # doctest: +SKIP
        >>> token = await akm.get_secret("api_token")          # doctest: +SKIP
    """

    def __init__(
        self,
        manager: KeyManager | None = None,
        /,
        *,
        threads: int = DEFAULT_THREADS,
        **settings: Any,
    ) -> None:
        if manager is not None and settings:
            raise TypeError(
                "AsyncKeyManager takes a KeyManager or KeyManager's arguments, not both"
            )
        if manager is not None and not isinstance(manager, KeyManager):
            raise TypeError(
                f"AsyncKeyManager(manager) takes a KeyManager, not {type(manager).__name__}"
            )
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError("threads must be a whole number of at least 1")
        self._sync = manager if manager is not None else KeyManager(**settings)
        self._core = self._sync._core
        # A subclass's own get_secret (or one set on the manager itself) is the one its
        # async face calls, hits included: the core's shortcuts (the lock-free hit, the
        # read on the loop) would skip it. Decided here, once.
        own = getattr(self._sync.get_secret, "__func__", None)
        self._overridden = own is not KeyManager.get_secret
        self._cached = _never_cached if self._overridden else self._sync._secrets.cached
        self._offload = _Offload(threads)
        # Coroutines of one loop waiting on the same cold read share its pool job.
        self._flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flights] = (
            weakref.WeakKeyDictionary()
        )
        self._transit: AsyncTransitKeys | None = None
        # Vault's reads run on the loop itself (its wire is asyncio's); another primary
        # may block, and an audit hook is the user's code: those run on the pool.
        core = self._core
        if core.vault is not None:
            core.vault.prepare()  # its imports, here rather than in a first read on the loop
        self._on_loop = (
            _bridge.AVAILABLE
            and core.vault is not None
            and core.primary is core.vault
            and core.observer.audit_hook is None
        )

    @classmethod
    def from_spec(cls, spec: KeyManagerSpec, *, threads: int = DEFAULT_THREADS) -> AsyncKeyManager:
        """The async face of this process's manager for ``spec`` (``spec.manager()``)."""
        return cls(spec.manager(), threads=threads)

    @property
    def manager(self) -> KeyManager:
        """The sync manager this facade shares its core with."""
        return self._sync

    # -- secrets -----------------------------------------------------------------------

    @overload
    async def get_secret(self, secret_name: str, *, version: int | None = ...) -> SecretValue: ...
    @overload
    async def get_secret(
        self, secret_name: str, default: _T, *, version: int | None = ...
    ) -> SecretValue | _T: ...

    async def get_secret(
        self, secret_name: str, default: Any = None, *, version: int | None = None
    ) -> Any:
        """Awaitable :meth:`KeyManager.get_secret`: the same lookup chain, errors and
        audit events. A fresh cache hit that needs nothing else is answered on the event
        loop, and so is a Vault read (module docstring); what may block (a login, a
        proxy, an audit hook to call) runs off it. A miss joins the read in flight for
        that name, whether a coroutine or a thread started it. A manager whose class
        overrides ``get_secret`` (or that had one set on it before this facade was
        made) has that method answer every call, on the pool, with the arguments given."""
        value = self._cached(secret_name, default, version, _HIT_MARGIN)
        if value is not MISS:
            return value
        if default is not None or self._overridden:  # a read of its own, on the pool
            # Only what the caller passed: an override may not take every argument.
            args = (secret_name,) if default is None else (secret_name, default)
            extra: dict[str, Any] = {} if version is None else {"version": version}
            running = _run(self._offload, self._sync.get_secret, *args, **extra)
            del default, args  # it may be a secret: only the pool job holds it now
            return await running
        return await self._shared_read(secret_name, version)

    async def _shared_read(self, name: str, version: int | None) -> Any:
        loop = asyncio.get_running_loop()
        flights = self._flights.get(loop)
        if flights is None:
            flights = self._flights.setdefault(loop, {})
        key = (name, version)
        flight = flights.get(key)
        joined = flight is not None and not flight.done()
        # A finished flight is one the pool thread has not dropped yet: never joined
        # (its answer is the past; a call now is a read, or a hit, of its own).
        if flight is None or flight.done():
            if self._on_loop:
                flight = self._read_on_loop(loop, flights, key)
            else:
                flight = self._read_on_pool(loop, flights, key)
                flight.add_done_callback(_retrieved)
        try:
            if joined:  # another's read: waited for no longer than a call may take
                value = await self._joined(flight, flights, key)
            elif isinstance(flight, Outcome):  # this task's own read: it steers it
                value = await _bridge.steer(flight)
            else:
                value = await asyncio.shield(flight)
        except Exception as exc:
            # Each waiter its own copy: one exception raised in many tasks would grow
            # one traceback across all of them.
            scrub(exc)
            raise copy.copy(exc) from None
        return caller_copy(value)

    async def _joined(
        self, flight: asyncio.Future[Any] | Outcome, flights: _Flights, key: tuple[str, int | None]
    ) -> Any:
        """``flight``'s value, within one call's budget. Past it, the read is presumed
        lost (its loop was interrupted mid-step) and dropped: the next caller reads."""
        # Each waiter on a future of its own: a cancelled one cancels nothing else.
        waiting = flight.waiter() if isinstance(flight, Outcome) else asyncio.shield(flight)
        try:
            return await asyncio.wait_for(waiting, self._core._wait())  # the core's own bound
        except asyncio.TimeoutError:
            if flights.get(key) is flight:
                flights.pop(key, None)
            where = self._core._locate(key[0])
        raise VaultUnavailableError(
            f"gave up waiting for another caller's read of {where} within this call's deadline"
        )

    def _read_on_loop(
        self, loop: asyncio.AbstractEventLoop, flights: _Flights, key: tuple[str, int | None]
    ) -> Outcome:
        """The sync read, bridged onto the loop (:mod:`._bridge`), started now."""
        name, version = key
        # The read past the cache check this call has just made.
        flight = _bridge.start(
            self._offload.pool, _read_scrubbed, self._sync._secrets, name, version
        )
        if not flight.done():  # else served without waiting (a fallback, or an error)
            flights[key] = flight
            # Before any waiter hears: a later call reads anew. (A partial, not a
            # closure: two objects fewer held across the read's wait.)
            flight.on_done = functools.partial(_drop_flight, flights, key, flight)
        return flight

    def _read_on_pool(
        self, loop: asyncio.AbstractEventLoop, flights: _Flights, key: tuple[str, int | None]
    ) -> asyncio.Future[Any]:
        """The sync read as a pool job (a backend that may block: not Vault's)."""
        name, version = key
        job = self._offload.pool().submit(self._sync.get_secret, name, None, version=version)
        flight: asyncio.Future[Any] | None = None

        def done(_: concurrent.futures.Future[Any]) -> None:
            # In the pool thread, so the flight goes even if its loop has closed
            # (a loop's callbacks never run then, and the flight would keep it).
            if flight is not None and flights.get(key) is flight:
                flights.pop(key, None)

        # Added before wrap_future's own callback, so it runs first: the flight is
        # gone before any waiter wakes to its answer.
        job.add_done_callback(done)
        flight = asyncio.wrap_future(job, loop=loop)
        flights[key] = flight
        if job.done():  # it ended before the flight existed: drop it here
            done(job)
        return flight

    set_secret = _awaitable(KeyManager.set_secret)
    list_secrets = _awaitable(KeyManager.list_secrets)
    delete_secret = _awaitable(KeyManager.delete_secret)

    # -- keys --------------------------------------------------------------------------

    @overload
    async def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        encoding: Literal["bytes"] = ...,
        *,
        version: int | None = ...,
    ) -> bytes: ...
    @overload
    async def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        *,
        encoding: Literal["hex", "base64", "base64url"],
        version: int | None = ...,
    ) -> str: ...
    @overload
    async def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        encoding: Encoding = ...,
        *,
        version: int | None = ...,
    ) -> bytes | str: ...

    @_scrubbed
    async def get_encryption_key(
        self,
        key_name: str = "master_key",
        key_bytes: int = 32,
        encoding: Encoding = "bytes",
        *,
        version: int | None = None,
    ) -> bytes | str:
        """Awaitable :meth:`KeyManager.get_encryption_key`, run off the event loop."""
        return await _run(
            self._offload,
            self._sync.get_encryption_key,
            key_name,
            key_bytes,
            encoding,
            version=version,
        )

    def derive_key(
        self,
        base_key: bytes,
        purpose: str,
        key_bytes: int = 32,
        *,
        salt: bytes | None = None,
    ) -> bytes:
        """:meth:`KeyManager.derive_key`, synchronous: microseconds of CPU, no I/O."""
        return self._sync.derive_key(base_key, purpose, key_bytes, salt=salt)

    generate_key = _awaitable(KeyManager.generate_key)
    rotate_key = _awaitable(KeyManager.rotate_key)
    rotate_if_older_than = _awaitable(KeyManager.rotate_if_older_than)
    key_versions = _awaitable(KeyManager.key_versions)
    get_key_ring = _awaitable(KeyManager.get_key_ring)

    # -- encryption (CPU-bound: off the loop) ------------------------------------------

    encrypt = _awaitable(KeyManager.encrypt)
    decrypt = _awaitable(KeyManager.decrypt)
    reencrypt = _awaitable(KeyManager.reencrypt)
    encrypt_file = _awaitable(KeyManager.encrypt_file)
    decrypt_file = _awaitable(KeyManager.decrypt_file)
    reencrypt_file = _awaitable(KeyManager.reencrypt_file)

    @_scrubbed
    async def encrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        transit_key: str | None = None,
        segment_size: int | None = None,
    ) -> int:
        """:meth:`KeyManager.encrypt_stream` between asyncio streams: ``reader`` has
        ``async read(n)`` (``asyncio.StreamReader``, aiofiles) and ``writer`` has
        ``write(b)`` with ``async drain()`` (``asyncio.StreamWriter``) or an ``async
        write(b)``. The format work runs off the loop, in bounded memory.

        Returns:
            The plaintext bytes encrypted.
        """
        return await self._bridged(
            lambda r, w: self._sync.encrypt_stream(
                r, w, key_name, aad=aad, transit_key=transit_key, segment_size=segment_size
            ),
            reader,
            writer,
        )

    @_scrubbed
    async def decrypt_stream(self, reader: Any, writer: Any, *, aad: bytes = b"") -> int:
        """:meth:`KeyManager.decrypt_stream` between asyncio streams (as
        :meth:`encrypt_stream` takes them). Plaintext is written as each segment
        authenticates, so decrypt into a temporary place for all-or-nothing."""
        return await self._bridged(
            lambda r, w: self._sync.decrypt_stream(r, w, aad=aad), reader, writer
        )

    async def _bridged(self, work: Callable[[Any, Any], int], reader: Any, writer: Any) -> int:
        loop = asyncio.get_running_loop()
        bridge = _StreamBridge(loop, reader, writer)
        job = loop.run_in_executor(self._offload.pool(), work, bridge, bridge)
        # Retrieved: a job whose caller was cancelled ends in an error nobody awaits.
        job.add_done_callback(_retrieved)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            bridge.cancel()  # the pool thread stops at its next read or write
            raise

    # -- Transit, status ---------------------------------------------------------------

    @property
    def transit(self) -> AsyncTransitKeys:
        """Awaitable :attr:`KeyManager.transit` (Vault's Transit engine)."""
        if self._transit is None:
            self._transit = AsyncTransitKeys(self._sync.transit, self._offload)
        return self._transit

    status = _awaitable(KeyManager.status)

    def stats(self) -> KeyManagerStats:
        """:meth:`KeyManager.stats` (shared with the sync manager), synchronous."""
        return self._sync.stats()

    def invalidate(self, name: str | None = None) -> int:
        """:meth:`KeyManager.invalidate`, synchronous: it only drops cache entries."""
        return self._sync.invalidate(name)

    async def aclose(self) -> None:
        """Stop this facade's threads and close this event loop's idle connections to
        Vault (the sync manager stays usable)."""
        self._offload.shutdown()
        if self._core.vault is not None:
            self._core.vault.close_loop_connections()

    async def __aenter__(self) -> AsyncKeyManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Async{self._sync!r}"

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(
            "AsyncKeyManager cannot be pickled (its manager holds a Vault token); send "
            "km.spec() and call AsyncKeyManager.from_spec(spec) in the worker"
        )


class AsyncTransitKeys:
    """Awaitable :class:`TransitKeys`: each call runs the sync one off the event loop."""

    def __init__(self, transit: TransitKeys, offload: _Offload) -> None:
        self._sync = transit
        self._offload = offload

    @property
    def mount(self) -> str:
        """The Transit engine's mount path."""
        return self._sync.mount

    ensure_key = _awaitable(TransitKeys.ensure_key)
    key_info = _awaitable(TransitKeys.key_info)
    rotate = _awaitable(TransitKeys.rotate)
    set_min_decryption_version = _awaitable(TransitKeys.set_min_decryption_version)
    encrypt = _awaitable(TransitKeys.encrypt)
    decrypt = _awaitable(TransitKeys.decrypt)
    rewrap = _awaitable(TransitKeys.rewrap)
    generate_data_key = _awaitable(TransitKeys.generate_data_key)
    encrypt_batch = _awaitable(TransitKeys.encrypt_batch)
    decrypt_batch = _awaitable(TransitKeys.decrypt_batch)

    def __repr__(self) -> str:
        return f"AsyncTransitKeys(mount={self.mount!r})"


class _StreamBridge:
    """A blocking ``read(n)``/``write(b)`` for a pool thread, over an asyncio reader and
    writer on ``loop``: each call hands the coroutine side its work and waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: Any, writer: Any) -> None:
        self._loop = loop
        self._reader = reader
        self._writer = writer
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def _on_loop(self, work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        # The coroutine is made only once it will run: one made and dropped (the caller
        # cancelled, the loop closed) would be "never awaited".
        if self._cancelled.is_set():
            raise asyncio.CancelledError("the awaiting task was cancelled")
        coroutine = work()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except BaseException:
            coroutine.close()
            raise
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._cancelled.is_set():
                    future.cancel()
                    raise asyncio.CancelledError("the awaiting task was cancelled") from None

    def read(self, size: int = -1) -> bytes:
        wanted = _CHUNK if size is None or size < 0 else size
        data = self._on_loop(functools.partial(self._reader_read, wanted))
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("the async reader's read(n) must return bytes")
        return bytes(data)

    async def _reader_read(self, size: int) -> Any:
        return await self._reader.read(size)

    def write(self, data: bytes) -> int:
        self._on_loop(functools.partial(self._writer_write, bytes(data)))
        return len(data)

    async def _writer_write(self, data: bytes) -> None:
        written = self._writer.write(data)
        if inspect.isawaitable(written):
            await written
        drain = getattr(self._writer, "drain", None)
        if drain is not None:
            await drain()


def _never_cached(name: str, default: Any, version: int | None, margin: float = 0.0) -> Any:
    """The hit check of a facade whose manager overrides ``get_secret``: every call is
    that method's."""
    return MISS


def _retrieved(job: asyncio.Future[Any]) -> None:
    """Take a finished job's exception: one nobody awaits any more is then no error."""
    if not job.cancelled():
        job.exception()


def _drop_flight(flights: _Flights, key: tuple[str, int | None], flight: Outcome) -> None:
    """``flight`` is over: the next call for ``key`` reads anew."""
    if flights.get(key) is flight:
        flights.pop(key, None)


def _read_scrubbed(secrets: Secrets, name: str, version: int | None) -> Any:
    """``secrets.read`` behind the sync face's boundary: whatever leaves it (a
    BaseException too) carries no library frame's locals."""
    try:
        return secrets.read(name, None, version)
    except BaseException as exc:
        scrub(exc)
        raise
