"""Retries, backoff, deadlines and unknown write outcomes, with faults injected in front
of the real server (tests/support/fault_proxy.py forwards everything it does not break).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import (
    AppRoleAuth,
    KeyManager,
    SecretNotFoundError,
    VaultError,
    VaultUnavailableError,
    WriteOutcomeUnknownError,
)
from secureml.key_management.backends._vault_transport import BACKOFF_CAP_SECONDS
from tests.support.fault_proxy import Fault, FaultProxy


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as running:
        yield running


def manager_via(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, **kwargs: object
) -> KeyManager:
    options: dict[str, object] = {"timeout": 2, "vault_kv_version": 2, "cache_ttl": 0}
    options.update(kwargs)
    return KeyManager(
        vault_url=proxy.origin,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        use_env_fallback=False,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def warm(proxy: FaultProxy, bao_server: DevServer, vault_path: str) -> KeyManager:
    """A manager that has logged in and holds secret ``x``, so faults hit only reads."""
    manager = manager_via(proxy, bao_server, vault_path)
    manager.set_secret("x", "1")
    assert manager.get_secret("x") == "1"
    proxy.hits.clear()
    return manager


def test_5xx_is_retried_then_succeeds(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(503), Fault.status(502))
    assert warm.get_secret("x") == "1"
    assert [hit.fault.status_code if hit.fault else 200 for hit in proxy.hits] == [503, 502, 200]


def test_429_honours_retry_after(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(429, retry_after=1))
    started = time.monotonic()
    assert warm.get_secret("x") == "1"
    assert time.monotonic() - started >= 1.0
    assert len(proxy.hits) == 2


def test_412_is_retried(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.status(412))
    assert warm.get_secret("x") == "1"
    assert len(proxy.hits) == 2


@pytest.mark.parametrize("status", [400, 404, 405, 501])
def test_other_4xx_and_501_are_not_retried(
    warm: KeyManager, proxy: FaultProxy, status: int
) -> None:
    proxy.inject(Fault.status(status))
    if status == 404:
        # 404 is Vault's "no such secret": absent, not an error.
        with pytest.raises(SecretNotFoundError):
            warm.get_secret("x")
    else:
        with pytest.raises(VaultError):
            warm.get_secret("x")
    assert len(proxy.hits) == 1


def test_gives_up_after_retries(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(*[Fault.status(503)] * 5)
    with pytest.raises(VaultUnavailableError, match="503"):
        warm.get_secret("x")
    assert len(proxy.hits) == 3  # the default: 2 retries


def test_retries_zero_disables_retrying(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(proxy, bao_server, vault_path, retries=0)
    manager.set_secret("x", "1")
    proxy.hits.clear()
    proxy.inject(Fault.status(503))
    with pytest.raises(VaultUnavailableError):
        manager.get_secret("x")
    assert len(proxy.hits) == 1


def test_retries_from_vault_max_retries(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_MAX_RETRIES", "4")
    manager = manager_via(proxy, bao_server, vault_path)
    manager.set_secret("x", "1")
    proxy.hits.clear()
    proxy.inject(*[Fault.status(500)] * 4)
    assert manager.get_secret("x") == "1"
    assert len(proxy.hits) == 5


def test_a_dropped_read_is_retried(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.drop())
    assert warm.get_secret("x") == "1"
    assert len(proxy.hits) == 2


@pytest.mark.parametrize("forwarded", [False, True], ids=["lost-before", "lost-after"])
def test_a_dropped_write_is_reported_as_unknown_not_replayed(
    warm: KeyManager, proxy: FaultProxy, forwarded: bool
) -> None:
    proxy.inject(Fault.drop(forward=forwarded))
    with pytest.raises(WriteOutcomeUnknownError, match="may or may not have happened") as caught:
        warm.set_secret("x", "2")
    # Not "unavailable": that means "not carried out, safe to retry", which this is not.
    assert not isinstance(caught.value, VaultUnavailableError)
    assert len(proxy.hits) == 1  # sent once, never replayed
    # The message was honest: the write did land when the proxy forwarded it.
    assert warm.get_secret("x") == ("2" if forwarded else "1")


def test_a_dropped_login_is_retried(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    """A plain token's first request (lookup-self) is a safe replay."""
    manager = manager_via(proxy, bao_server, vault_path)
    proxy.inject(Fault.drop(path_prefix="/v1/auth/token/lookup-self"))
    with pytest.raises(SecretNotFoundError):
        manager.get_secret("x")
    assert len(proxy.hits_for("lookup-self")) == 2


# -- deadlines -----------------------------------------------------------------------


def test_a_silent_server_costs_at_most_timeout_times_attempts_plus_backoff(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeout, retries = 0.5, 2
    manager = KeyManager(vault_url=black_hole, vault_token="s.t0ken", timeout=timeout)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        manager.get_secret("x")
    elapsed = time.monotonic() - started
    budget = timeout * (retries + 1) + BACKOFF_CAP_SECONDS * retries
    assert timeout * (retries + 1) <= elapsed < budget, elapsed
    # With an env fallback the same outage costs the same, then the fallback answers.
    monkeypatch.setenv("SECUREML_X", "from-env")
    started = time.monotonic()
    assert manager.get_secret("x") == "from-env"
    assert time.monotonic() - started < budget


def test_a_stopped_server_fails_fast() -> None:
    with DevServer() as server:
        address, token = server.address, server.root_token
    manager = KeyManager(vault_url=address, vault_token=token, timeout=2)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="unreachable"):
        manager.get_secret("x")
    # Connection refused is immediate: only the backoff between attempts is spent.
    assert time.monotonic() - started < BACKOFF_CAP_SECONDS * 2 + 0.5


def test_nothing_listening_at_all() -> None:
    manager = KeyManager(
        vault_url=f"http://127.0.0.1:{free_loopback_port()}", vault_token="s.t", retries=0
    )
    with pytest.raises(VaultUnavailableError, match="check the address"):
        manager.get_secret("x")


# -- answers that are cut, slow, or not Vault's ------------------------------------------


def test_a_read_cut_mid_answer_is_retried(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.cut())
    assert warm.get_secret("x") == "1"
    assert len(proxy.hits) == 2


def test_a_write_cut_mid_answer_is_unknown(warm: KeyManager, proxy: FaultProxy) -> None:
    proxy.inject(Fault.cut())
    with pytest.raises(WriteOutcomeUnknownError):
        warm.set_secret("x", "2")
    assert len(proxy.hits) == 1
    assert warm.get_secret("x") == "2"  # it did land: the error was right to hedge


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_write_answered_by_a_failing_gateway_is_not_replayed(
    warm: KeyManager, proxy: FaultProxy, status: int
) -> None:
    proxy.inject(Fault.status(status))
    with pytest.raises(WriteOutcomeUnknownError, match=str(status)):
        warm.set_secret("x", "2")
    assert len(proxy.hits) == 1


@pytest.mark.parametrize("status", [412, 429, 503])
def test_a_write_refused_before_processing_is_retried(
    warm: KeyManager, proxy: FaultProxy, status: int
) -> None:
    proxy.inject(Fault.status(status))
    assert warm.set_secret("x", "2") is True
    assert len(proxy.hits) == 2


def test_a_dripping_answer_is_cut_off_at_the_deadline(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    manager = manager_via(proxy, bao_server, vault_path, timeout=0.5, retries=0)
    manager.set_secret("x", "1")
    proxy.inject(Fault.drip(0.1))  # each byte well inside the socket timeout
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError):
        manager.get_secret("x")
    assert time.monotonic() - started < 1.0


def test_an_answer_that_is_not_json_is_an_error_not_a_success(
    warm: KeyManager, proxy: FaultProxy
) -> None:
    portal = b"<html>Please log in to the corporate proxy</html>"
    proxy.inject(Fault.replace(200, portal))
    with pytest.raises(VaultError, match="not Vault's JSON") as caught:
        warm.set_secret("x", "2")
    assert "corporate proxy" not in str(caught.value)
    proxy.inject(Fault.replace(200, portal))
    with pytest.raises(VaultError, match="not Vault's JSON") as caught:
        warm.get_secret("x")
    assert not isinstance(caught.value, VaultUnavailableError)  # never a fallback


@pytest.mark.parametrize("status", [405, 409, 413, 422])
def test_unexpected_4xx_is_an_error_not_an_outage(
    warm: KeyManager, proxy: FaultProxy, status: int
) -> None:
    proxy.inject(Fault.status(status))
    with pytest.raises(VaultError, match=str(status)) as caught:
        warm.get_secret("x")
    assert not isinstance(caught.value, VaultUnavailableError)
    assert len(proxy.hits) == 1


def test_a_login_whose_answer_was_lost_is_not_replayed(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeat could spend a single-use secret ID: the read falls back instead."""
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    bao_server.bao("auth", "enable", f"-path={mount}", "approle")
    bao_server.bao("write", f"auth/{mount}/role/r", "token_policies=default")
    role_id = bao_server.bao("read", "-field=role_id", f"auth/{mount}/role/r/role-id")
    secret_id = bao_server.bao("write", "-f", "-field=secret_id", f"auth/{mount}/role/r/secret-id")
    auth = AppRoleAuth(role_id.stdout.decode().strip(), secret_id.stdout.decode().strip(), mount)
    manager = KeyManager(
        vault_url=proxy.origin, vault_auth=auth, vault_path=vault_path, vault_kv_version=2
    )
    monkeypatch.setenv("SECUREML_X", "from-env")
    proxy.inject(Fault.drop(forward=True, path_prefix=f"/v1/auth/{mount}/login"))
    assert manager.get_secret("x") == "from-env"
    assert len(proxy.hits_for("/login")) == 1


@pytest.mark.parametrize(
    "prefix", [b"", b"HTTP/1.1 200 OK\r\n"], ids=["before-status", "after-status"]
)
def test_headers_dripped_byte_by_byte_are_cut_off_at_the_deadline(prefix: bytes) -> None:
    """Each byte arrives well within the socket timeout; only a watchdog can end this.
    A cut after the status line must not pass for an (empty) answer either."""
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]

        def drip() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    conn.recv(65536)
                    conn.sendall(prefix)
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: "[len(prefix) :] + b"a" * 1000:
                        if stop.is_set():
                            break
                        try:
                            conn.sendall(bytes([byte]))
                        except OSError:
                            break  # the client gave up, as it should
                        time.sleep(0.1)

        server = threading.Thread(target=drip, daemon=True)
        server.start()
        manager = KeyManager(
            vault_url=f"http://127.0.0.1:{port}",
            vault_token="s.t0ken",
            vault_kv_version=2,
            timeout=0.5,
            retries=0,
            use_env_fallback=False,
        )
        started = time.monotonic()
        with pytest.raises(VaultUnavailableError):
            manager.get_secret("x")
        elapsed = time.monotonic() - started
        stop.set()
        server.join(2)
    assert elapsed < 1.5, elapsed
