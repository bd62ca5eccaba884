"""AsyncKeyManager over an in-memory source: what the asyncio facade promises that does
not need a server (the server-backed properties are in tests/integration).

A gated source (reads block on a ``threading.Event``) makes every interleaving
deterministic: a coroutine can be cancelled before its job is queued, while it is queued
behind a busy pool, while it runs, and after it finished but before the waiter resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from secureml.key_management import (
    AccessEvent,
    AsyncKeyManager,
    KeyManager,
    KeyManagerSpec,
    PermissionDeniedError,
    VaultUnavailableError,
)
from secureml.key_management.backends.base import SecretValue
from tests.support.memory_backend import MemoryVersions

POOL_PREFIX = "secureml-async"


class Gated:
    """A primary source whose reads block while ``gate`` is clear, and count."""

    source = "gated"

    def __init__(self, values: dict[str, SecretValue] | None = None) -> None:
        self.values: dict[str, SecretValue] = dict(values or {})
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.writing = threading.Event()
        self.reads = 0
        self.failure: Exception | None = None
        self._lock = threading.Lock()

    def locate(self, name: str) -> str:
        return f"gated:{name}"

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        with self._lock:
            self.reads += 1
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.failure is not None:
            raise self.failure
        return self.values.get(name)

    def put(self, name: str, value: SecretValue) -> None:
        self.writing.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.failure is not None:
            raise self.failure
        self.values[name] = value

    def delete(self, name: str) -> None:
        self.values.pop(name, None)


def manager(backend: Any, **kwargs: Any) -> KeyManager:
    return KeyManager(backend=backend, use_env_fallback=False, **kwargs)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(POOL_PREFIX)]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``condition()`` holds (a few ms at a time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.001)


@pytest.fixture(autouse=True)
def _no_pool_threads_leak() -> Iterator[None]:
    """Every test closes its facades: no pool thread outlives the test for long."""
    yield
    deadline = time.monotonic() + 5
    while pool_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool_threads() == []


# -- construction, hygiene -----------------------------------------------------------


def test_construction_takes_a_manager_or_its_arguments_never_both() -> None:
    km = manager(Gated())
    assert AsyncKeyManager(km).manager is km
    own = AsyncKeyManager(backend=Gated(), use_env_fallback=False)
    assert isinstance(own.manager, KeyManager)
    assert own.manager is not km
    with pytest.raises(TypeError, match="not both"):
        AsyncKeyManager(km, cache_ttl=1)
    with pytest.raises(TypeError, match="takes a KeyManager"):
        AsyncKeyManager(object())  # type: ignore[arg-type]
    for threads in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="threads"):
            AsyncKeyManager(km, threads=threads)  # type: ignore[arg-type]


def test_pickling_is_refused_with_a_pointer_to_spec() -> None:
    akm = AsyncKeyManager(manager(Gated()))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match=r"spec\(\)") as caught:
            pickle.dumps(akm, protocol=protocol)
        assert "from_spec" in str(caught.value)


def test_from_spec_uses_this_processes_manager_for_the_spec() -> None:
    spec = KeyManagerSpec(use_env_fallback=True)
    first = AsyncKeyManager.from_spec(spec)
    second = AsyncKeyManager.from_spec(spec, threads=2)
    assert first.manager is spec.manager()
    assert second.manager is first.manager  # one manager (one login) per spec and process
    assert second._offload._threads == 2


def test_sync_helpers_stay_sync() -> None:
    km = manager(Gated({"x": "v"}))
    akm = AsyncKeyManager(km)
    km.get_secret("x")
    assert akm.stats() == km.stats()
    assert akm.invalidate("x") == 1
    assert akm.derive_key(b"k" * 32, "p") == km.derive_key(b"k" * 32, "p")
    assert akm._offload._pool is None  # none of these took a thread


# -- the hot path ------------------------------------------------------------------------


def test_a_fresh_hit_is_served_on_the_loop_without_a_thread() -> None:
    backend = Gated({"x": "v"})
    km = manager(backend)
    km.get_secret("x")  # warm, synchronously
    akm = AsyncKeyManager(km)
    before = km.stats()

    async def main() -> list[object]:
        return await asyncio.gather(*(akm.get_secret("x") for _ in range(1000)))

    assert asyncio.run(main()) == ["v"] * 1000
    assert akm._offload._pool is None  # the pool was never even made
    assert pool_threads() == []
    after = km.stats()
    assert after.hits - before.hits == 1000
    assert after.backend_reads == before.backend_reads == 1


def test_a_hit_about_to_expire_goes_through_the_pool() -> None:
    backend = Gated({"x": "v"})
    km = manager(backend, cache_ttl=0.2)  # always inside the on-loop margin
    km.get_secret("x")
    akm = AsyncKeyManager(km)

    async def main() -> object:
        async with akm:
            return await akm.get_secret("x")

    assert asyncio.run(main()) == "v"
    assert akm._offload._pool is None  # made, then closed by aclose()
    assert backend.reads == 1  # still a cache hit, only served off the loop


# -- 1,000 waiters on a cold name --------------------------------------------------------


def run_cold(akm: AsyncKeyManager, backend: Gated, name: str, count: int) -> list[Any]:
    """``count`` coroutines ask for ``name`` while the source holds its one read; the
    read is let go once all of them are waiting."""

    async def main() -> list[Any]:
        backend.gate.clear()
        tasks = [asyncio.create_task(akm.get_secret(name)) for _ in range(count)]
        await until(backend.entered.is_set)
        await asyncio.sleep(0.01)  # every task has run up to its await
        assert not any(task.done() for task in tasks)
        backend.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert akm._flights[asyncio.get_running_loop()] == {}
        await akm.aclose()
        return results

    return asyncio.run(main())


def test_a_dict_secret_reaches_1000_waiters_as_1000_distinct_copies() -> None:
    value = {"user": "svc", "password": "p4ss", "nested": {"scopes": ["read"]}}
    backend = Gated({"creds": value})
    km = manager(backend)
    akm = AsyncKeyManager(km, threads=4)
    results = run_cold(akm, backend, "creds", 1000)
    assert backend.reads == 1
    assert km.stats().backend_reads == 1
    assert all(result == value for result in results)
    assert len({id(r) for r in results}) == 1000
    assert len({id(r["nested"]) for r in results}) == 1000
    assert len({id(r["nested"]["scopes"]) for r in results}) == 1000
    results[0]["password"] = "changed"
    results[0]["nested"]["scopes"].append("write")
    assert all(r == value for r in results[1:])
    assert km.get_secret("creds") == value  # nor the cached one


@pytest.mark.parametrize(
    "failure",
    [
        PermissionDeniedError("permission denied reading gated:creds"),
        VaultUnavailableError("gated source is down"),  # chained by the lookup chain
    ],
    ids=["denied", "outage"],
)
def test_an_error_reaches_1000_waiters_as_1000_distinct_unchained_exceptions(
    failure: Exception,
) -> None:
    backend = Gated({"creds": "v"})
    backend.failure = failure
    akm = AsyncKeyManager(manager(backend), threads=4)
    errors = run_cold(akm, backend, "creds", 1000)
    assert backend.reads == 1
    assert all(type(e) is type(failure) for e in errors)
    assert len({id(e) for e in errors}) == 1000
    assert all(e is not failure for e in errors)
    for error in (errors[0], errors[-1]):
        assert error.__cause__ is None
        assert error.__suppress_context__
        assert "\n" not in str(error)
        assert str(error)
        rendered = "".join(traceback.format_exception(error))
        assert "direct cause" not in rendered
        assert "During handling" not in rendered
    # No waiter's traceback carries another waiter's frames.
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in errors}
    # The first waiter's and a joiner's differ by the joiner's bounded wait (two frames);
    # the thousandth carries no more than the second.
    assert max(depths) - min(depths) <= 2, depths
    assert max(depths) < 40, depths  # the read's own frames, not 1,000 waiters' worth


# -- cancellation at every await point ---------------------------------------------------

POINTS = ["before-it-ran", "queued", "running", "finished-not-resumed", "all-waiters"]


@pytest.mark.parametrize("point", POINTS)
def test_a_cancelled_waiter_never_poisons_the_cache_or_orphans_the_load(point: str) -> None:
    backend = Gated({"x": "v"})
    km = manager(backend)
    akm = AsyncKeyManager(km, threads=1)
    blocker_gate = threading.Event()

    async def main() -> None:  # noqa: PLR0912 - one branch per cancellation point
        loop = asyncio.get_running_loop()
        backend.gate.clear()
        if point == "queued":  # the only pool thread is busy: the read waits in the queue
            busy = loop.run_in_executor(akm._offload.pool(), blocker_gate.wait, 10)
        victim = asyncio.create_task(akm.get_secret("x"))
        if point == "before-it-ran":
            victim.cancel()
        others = [asyncio.create_task(akm.get_secret("x")) for _ in range(50)]
        if point == "all-waiters":
            others[0].cancel()  # the first is the one that started the job
        await asyncio.sleep(0.01)
        flights = akm._flights[loop]
        if point == "before-it-ran":
            assert victim.cancelled()
        else:
            assert list(flights) == [("x", None)]
            flight = flights["x", None]
        if point == "queued":
            assert not backend.entered.is_set()
            victim.cancel()
            await asyncio.sleep(0.01)
            blocker_gate.set()
            await busy
            await until(backend.entered.is_set)
        else:
            await until(backend.entered.is_set)
        if point == "running":
            victim.cancel()
            await asyncio.sleep(0.01)
        if point == "all-waiters":
            victim.cancel()
            for task in others:
                task.cancel()
        backend.gate.set()
        if point == "finished-not-resumed":
            while not flight.done():
                await asyncio.sleep(0)  # the waiters' wake-ups are scheduled, not run
            assert not victim.done()
            victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        if point == "all-waiters":
            assert all(task.cancelled() for task in others)
            await until(lambda: not flights)  # the job finished with nobody waiting
        else:
            assert await asyncio.gather(*others) == ["v"] * 50
        assert flights == {}
        # The value was cached: the next caller is a hit on the loop, with no new read.
        assert await akm.get_secret("x") == "v"
        await akm.aclose()

    asyncio.run(main())
    assert backend.reads == 1
    stats = km.stats()
    assert stats.backend_reads == 1
    assert km.get_secret("x") == "v"
    assert backend.reads == 1


def test_a_timed_out_caller_leaves_the_read_to_finish_and_be_cached() -> None:
    backend = Gated({"x": "v"})
    km = manager(backend)
    akm = AsyncKeyManager(km)

    async def main() -> None:
        backend.gate.clear()
        patient = asyncio.create_task(akm.get_secret("x"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(akm.get_secret("x"), 0.05)
        backend.gate.set()
        assert await patient == "v"
        assert await asyncio.wait_for(akm.get_secret("x"), 0.05) == "v"
        await akm.aclose()

    asyncio.run(main())
    assert backend.reads == 1


def test_a_cancelled_pool_call_runs_to_its_end_once_started_and_never_if_queued() -> None:
    backend = Gated()
    km = manager(backend)
    akm = AsyncKeyManager(km, threads=1)
    busy_gate = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Queued behind a busy pool, then cancelled: the write never starts.
        busy = loop.run_in_executor(akm._offload.pool(), busy_gate.wait, 10)
        queued = asyncio.create_task(akm.set_secret("queued", "never"))
        await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        busy_gate.set()
        await busy
        # Started, then cancelled: the write goes on to its end, unawaited.
        backend.gate.clear()
        started = asyncio.create_task(akm.set_secret("started", "written"))
        await until(backend.writing.is_set)
        started.cancel()
        with pytest.raises(asyncio.CancelledError):
            await started
        backend.gate.set()
        await until(lambda: "started" in backend.values)
        assert "queued" not in backend.values
        assert await akm.get_secret("started") == "written"
        await akm.aclose()

    asyncio.run(main())


# -- streams -----------------------------------------------------------------------------


class EndlessReader:
    """An asyncio-style reader that never ends, a little at a time."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, size: int) -> bytes:
        self.reads += 1
        await asyncio.sleep(0.001)
        return b"p" * min(size, 64 * 1024)


class BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        await asyncio.sleep(0)
        return chunk


class Sink:
    """A writer with ``write`` and ``async drain`` (as ``asyncio.StreamWriter``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(0)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def stream_threads() -> list[str]:
    """Names of pool threads now running a stream job."""
    frames = sys._current_frames()
    busy = []
    for thread in pool_threads():
        frame = frames.get(thread.ident or -1)
        stack = traceback.extract_stack(frame) if frame is not None else []
        if any(f.name in ("encrypt_stream", "decrypt_stream", "_on_loop") for f in stack):
            busy.append(thread.name)
    return busy


def test_a_stream_cancelled_midway_stops_its_thread_and_the_next_call_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryVersions()
    km = manager(store)
    km.generate_key("stream-key")
    akm = AsyncKeyManager(km, threads=1)

    async def main() -> None:
        reader, sink = EndlessReader(), Sink()
        job = asyncio.create_task(akm.encrypt_stream(reader, sink, "stream-key"))
        await until(lambda: len(sink.parts) >= 2)  # a header and a segment out
        started = time.monotonic()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await until(lambda: stream_threads() == [], timeout=3)
        assert time.monotonic() - started < 2
        reads = reader.reads
        await asyncio.sleep(0.05)
        assert reader.reads == reads  # nobody reads the stream any more
        # The one pool thread is free: a whole stream goes through it.
        plaintext = os.urandom(3 * 1024 * 1024 + 17)
        sealed = Sink()
        assert await akm.encrypt_stream(BytesReader(plaintext), sealed, "stream-key") == len(
            plaintext
        )
        opened = Sink()
        assert await akm.decrypt_stream(BytesReader(sealed.data), opened) == len(plaintext)
        assert opened.data == plaintext
        assert km.decrypt(await akm.encrypt(b"hello", "stream-key")) == b"hello"
        await akm.aclose()

    with caplog.at_level(logging.ERROR, "asyncio"):
        asyncio.run(main())
        gc.collect()  # a dropped job with an unretrieved error is reported when collected
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


# -- the same call, the same audit trail -------------------------------------------------


def audited_calls_sync(km: KeyManager) -> None:
    km.generate_key("k")
    km.set_secret("s", "v")
    km.get_secret("s")  # a miss
    km.get_secret("s")  # a hit
    km.get_secret("absent", default="d")
    with contextlib.suppress(Exception):
        km.get_secret("absent")
    km.decrypt(km.encrypt(b"data", "k"))
    km.get_encryption_key("k")


async def audited_calls_async(akm: AsyncKeyManager) -> None:
    await akm.generate_key("k")
    await akm.set_secret("s", "v")
    await akm.get_secret("s")
    await akm.get_secret("s")
    await akm.get_secret("absent", default="d")
    with contextlib.suppress(Exception):
        await akm.get_secret("absent")
    await akm.decrypt(await akm.encrypt(b"data", "k"))
    await akm.get_encryption_key("k")
    await akm.aclose()


def test_an_async_call_emits_the_audit_events_of_the_sync_call() -> None:
    def without_duration(events: list[AccessEvent]) -> list[tuple[object, ...]]:
        return [(e.operation, e.name, e.source, e.version, e.outcome, e.error) for e in events]

    sync_events: list[AccessEvent] = []
    async_events: list[AccessEvent] = []
    audited_calls_sync(manager(MemoryVersions(), audit_hook=sync_events.append))
    akm = AsyncKeyManager(manager(MemoryVersions(), audit_hook=async_events.append))
    asyncio.run(audited_calls_async(akm))
    assert len(sync_events) >= 8
    assert without_duration(async_events) == without_duration(sync_events)
    outcomes = [e.outcome for e in async_events if e.operation == "get_secret"]
    assert "cached" in outcomes
    assert "error" in outcomes


# -- fork --------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_a_pool_of_its_own() -> None:
    backend = Gated({"x": "parent", "y": "child"})
    km = manager(backend)
    akm = AsyncKeyManager(km, threads=2)
    assert asyncio.run(akm.get_secret("x")) == "parent"
    parent_pool = akm._offload._pool
    assert parent_pool is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        code = 1
        try:
            os.close(read_end)

            async def child() -> str:
                return str(await akm.get_secret("y"))  # a miss: needs a pool thread

            value = asyncio.run(asyncio.wait_for(child(), 5))
            fresh = akm._offload._pool is not None and akm._offload._pool is not parent_pool
            os.write(write_end, f"{value}|{fresh}|{len(pool_threads())}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    value, fresh, threads = report.split("|")
    assert value == "child"
    assert fresh == "True"
    assert int(threads) >= 1
    assert akm._offload._pool is parent_pool  # the parent's own pool is untouched
    assert asyncio.run(akm.get_secret("y")) == "child"
    asyncio.run(akm.aclose())


class _Refusing(MemoryVersions):
    """A source that refuses every read, as a Vault policy would."""

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        from secureml.key_management import PermissionDeniedError

        raise PermissionDeniedError(f"permission denied reading {name}")


def test_a_default_given_to_a_failing_read_stays_out_of_every_frame() -> None:
    from tests.support.frames import rendered_locals

    default = "default-that-is-a-secret-7f3a"
    akm = AsyncKeyManager(KeyManager(backend=_Refusing(), use_env_fallback=False))

    async def main() -> BaseException:
        try:
            await akm.get_secret("x", default)
        except Exception as exc:
            return exc
        raise AssertionError("the read was refused")

    error = asyncio.run(main())
    akm._offload.shutdown()
    assert all(default not in value for _, _, value in rendered_locals(error))


def test_with_an_audit_hook_even_hits_run_off_the_loop() -> None:
    threads: list[str] = []
    store = MemoryVersions()
    km = KeyManager(
        backend=store,
        use_env_fallback=False,
        audit_hook=lambda event: threads.append(threading.current_thread().name),
    )
    km.set_secret("a", "b")
    km.get_secret("a")  # cached now
    threads.clear()
    akm = AsyncKeyManager(km)

    async def main() -> None:
        assert await akm.get_secret("a") == "b"

    asyncio.run(main())
    akm._offload.shutdown()
    assert threads
    assert all(name.startswith("secureml-async") for name in threads)


class _Slow(MemoryVersions):
    """A source whose reads take a while."""

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        time.sleep(0.3)
        return super().get(name, version)


def test_a_read_outliving_its_event_loop_keeps_neither_flight_nor_loop() -> None:
    store = _Slow()
    store.put("a", "b")
    akm = AsyncKeyManager(KeyManager(backend=store, use_env_fallback=False))

    async def main() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(akm.get_secret("a"), 0.05)

    asyncio.run(main())  # the loop closes with the read still running
    deadline = time.monotonic() + 5
    while any(akm._flights.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(akm._flights.values())
    gc.collect()
    assert len(akm._flights) == 0  # the closed loop is not kept alive
    akm._offload.shutdown()
