"""Redirects: the Vault token never leaves the configured address.

``requests`` would resend ``X-Vault-Token`` to whatever host a redirect names, so the
transport (backends/_vault_transport.py) follows at most one hop, only to a configured
address, and never from https to http. Note that a hop re-sends the original request
path to the ``Location``'s origin (Vault's standbys redirect to the active node with the
same path); the ``Location``'s own path is not used.

Two loopback stubs play the parts: "vault", the configured address, which answers with
redirects, and "trap", another origin (another port) that records what it gets and would
happily answer with a valid KV v2 secret. Every test asserts the trap saw nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secureml.key_management import AsyncKeyManager, KeyManager, VaultError
from tests.support.http_stub import Reply, Seen, StubServer, json_response
from tests.support.pki import Pki, make_pki

TOKEN = "s.redirect-test-token"
SECRET = "probe"
KV_PATH = f"/v1/secret/data/secureml/{SECRET}"
LOOKUP_SELF = "/v1/auth/token/lookup-self"
MOUNTS_PREFIX = "/v1/sys/internal/ui/mounts/"


def kv_read(value: str) -> Reply:
    """A KV v2 read answer holding ``value`` in the ``value`` field."""
    return json_response(200, {"data": {"data": {"value": value}, "metadata": {}}})


def lookup_self() -> Reply:
    """A token lookup answer for a non-expiring token."""
    return json_response(200, {"data": {"ttl": 0, "renewable": False, "type": "service"}})


def kv_write() -> Reply:
    """A KV v2 write answer."""
    return json_response(200, {"data": {"version": 1, "created_time": "", "destroyed": False}})


def trap_handler(seen: Seen) -> Reply:
    """Answer like a Vault would, so a followed redirect would visibly succeed."""
    path = seen.path.split("?", 1)[0]
    if path.startswith(MOUNTS_PREFIX):
        return json_response(
            200, {"data": {"type": "kv", "path": "secret/", "options": {"version": "2"}}}
        )
    if path == LOOKUP_SELF:
        return lookup_self()
    if seen.method in ("POST", "PUT"):
        return kv_write()
    return kv_read("trapped")


def redirect(status: int, location: str) -> Reply:
    """A redirect answer with an empty body."""
    return status, {"Location": location, "Content-Type": "text/plain"}, b""


def redirecting(
    location: Callable[[Seen], str], *, status: int = 307, answer_lookup: bool = True
) -> Callable[[Seen], Reply]:
    """A handler that redirects every request (but ``lookup-self`` if ``answer_lookup``)."""

    def handle(seen: Seen) -> Reply:
        if answer_lookup and seen.path == LOOKUP_SELF:
            return lookup_self()
        return redirect(status, location(seen))

    return handle


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redirect-pki"))


@pytest.fixture
def trap() -> Iterator[StubServer]:
    with StubServer(trap_handler) as stub:
        yield stub


@pytest.fixture
def tls_trap(pki: Pki) -> Iterator[StubServer]:
    with StubServer(trap_handler, tls=pki.server) as stub:
        yield stub


def manager_for(
    origin: str, *, ca_cert: Path | None = None, kv_version: int | None = 2
) -> KeyManager:
    """A manager on ``origin`` that fails fast: no retries, no env fallback."""
    return KeyManager(
        vault_url=origin,
        vault_token=TOKEN,
        vault_ca_cert=None if ca_cert is None else str(ca_cert),
        vault_kv_version=kv_version,
        use_env_fallback=False,
        timeout=2,
        retries=0,
    )


def assert_token_stayed_home(vault: StubServer, *elsewhere: StubServer) -> None:
    """Nothing reached the other origins; the configured one did get the token."""
    for other in elsewhere:
        assert other.requests == [], [(r.method, r.path) for r in other.requests]
    assert vault.requests, "the configured stub was never asked: the test proved nothing"
    assert all(r.header("X-Vault-Token") == TOKEN for r in vault.requests)
    assert vault.errors == []


def assert_clean(exc: BaseException) -> None:
    """Errors are safe to log: the token is not in them."""
    assert TOKEN not in str(exc)
    assert TOKEN not in repr(exc)


def run(manager: KeyManager, operation: str) -> object:
    """A read (GET: sync, or ``async-read``: over AsyncKeyManager's own wire) or a write
    (POST) of the probe secret."""
    if operation == "read":
        return manager.get_secret(SECRET)
    if operation == "async-read":

        async def read() -> object:
            async with AsyncKeyManager(manager) as akm:
                return await akm.get_secret(SECRET)

        return asyncio.run(read())
    return manager.set_secret(SECRET, "never-leaves")


#: The reads whose redirects are judged: the sync wire's and the async face's.
READS = pytest.mark.parametrize("operation", ["read", "async-read"])


# -- another origin ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("operation", ["read", "async-read", "write"])
def test_redirect_to_another_origin_is_refused(
    trap: StubServer, status: int, operation: str
) -> None:
    handler = redirecting(lambda seen: trap.url(seen.path), status=status)
    with StubServer(handler) as vault:
        manager = manager_for(vault.origin)
        with pytest.raises(VaultError, match="redirect") as caught:
            run(manager, operation)
    assert "not a configured address" in str(caught.value)
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)


def test_redirected_login_lookup_is_refused(trap: StubServer) -> None:
    """TokenAuth's first request (``lookup-self``) carries the token: it must not hop."""
    handler = redirecting(lambda seen: trap.url(seen.path), answer_lookup=False)
    with StubServer(handler) as vault:
        manager = manager_for(vault.origin)
        with pytest.raises(VaultError, match="redirect") as caught:
            manager.get_secret(SECRET)
    assert [r.path for r in vault.requests] == [LOOKUP_SELF]
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)


def test_redirected_kv_version_detection_is_refused(trap: StubServer) -> None:
    handler = redirecting(lambda seen: trap.url(seen.path))
    with StubServer(handler) as vault:
        manager = manager_for(vault.origin, kv_version=None)
        with pytest.raises(VaultError, match="redirect") as caught:
            manager.get_secret(SECRET)
    assert any(r.path.startswith(MOUNTS_PREFIX) for r in vault.requests)
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)


@READS
def test_scheme_relative_location_never_reaches_its_host(trap: StubServer, operation: str) -> None:
    """``//host:port/path`` names another host without a scheme: it must not be used."""
    handler = redirecting(lambda seen: f"//127.0.0.1:{trap.port}{seen.path}")
    with StubServer(handler) as vault:
        manager = manager_for(vault.origin)
        with pytest.raises(VaultError, match="redirect") as caught:
            run(manager, operation)
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)


# -- https -> http -----------------------------------------------------------------------


@READS
@pytest.mark.parametrize("port", ["same", "trap"])
def test_https_to_http_is_refused(pki: Pki, trap: StubServer, port: str, operation: str) -> None:
    def handler(seen: Seen) -> Reply:
        if seen.path == LOOKUP_SELF:
            return lookup_self()
        target = vault.port if port == "same" else trap.port
        return redirect(307, f"http://127.0.0.1:{target}{seen.path}")

    vault = StubServer(handler, tls=pki.server)
    with vault:
        manager = manager_for(vault.origin, ca_cert=pki.ca_cert)
        with pytest.raises(VaultError, match="https to http") as caught:
            run(manager, operation)
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)
    # Exactly one read reached the TLS stub: nothing was re-sent in clear text to it.
    assert [r.path for r in vault.requests if r.path == KV_PATH] == [KV_PATH]


@READS
def test_https_to_another_https_origin_is_refused(
    pki: Pki, tls_trap: StubServer, operation: str
) -> None:
    handler = redirecting(lambda seen: tls_trap.url(seen.path))
    with StubServer(handler, tls=pki.server) as vault:
        manager = manager_for(vault.origin, ca_cert=pki.ca_cert)
        with pytest.raises(VaultError, match="not a configured address") as caught:
            run(manager, operation)
    assert_clean(caught.value)
    assert_token_stayed_home(vault, tls_trap)


# -- the configured origin ----------------------------------------------------------------


@READS
@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_redirect_loop_is_followed_at_most_once(
    trap: StubServer, form: str, operation: str
) -> None:
    def handler(seen: Seen) -> Reply:
        if seen.path == LOOKUP_SELF:
            return lookup_self()
        location = vault.url(seen.path) if form == "absolute" else seen.path
        return redirect(307, location)

    vault = StubServer(handler)
    with vault:
        manager = manager_for(vault.origin)
        with pytest.raises(VaultError, match="more than once") as caught:
            run(manager, operation)
    reads = [r for r in vault.requests if r.path.startswith("/v1/secret/")]
    assert 1 <= len(reads) <= 2
    assert_clean(caught.value)
    assert_token_stayed_home(vault, trap)


@READS
def test_one_hop_within_the_configured_origin_is_followed(trap: StubServer, operation: str) -> None:
    """Vault's standby -> active redirect, in miniature: one hop to a configured address."""
    counter = itertools.count()
    lock = threading.Lock()

    def handler(seen: Seen) -> Reply:
        if seen.path == LOOKUP_SELF:
            return lookup_self()
        with lock:
            first = next(counter) == 0
        if first:
            return redirect(307, vault.url(f"{KV_PATH}?hop=1"))
        return kv_read("after-one-hop")

    vault = StubServer(handler)
    with vault:
        manager = manager_for(vault.origin)
        assert run(manager, operation) == "after-one-hop"
    reads = [r for r in vault.requests if r.path.startswith("/v1/secret/")]
    assert len(reads) == 2
    assert_token_stayed_home(vault, trap)
