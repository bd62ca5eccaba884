"""The async face's own wire (backends/_vault_aio.py), under the sync path's rules.

``AsyncKeyManager`` runs the sync read path on the event loop and sends its requests over
asyncio (``_bridge``). These are the read scenarios of test_retries, test_tls and
test_redirects again, through ``await akm.get_secret``, against the real server behind the
fault proxy, and answers no Vault would give from a hostile peer. Each read asserts that
it used no thread: it ran on the loop, over the async wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import threading
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    AsyncKeyManager,
    KeyManagementError,
    KeyManager,
    SecretNotFoundError,
    SecurityWarning,
    VaultError,
    VaultUnavailableError,
    _bridge,
)
from secureml.key_management._auth import Login
from secureml.key_management.backends import _vault_aio, _vault_http
from secureml.key_management.backends._vault_session import _State
from secureml.key_management.backends._vault_transport import BACKOFF_CAP_SECONDS
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as running:
        yield running


def manager_via(origin: str, token: str, vault_path: str = "secureml", **kwargs: Any) -> KeyManager:
    """A manager already holding its token (so no login, which runs on a thread, comes
    before the read under test)."""
    options: dict[str, Any] = {"timeout": 2, "vault_kv_version": 2, "cache_ttl": 0}
    options.update(kwargs)
    manager = KeyManager(
        vault_url=origin,
        vault_token=token,
        vault_path=vault_path,
        use_env_fallback=options.pop("use_env_fallback", False),
        **options,
    )
    vault = manager._core.vault
    assert vault is not None
    vault.session._state = _State(Login(token, None, False, "service"), 1, None, None, False)
    return manager


def on_the_loop(km: KeyManager, *names: str) -> list[Any]:
    """``await akm.get_secret(name)`` for each name, concurrently; every outcome (value or
    exception). Asserts the reads used no thread: the facade's pool was never made."""

    async def main() -> list[Any]:
        akm = AsyncKeyManager(km)
        assert akm._on_loop
        try:
            return await asyncio.gather(*(akm.get_secret(n) for n in names), return_exceptions=True)
        finally:
            assert akm._offload._pool is None, "a read went to a thread"
            await akm.aclose()

    return asyncio.run(main())


def read_one(km: KeyManager, name: str = "x") -> Any:
    (outcome,) = on_the_loop(km, name)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def read_sync(km: KeyManager, name: str = "x") -> Any:
    return km.get_secret(name)


#: Both wires parse answers with one parser (backends/_http11.py): hostile answers are
#: read through each, the sync manager's blocking one and the async one.
READERS = {"sync": read_sync, "async": read_one}


@pytest.fixture
def warm(proxy: FaultProxy, bao_server: DevServer, vault_path: str) -> KeyManager:
    """Logged in, holding secret ``x``: faults hit only the reads."""
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path)
    manager.set_secret("x", "1")
    assert manager.get_secret("x") == "1"
    proxy.hits.clear()
    return manager


# -- the transport's rules, on the async wire ------------------------------------------


@pytest.mark.parametrize(
    ("faults", "hits"),
    [
        ([Fault.status(503), Fault.status(502)], 3),
        ([Fault.status(412)], 2),
        ([Fault.drop()], 2),
        ([Fault.cut()], 2),
    ],
    ids=["5xx-retried", "412-retried", "dropped-read-retried", "cut-read-retried"],
)
def test_what_the_sync_path_retries_the_async_path_retries(
    warm: KeyManager, proxy: FaultProxy, faults: list[Fault], hits: int
) -> None:
    proxy.inject(*faults)
    assert read_one(warm) == "1"
    assert len(proxy.hits) == hits


def test_429_honours_retry_after(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(429, retry_after=1))
    started = time.monotonic()
    assert read_one(warm) == "1"
    assert time.monotonic() - started >= 1.0
    assert len(proxy.hits) == 2


@pytest.mark.parametrize("status", [400, 404, 405, 501])
def test_other_4xx_and_501_are_not_retried(
    warm: KeyManager, proxy: FaultProxy, status: int
) -> None:
    proxy.inject(Fault.status(status))
    expected = SecretNotFoundError if status == 404 else VaultError
    with pytest.raises(expected):
        read_one(warm)
    assert len(proxy.hits) == 1


def test_gives_up_after_retries(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(*[Fault.status(503)] * 5)
    with pytest.raises(VaultUnavailableError, match="503"):
        read_one(warm)
    assert len(proxy.hits) == 3


def test_an_answer_that_is_not_json_is_an_error_not_a_success(
    warm: KeyManager, proxy: FaultProxy
) -> None:
    proxy.inject(Fault.replace(200, b"<html>Please log in to the corporate proxy</html>"))
    with pytest.raises(VaultError, match="not Vault's JSON") as caught:
        read_one(warm)
    assert "corporate proxy" not in str(caught.value)
    assert not isinstance(caught.value, VaultUnavailableError)


def test_a_dripping_answer_is_cut_off_at_the_deadline(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path, timeout=0.5, retries=0)
    manager.set_secret("x", "1")
    proxy.inject(Fault.drip(0.1))
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError):
        read_one(manager)
    assert time.monotonic() - started < 1.0


def test_a_silent_server_costs_at_most_timeout_times_attempts_plus_backoff(
    black_hole: str,
) -> None:
    timeout, retries = 0.5, 2
    manager = manager_via(black_hole, "s.t0ken", timeout=timeout)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        read_one(manager)
    elapsed = time.monotonic() - started
    assert timeout * (retries + 1) <= elapsed < timeout * (retries + 1) + BACKOFF_CAP_SECONDS * 2


def test_nothing_listening_fails_fast_and_says_where() -> None:
    with DevServer() as server:
        address, token = server.address, server.root_token
    manager = manager_via(address, token)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        read_one(manager)
    assert time.monotonic() - started < BACKOFF_CAP_SECONDS * 2 + 0.5


def test_the_env_fallback_answers_through_an_outage(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_X", "from-env")
    manager = manager_via(black_hole, "s.t0ken", timeout=0.3, retries=0, use_env_fallback=True)
    assert read_one(manager) == "from-env"


# -- TLS -------------------------------------------------------------------------------


def test_a_ca_bundle_verifies_the_server(tls_server: DevServer) -> None:
    manager = manager_via(
        tls_server.address, tls_server.root_token, vault_ca_cert=str(tls_server.ca_cert)
    )
    assert on_the_loop(manager, "tls_probe", "tls_probe", "nope")[:2] == ["over-tls"] * 2


def test_the_tls_context_is_built_once_off_the_loop_not_per_loop(
    tls_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a CA bundle (certifi's: ~28 ms) on the loop stalled it, on every new loop
    (a service calling asyncio.run per job). Built with the facade, then shared."""
    manager = manager_via(
        tls_server.address, tls_server.root_token, vault_ca_cert=str(tls_server.ca_cert)
    )
    akm = AsyncKeyManager(manager)  # builds the pool, and its TLS context, here
    built: list[object] = []
    real = _vault_http.tls_context
    monkeypatch.setattr(_vault_http, "tls_context", lambda o: built.append(o) or real(o))

    async def read() -> tuple[object, object]:
        value = await akm.get_secret("tls_probe")
        return value, manager._core.vault._pool.wire()._tls  # type: ignore[union-attr]

    outcomes = [asyncio.run(read()) for _ in range(3)]
    assert [value for value, _ in outcomes] == ["over-tls"] * 3
    assert built == []
    assert len({id(tls) for _, tls in outcomes}) == 1


def test_a_ca_bundle_that_does_not_load_fails_alike_on_both_faces(
    tls_server: DevServer, tmp_path: Path
) -> None:
    """Not when the facade is made (the sync manager never built a context at all), and
    not as a raw ssl.SSLError: the read fails as the sync wire's connect does."""
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")

    def manager() -> KeyManager:
        return manager_via(tls_server.address, tls_server.root_token, vault_ca_cert=str(garbage))

    akm = AsyncKeyManager(manager())  # made without complaint
    with pytest.raises(KeyManagementError) as on_loop:
        asyncio.run(akm.get_secret("tls_probe"))
    with pytest.raises(KeyManagementError) as in_thread:
        manager().get_secret("tls_probe")
    assert type(on_loop.value) is type(in_thread.value)
    assert "\n" not in str(on_loop.value)


def test_an_unverified_certificate_is_an_error_not_a_fallback(
    tls_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_TLS_PROBE", "from-env")
    manager = manager_via(tls_server.address, tls_server.root_token, use_env_fallback=True)
    with pytest.raises(VaultError, match="TLS verification") as caught:
        read_one(manager, "tls_probe")
    assert not isinstance(caught.value, VaultUnavailableError)
    assert tls_server.root_token not in str(caught.value)


def test_verification_turned_off_is_honoured(tls_server: DevServer) -> None:
    with pytest.warns(SecurityWarning):
        manager = manager_via(tls_server.address, tls_server.root_token, verify=False)
    assert read_one(manager, "tls_probe") == "over-tls"


# -- answers no Vault gives ------------------------------------------------------------

OK_BODY = b'{"data": {"data": {"value": "v"}, "metadata": {"version": 1}}}'


def _ok(body: bytes = OK_BODY) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
HOSTILE: dict[str, bytes] = {
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n{}",
    "header-name-with-space": b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\n{}",
    # A bare LF or CR is no line break (nor part of a value): read as one, it would let a
    # value smuggle in a framing header of its own.
    "bare-lf-in-a-header": b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\n" + OK_BODY,
    "bare-cr-in-a-header": b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 2\r\n\r\n" + OK_BODY,
    # A run of blanks in a framing value: parsed in linear time, never stalling the loop.
    "blank-run-in-a-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1" + b" " * 60000 + b"x\r\n\r\n",
    "folded-header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n" + OK_BODY,
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "listed-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
    "huge-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "gzip-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    "bad-chunk-size": CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n",
    "chunk-without-crlf": CHUNKED + b"2\r\n{}XX0\r\n\r\n",
    "head-over-64k": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\n",
    "endless-100-continue": b"HTTP/1.1 100 Continue\r\n\r\n" * 20000,
    "bytes-after-the-body": _ok() + b"HTTP/1.1 200 OK\r\n",
    "closed-mid-body": b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"data"',
    "closed-before-answer": b"",
}


class RawServer:
    """A loopback server that answers every request with the same bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.origin = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)
                self.requests += 1
                conn.sendall(self.answer)
            except OSError:
                pass


@pytest.mark.parametrize("face", sorted(READERS))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_answer_is_a_clean_error(
    case: str, face: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One line naming the problem; nothing else logged by asyncio; the loop never stalls;
    the connection is never reused."""
    with RawServer(HOSTILE[case]) as server:
        manager = manager_via(server.origin, "s.hostile-token", retries=1, timeout=1)
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            started = time.monotonic()
            with pytest.raises((VaultUnavailableError, VaultError, SecretNotFoundError)) as caught:
                READERS[face](manager)
            assert time.monotonic() - started < 1 * 2 + BACKOFF_CAP_SECONDS + 0.5
        assert server.requests == 2, "a retried read on a fresh connection"
    message = str(caught.value)
    assert "\n" not in message
    assert "s.hostile-token" not in message + repr(caught.value)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


class EchoServer(RawServer):
    """Refuses every request with Vault's error JSON quoting the request whole, as a
    debugging proxy or a chatty firewall might."""

    def __init__(self, status: bytes, pad: int = 0) -> None:
        super().__init__(b"")
        self.status = status
        self.pad = pad  # characters of padding in the error: a large refusal

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                request = conn.recv(65536).decode("latin-1")
                self.requests += 1
                body = json.dumps({"errors": [f"bad request: {request}" + " " * self.pad]})
                body = body.encode()
                conn.sendall(
                    b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (self.status, len(body), body)
                )
            except OSError:
                pass


@pytest.mark.parametrize("face", sorted(READERS))
@pytest.mark.parametrize("status", [b"400 Bad Request", b"500 Internal Server Error"])
@pytest.mark.parametrize("pad", [0, 2 * _vault_http.DECODE_OFF_LOOP_BYTES], ids=["small", "large"])
def test_a_token_echoed_in_a_refusal_never_reaches_the_message(
    face: str, status: bytes, pad: int
) -> None:
    """(A large one too: decoded off the loop, it must still be cleared first.)"""
    token = f"s.echoed-{uuid.uuid4().hex}"
    with EchoServer(status, pad) as server:
        manager = manager_via(server.origin, token, retries=0, timeout=1)
        with pytest.raises(VaultError) as caught:
            READERS[face](manager)
    assert "bad request: GET /v1/" in str(caught.value)  # the echo was read: and blanked
    assert token not in str(caught.value) + repr(caught.value)
    assert token[2:] not in str(caught.value)


async def _read_once(km: KeyManager) -> Any:
    async with AsyncKeyManager(km) as akm:
        return await akm.get_secret("x")


@pytest.mark.parametrize("face", ["sync", "async"])
def test_login_credentials_echoed_in_a_refusal_never_reach_the_message(face: str) -> None:
    """(A login runs on a thread under asyncio too: never on the loop.)"""
    secret_id = f"secret-id-{uuid.uuid4().hex}"
    with EchoServer(b"400 Bad Request") as server:
        manager = KeyManager(
            vault_url=server.origin,
            vault_auth=AppRoleAuth(role_id="role-echo", secret_id=secret_id),
            vault_kv_version=2,
            use_env_fallback=False,
            retries=0,
            timeout=1,
        )
        read = manager.get_secret if face == "sync" else lambda n: asyncio.run(_read_once(manager))
        with pytest.raises(KeyManagementError) as caught:
            read("x")
    assert "role-echo" not in str(caught.value)  # the echo was blanked, role and all
    assert secret_id not in str(caught.value) + repr(caught.value)


@pytest.mark.parametrize("face", sorted(READERS))
@pytest.mark.parametrize(
    "body",
    [b'{"data": null}', b'{"data": {"value": "v"}}', b'{"data": {"metadata": {"version": 1}}}'],
    ids=["no-data", "kv1-shaped", "metadata-only"],
)
def test_a_200_that_is_no_kv2_answer_is_a_vault_error(face: str, body: bytes) -> None:
    with (
        RawServer(_ok(body)) as server,
        pytest.raises(VaultError, match="not a KV answer") as caught,
    ):
        READERS[face](manager_via(server.origin, "s.t", retries=0))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("face", sorted(READERS))
def test_chunked_and_close_framed_answers_are_read(face: str) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (OK_BODY[:10], OK_BODY[10:]))
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    # Framing headers in any case, their values padded: found all the same.
    padded = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: \t%d \r\nX-B:\r\n\r\n" % len(OK_BODY)
    for answer in (chunked, b"HTTP/1.0 200 OK\r\n\r\n" + OK_BODY, padded + OK_BODY):
        with RawServer(answer) as server:
            assert READERS[face](manager_via(server.origin, "s.t", retries=0)) == "v"


# -- connections ---------------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections the async wire opens from now on."""
    made: list[object] = []
    real_open = _vault_aio.Wire._open

    async def counted(self: _vault_aio.Wire, *args: Any) -> Any:
        conn = await real_open(self, *args)
        made.append(conn)
        return conn

    monkeypatch.setattr(_vault_aio.Wire, "_open", counted)
    return made


def test_reads_past_the_connection_limit_wait_for_one_and_all_succeed(
    proxy: FaultProxy,
    bao_server: DevServer,
    vault_path: str,
    monkeypatch: pytest.MonkeyPatch,
    opened: list[object],
) -> None:
    monkeypatch.setattr(_vault_aio, "CONNECTIONS_PER_ORIGIN", 3)
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path)
    for i in range(60):
        manager.set_secret(f"n{i}", f"v{i}")
    names = [f"n{i}" for i in range(60)]  # distinct: every call is a read of its own
    assert on_the_loop(manager, *names) == [f"v{i}" for i in range(60)]
    assert len(opened) == 3


@pytest.mark.parametrize("face", sorted(READERS))
def test_an_interrupt_after_the_value_came_back_carries_no_frame_holding_it(
    face: str, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BaseException (KeyboardInterrupt) out of a read is scrubbed as an error is."""
    from secureml.key_management.backends import vault as vault_module
    from tests.support.frames import rendered_locals

    value = f"top-secret-{uuid.uuid4().hex}"
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path)
    manager.set_secret("kb", value)
    real = vault_module.VaultBackend.locate

    def interrupted(self: Any, name: str) -> str:
        raise KeyboardInterrupt  # read_unversioned names the source once it has the value

    monkeypatch.setattr(vault_module.VaultBackend, "locate", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        READERS[face](manager, "kb")
    monkeypatch.setattr(vault_module.VaultBackend, "locate", real)
    held = [(where, name) for where, name, shown in rendered_locals(caught.value) if value in shown]
    assert held == []


@pytest.mark.parametrize("poll", ["poll", "no-poll"])
def test_sequential_reads_reuse_one_connection(
    poll: str,
    bao_server: DevServer,
    vault_path: str,
    monkeypatch: pytest.MonkeyPatch,
    opened: list[object],
) -> None:
    """Kept alive whether the platform has ``select.poll`` or not (Windows has not)."""
    if poll == "no-poll":
        monkeypatch.delattr(_vault_aio.select, "poll")
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path)
    manager.set_secret("x", "1")

    async def main() -> list[Any]:
        async with AsyncKeyManager(manager) as akm:
            return [await akm.get_secret("x") for _ in range(10)]

    assert asyncio.run(main()) == ["1"] * 10
    assert len(opened) == 1


def test_cancelled_reads_give_their_connection_slots_back(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vault_aio, "CONNECTIONS_PER_ORIGIN", 2)
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path)
    manager.set_secret("slow", "s")
    manager.set_secret("fast", "f")
    proxy.inject(*[Fault.drip(0.01, path_prefix=f"/v1/secret/data/{vault_path}/slow")] * 2)

    async def main() -> None:
        async with AsyncKeyManager(manager) as akm:
            slow = [asyncio.create_task(akm.get_secret("slow")) for _ in range(1)]
            await asyncio.sleep(0.05)
            for task in slow:
                task.cancel()
            # The shared read of "slow" goes on; "fast" must still find slots.
            values = await asyncio.wait_for(
                asyncio.gather(*(akm.get_secret("fast") for _ in range(20))), 10
            )
            assert values == ["f"] * 20

    asyncio.run(main())


def test_an_idle_worker_holds_nothing_of_its_last_read(
    bao_server: DevServer, vault_path: str
) -> None:
    km = manager_via(bao_server.address, bao_server.root_token, vault_path)
    km.set_secret("held", "the-value-nobody-keeps")
    assert read_one(km, "held") == "the-value-nobody-keeps"
    gc.collect()
    for worker in _bridge._workers.idle:
        frame = worker.gr_frame
        while frame is not None:
            assert "the-value-nobody-keeps" not in repr(frame.f_locals)
            frame = frame.f_back
        assert worker.outcome is None
        assert not worker.lending


def test_threads_and_coroutines_on_one_cold_name_cause_one_read(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path, cache_ttl=60)
    manager.set_secret("cold", "c")
    proxy.hits.clear()
    proxy.inject(Fault.drip(0.002, path_prefix=f"/v1/secret/data/{vault_path}/cold"))
    results: list[Any] = []

    def thread_read() -> None:
        results.append(manager.get_secret("cold"))

    async def main() -> list[Any]:
        async with AsyncKeyManager(manager) as akm:
            first = asyncio.gather(*(akm.get_secret("cold") for _ in range(50)))
            await asyncio.sleep(0.01)
            threads = [threading.Thread(target=thread_read) for _ in range(8)]
            for t in threads:
                t.start()
            values = await first
            await asyncio.to_thread(lambda: [t.join(10) for t in threads])
            return values

    assert asyncio.run(main()) == ["c"] * 50
    assert results == ["c"] * 8
    assert len(proxy.hits_for(f"/{vault_path}/cold")) == 1


# -- the loop's end, and hostile peers' harder cases (found by review) ---------------------


def test_a_loop_that_ends_mid_read_wedges_nothing(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    """asyncio.run ends while a read waits: the read unwinds as an outage, so a thread
    that shared it gets an outage (never CancelledError) and later reads go on."""
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path, retries=0)
    manager.set_secret("w", "wv")
    proxy.inject(Fault.drip(0.05, path_prefix=f"/v1/secret/data/{vault_path}/w"))
    outcomes: list[object] = []

    def shared_from_a_thread() -> None:
        try:
            outcomes.append(manager.get_secret("w"))
        except BaseException as exc:  # the type is what is tested
            outcomes.append(exc)

    async def leave_early() -> None:
        akm = AsyncKeyManager(manager)
        asyncio.ensure_future(akm.get_secret("w"))  # noqa: RUF006 - left running on purpose
        await asyncio.sleep(0.1)
        thread.start()
        await asyncio.sleep(0.1)

    thread = threading.Thread(target=shared_from_a_thread)
    asyncio.run(leave_early())
    thread.join(10)
    assert len(outcomes) == 1
    assert outcomes[0] == "wv" or isinstance(outcomes[0], VaultUnavailableError), outcomes
    started = time.monotonic()
    assert manager.get_secret("w") == "wv"
    assert read_one(manager, "w") == "wv"
    assert time.monotonic() - started < 1.0


def test_a_loop_closed_without_asyncio_run_holds_a_read_one_budget_at_most(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(proxy.origin, bao_server.root_token, vault_path, timeout=0.5, retries=0)
    manager.set_secret("k", "kv")
    proxy.inject(Fault.drip(0.05, path_prefix=f"/v1/secret/data/{vault_path}/k"))
    loop = asyncio.new_event_loop()
    akm = AsyncKeyManager(manager)
    loop.run_until_complete(asyncio.wait([loop.create_task(akm.get_secret("k"))], timeout=0.1))
    loop.close()  # its read never resumes
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="gave up waiting"):
        manager.get_secret("k")  # waits one budget for the read that will never end...
    assert time.monotonic() - started < 0.5 + 1.0
    assert manager.get_secret("k") == "kv"  # ...which it then drops: this one leads


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_many_event_loops_keep_neither_loops_nor_sockets(
    bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path)
    manager.set_secret("l", "lv")
    read_one(manager, "l")
    gc.collect()
    before = _open_fds()
    for _ in range(40):

        async def once() -> object:
            return await AsyncKeyManager(manager).get_secret("l")  # no aclose: asyncio.run ends

        assert asyncio.run(once()) == "lv"
    gc.collect()
    assert _open_fds() - before < 5


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        _ok(b"{}"),
        _ok(b"[1]"),
        _ok(b'{"data": "x"}'),
        _ok(b'{"data": {"data": "x"}}'),
        _ok(b"[" * 100_000),
    ],
    ids=["204", "empty-object", "list", "data-not-object", "fields-not-object", "deep"],
)
@pytest.mark.parametrize("face", ["sync", "async"])
def test_an_answer_that_is_not_a_kv_answer_is_a_clean_vault_error(answer: bytes, face: str) -> None:
    read = (lambda m: m.get_secret("x")) if face == "sync" else read_one
    with RawServer(answer) as server:
        manager = manager_via(server.origin, "s.t", retries=0)
        with pytest.raises(VaultError) as caught:
            read(manager)
    assert "\n" not in str(caught.value)
    assert not isinstance(caught.value, VaultUnavailableError)


@pytest.mark.parametrize("face", sorted(READERS))
def test_a_length_in_other_digits_or_past_the_cap_is_refused(face: str) -> None:
    for head in (b"Content-Length: \xb2", b"Content-Length: %d" % (40 * 1024 * 1024)):
        answer = b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + OK_BODY
        with RawServer(answer) as server, pytest.raises(VaultUnavailableError):
            READERS[face](manager_via(server.origin, "s.t", retries=0))


@pytest.mark.parametrize("face", sorted(READERS))
def test_a_body_of_tiny_chunks_costs_its_length_not_its_square(face: str) -> None:
    body = OK_BODY[:-2] + b', "pad": "' + b"p" * 200_000 + b'"}}'
    chunked = CHUNKED + b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    with RawServer(chunked + b"0\r\n\r\n") as server:
        started = time.monotonic()
        assert READERS[face](manager_via(server.origin, "s.t", retries=0, timeout=5)) == "v"
    assert time.monotonic() - started < 3.0


def test_waiting_for_a_connection_counts_against_the_deadline(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vault_aio, "CONNECTIONS_PER_ORIGIN", 1)
    manager = manager_via(black_hole, "s.t", timeout=0.5, retries=0)
    started = time.monotonic()
    outcomes = on_the_loop(manager, "a", "b", "c")
    assert all(isinstance(o, VaultUnavailableError) for o in outcomes), outcomes
    assert time.monotonic() - started < 0.5 + 0.4  # each read within its own budget


def test_a_proxied_vault_is_read_on_a_thread_through_the_proxy(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async wire speaks to Vault directly only: through HTTP_PROXY a read takes the
    sync wire on a pool thread (the proxy's protocol is urllib3's to speak)."""
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/p", "value=proxied")
    with FaultProxy(bao_server.address) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.origin)
        monkeypatch.setenv("NO_PROXY", "")
        with pytest.warns(SecurityWarning, match="plain http"):
            manager = manager_via("http://vault.invalid:8200", bao_server.root_token, vault_path)

        async def main() -> object:
            async with AsyncKeyManager(manager) as akm:
                value = await akm.get_secret("p")
                assert akm._offload._pool is not None  # it did take a thread
                return value

        with pytest.warns(SecurityWarning, match="through the proxy"):
            assert asyncio.run(main()) == "proxied"
        assert len(proxy.hits_for(f"/{vault_path}/p")) == 1


# -- found by the second review ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "error"),
    [("", None, ValueError), ("../x", None, ValueError), ("x", -1, ValueError)],
)
def test_a_read_that_fails_before_it_waits_raises_and_never_returns_none(
    bao_server: DevServer, name: str, version: int | None, error: type[Exception]
) -> None:
    manager = manager_via(bao_server.address, bao_server.root_token)

    async def main() -> None:
        async with AsyncKeyManager(manager) as akm:
            with pytest.raises(error):
                await akm.get_secret(name, version=version)

    asyncio.run(main())


def test_a_read_served_before_it_waits_returns_its_value(
    monkeypatch: pytest.MonkeyPatch, black_hole: str
) -> None:
    monkeypatch.setenv("SECUREML_LOCAL", "from-env")  # Vault's 404 is no wait: env answers
    with RawServer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}") as server:
        manager = manager_via(server.origin, "s.t", retries=0, use_env_fallback=True)
        assert on_the_loop(manager, *["local"] * 5) == ["from-env"] * 5


class TwoAnswers(RawServer):
    """Answers the first request, then sends a second, unasked answer a moment later
    (a confused proxy, or a hostile peer), and answers later requests properly."""

    def _handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(3)
            try:
                while request := conn.recv(65536):
                    self.requests += 1
                    name = request.split(b" ")[1].rsplit(b"/", 1)[-1]
                    conn.sendall(_ok(b'{"data": {"data": {"value": "%s"}}}' % name))
                    if self.requests == 1:
                        time.sleep(0.05)
                        conn.sendall(_ok(b'{"data": {"data": {"value": "INJECTED"}}}'))
            except OSError:
                pass


def test_bytes_sent_after_an_answer_are_never_the_next_answer() -> None:
    with TwoAnswers(b"") as server:
        manager = manager_via(server.origin, "s.t", retries=0)

        async def main() -> list[object]:
            async with AsyncKeyManager(manager) as akm:
                first = await akm.get_secret("a")
                time.sleep(0.2)  # the loop is busy while the stray answer arrives
                return [first, await akm.get_secret("b"), await akm.get_secret("c")]

        assert asyncio.run(main()) == ["a", "b", "c"]


def test_bytes_sent_after_an_answer_are_never_the_next_answer_on_the_sync_wire() -> None:
    with TwoAnswers(b"") as server:
        manager = manager_via(server.origin, "s.t", retries=0)
        first = manager.get_secret("a")
        time.sleep(0.2)  # the stray answer arrives while the connection is idle
        assert [first, manager.get_secret("b"), manager.get_secret("c")] == ["a", "b", "c"]


def test_user_code_that_cancels_or_drains_all_tasks_is_unaffected(
    bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path)
    manager.set_secret("t", "tv")

    async def main() -> None:
        async with AsyncKeyManager(manager) as akm:
            assert await akm.get_secret("t") == "tv"
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not others  # the bridge runs no task of its own
            for task in others:
                task.cancel()
            assert await akm.get_secret("t") == "tv"

    asyncio.run(main())


async def _read_cancelling_every_other_task(
    akm: AsyncKeyManager, name: str
) -> tuple[object, list[str]]:
    """Read ``name``; while the read waits, cancel every task but this one and the
    reader's, as a shutdown routine might. The value, and what was cancelled."""
    reader = asyncio.ensure_future(akm.get_secret(name))
    await asyncio.sleep(0.05)  # the read waits now
    others = asyncio.all_tasks() - {asyncio.current_task(), reader}
    for task in others:
        task.cancel()
    return await reader, sorted(t.get_coro().__qualname__ for t in others)


@pytest.mark.parametrize("waiting", ["joining-a-threads-load", "backing-off"])
def test_a_read_in_flight_survives_code_that_cancels_every_task_but_its_own(
    warm: KeyManager, proxy: FaultProxy, waiting: str
) -> None:
    """A shutdown routine or supervisor cancels "every task but mine": the bridge must
    have none to cancel while a read waits (a back-off, another caller's load), or a
    reader nobody cancelled would get an outage while Vault is healthy."""

    async def main() -> tuple[object, list[str]]:
        async with AsyncKeyManager(warm) as akm:
            if waiting == "backing-off":
                proxy.inject(Fault.status(503))  # then a pause before the next try
            else:
                proxy.inject(Fault.drip(0.003, path_prefix="/v1/secret/data/"))
                threading.Thread(target=warm.get_secret, args=("x",), daemon=True).start()
                await asyncio.sleep(0.05)  # the thread leads the load now
            return await _read_cancelling_every_other_task(akm, "x")

    value, cancelled = asyncio.run(main())
    assert value == "1"
    assert cancelled == []


def test_a_connect_cancelled_by_other_code_is_tried_again_not_an_outage(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connecting needs a task (asyncio's create_connection): cancelled by code that
    cancels every task but its own, it is a connection never made, which the transport's
    rules try again, not an outage."""
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path, retries=2)
    manager.set_secret("x", "xv")
    real_open = _vault_aio.Wire._open

    async def slow_open(self: _vault_aio.Wire, *args: Any) -> Any:
        await asyncio.sleep(0.1)  # long enough to be seen, and cancelled
        return await real_open(self, *args)

    monkeypatch.setattr(_vault_aio.Wire, "_open", slow_open)

    async def main() -> tuple[object, list[str]]:
        async with AsyncKeyManager(manager) as akm:
            return await _read_cancelling_every_other_task(akm, "x")

    value, cancelled = asyncio.run(main())
    assert value == "xv"
    assert cancelled == [
        "test_a_connect_cancelled_by_other_code_is_tried_again_not_an_outage.<locals>.slow_open"
    ]


def test_a_connect_in_flight_when_the_loop_ends_leaves_no_task_or_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio.run's cancelling of what is left looks, to a connect, like other code's:
    the rules then try the next node, a connect asyncio.run never sees. The loop's end
    cancels that one too: no task destroyed pending, no socket left open."""
    listeners, held = [], []
    for _ in range(2):  # two nodes that accept and never answer TLS's handshake
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def hold(listener: socket.socket = listener) -> None:
            with contextlib.suppress(OSError):
                while True:
                    held.append(listener.accept()[0])

        threading.Thread(target=hold, daemon=True).start()
    nodes = [f"https://127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]
    with pytest.warns(SecurityWarning):
        manager = manager_via(nodes, "s.t", retries=0, timeout=3, verify=False)

    async def main() -> None:
        akm = AsyncKeyManager(manager)
        asyncio.ensure_future(akm.get_secret("x"))  # noqa: RUF006 - left for asyncio.run
        await asyncio.sleep(0.3)  # connecting to the first node

    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                asyncio.run(main())
            gc.collect()
    finally:
        for sock in listeners + held:
            sock.close()
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.records
    assert not [w for w in warned if issubclass(w.category, ResourceWarning)]


def test_reads_in_cleanup_code_at_shutdown_still_work(
    bao_server: DevServer, vault_path: str
) -> None:
    """asyncio.run cancels what is left; the tasks' ``finally`` reads run before the
    bridge ends anything (it ends at shutdown_asyncgens, after them)."""
    manager = manager_via(bao_server.address, bao_server.root_token, vault_path)
    manager.set_secret("c", "cv")
    seen: list[object] = []
    akm = AsyncKeyManager(manager)

    async def worker() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            seen.append(await akm.get_secret("c"))

    async def main() -> None:
        for _ in range(10):
            asyncio.ensure_future(worker())  # noqa: RUF006 - left for asyncio.run to cancel
        await asyncio.sleep(0.05)

    before = _open_fds()
    asyncio.run(main())
    assert seen == ["cv"] * 10
    gc.collect()
    assert _open_fds() - before < 3


def test_reads_in_flight_by_the_hundred_cost_few_young_collections(
    bao_server: DevServer, vault_path: str
) -> None:
    """Each read is resumed by the task that started it (``_bridge.steer``), so it frees
    its objects where the next read allocates its own, and the collector's count stays
    level. Resumed from the I/O callbacks instead, a batch of reads finishing in one
    loop turn frees while the count is at zero (uncounted), and a young collection came
    every few dozen reads (1 per ~70 here, each walking every read's objects; 1 per
    ~375 now, most of them from the coroutines starting at once)."""
    km = manager_via(bao_server.address, bao_server.root_token, vault_path)
    names = [f"g{i}" for i in range(200)]
    for name in names:
        km.set_secret(name, "v")
    collections, rounds = [0], 30

    def counted(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            collections[0] += 1

    async def reader(akm: AsyncKeyManager, name: str) -> None:
        for _ in range(rounds):
            assert await akm.get_secret(name) == "v"

    async def main() -> None:
        async with AsyncKeyManager(km) as akm:
            await asyncio.gather(*(reader(akm, name) for name in names))  # connected
            gc.collect()
            gc.callbacks.append(counted)
            try:
                await asyncio.gather(*(reader(akm, name) for name in names))
            finally:
                gc.callbacks.remove(counted)
            assert akm._offload._pool is None, "a read went to a thread"

    asyncio.run(main())
    reads = rounds * len(names)
    assert collections[0] <= reads / 120, f"{collections[0]} young collections in {reads} reads"


# -- what a read allocates ---------------------------------------------------------------


def test_a_read_allocates_no_socket_sized_buffer(bao_server: DevServer, vault_path: str) -> None:
    """asyncio reads into the wire's one buffer (``_Connection`` is a BufferedProtocol).
    As a plain Protocol it got a fresh 256 KiB ``bytes`` per read, which glibc maps,
    shrinks and unmaps: three system calls per answer, a tenth of a read's CPU."""
    km = manager_via(bao_server.address, bao_server.root_token, vault_path)
    km.set_secret("x", "1")

    async def main() -> int:
        async with AsyncKeyManager(km) as akm:
            await akm.get_secret("x")  # connected, warm
            tracemalloc.start()
            try:
                for _ in range(20):
                    assert await akm.get_secret("x") == "1"
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    assert asyncio.run(main()) < 64 * 1024  # the peak: well under one 256 KiB read


def test_a_large_answer_is_decoded_off_the_loop(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding megabytes of JSON takes milliseconds a megabyte: on the loop, a stall for
    every other coroutine. Past DECODE_OFF_LOOP_BYTES it runs on a pool thread."""
    km = manager_via(bao_server.address, bao_server.root_token, vault_path)
    big = "b" * (2 * _vault_http.DECODE_OFF_LOOP_BYTES)
    km.set_secret("big", big)
    km.set_secret("small", "s")
    decoded_on: list[str] = []
    real = _vault_http._json_or_undecoded

    def recording(content: bytes) -> Any:
        decoded_on.append(threading.current_thread().name)
        return real(content)

    monkeypatch.setattr(_vault_http, "_json_or_undecoded", recording)

    async def main() -> tuple[object, object]:
        async with AsyncKeyManager(km) as akm:
            return await akm.get_secret("small"), await akm.get_secret("big")

    assert asyncio.run(main()) == ("s", big)
    assert len(decoded_on) == 1  # the big one only
    assert decoded_on[0] != threading.main_thread().name


def test_an_idle_connection_keeps_no_answer(bao_server: DevServer, vault_path: str) -> None:
    """Once a read has its answer, the connection it came on (kept alive, maybe for
    minutes) no longer holds it: up to 256 of them would each keep a secret."""
    km = manager_via(bao_server.address, bao_server.root_token, vault_path)
    secret = f"kept-{uuid.uuid4().hex}"
    km.set_secret("x", secret)

    async def main() -> tuple[list[object], list[object]]:
        async with AsyncKeyManager(km) as akm:
            assert await akm.get_secret("x") == secret
            wire = km._core.vault._pool.wire()  # type: ignore[union-attr]
            idle = [conn for place in wire._origins.values() for conn in place.idle]
            assert idle
            gc.collect()
            alive = [
                o
                for o in gc.get_objects()
                if type(o).__name__ == "ParsedAnswer" and secret.encode() in o.body
            ]
            return [conn._parser._answer for conn in idle if conn._parser._answer], alive

    assert asyncio.run(main()) == ([], [])


@pytest.mark.parametrize("server", ["bao_server", "tls_server"])
def test_the_shared_read_buffer_keeps_no_answer(
    server: str, vault_path: str, request: pytest.FixtureRequest
) -> None:
    """What a read copied out of the wire's buffer is written over there: a secret must
    not stay in it for the loop's life. Over TLS too, where asyncio's SSL layer reads
    the plaintext into the same buffer by another path."""
    origin: DevServer = request.getfixturevalue(server)
    options = {"vault_ca_cert": str(origin.ca_cert)} if server == "tls_server" else {}
    km = manager_via(origin.address, origin.root_token, vault_path, **options)
    secret = f"kept-{uuid.uuid4().hex}"
    km.set_secret("x", secret)

    async def main() -> bytes:
        async with AsyncKeyManager(km) as akm:
            assert await akm.get_secret("x") == secret
            wire = km._core.vault._pool.wire()  # type: ignore[union-attr]
            return bytes(wire._into)

    left = asyncio.run(main())
    assert secret.encode() not in left
    assert left == bytes(len(left))
