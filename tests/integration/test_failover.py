"""Several node addresses: a request moves on from a node that is down or sealed, and
the node that answered is asked first next time. (The Raft cluster tests, with real
leader changes, are in test_raft_failover.py.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import ConfigurationError, KeyManager, VaultError
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.http_stub import Seen, StubServer
from tests.support.pki import make_pki


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as running:
        yield running


def test_a_dead_first_node_is_skipped_then_avoided(
    bao_server: DevServer, proxy: FaultProxy, vault_path: str
) -> None:
    dead = f"http://127.0.0.1:{free_loopback_port()}"
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")
    manager = KeyManager(
        vault_url=[dead, proxy.origin],
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        use_env_fallback=False,
        cache_ttl=0,
    )
    assert manager.get_secret("x") == "v"
    after_first = manager.stats().failovers
    assert after_first >= 1
    for _ in range(5):
        assert manager.get_secret("x") == "v"
    assert manager.stats().failovers == after_first  # the live node is asked first now


def test_a_sealed_node_is_skipped(bao_server: DevServer, vault_path: str) -> None:
    with DevServer() as sealed:
        sealed.bao("operator", "seal")
        bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")
        manager = KeyManager(
            vault_url=f"{sealed.address},{bao_server.address}",
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            use_env_fallback=False,
            cache_ttl=0,
        )
        assert manager.get_secret("x") == "v"
        assert manager.stats().failovers >= 1


def test_a_node_answering_503_is_skipped(
    bao_server: DevServer, proxy: FaultProxy, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")
    with FaultProxy(bao_server.address) as second:
        manager = KeyManager(
            vault_url=[proxy.origin, second.origin],
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            vault_kv_version=2,
            use_env_fallback=False,
            cache_ttl=0,
        )
        manager.status()
        proxy.inject(*[Fault.status(503)] * 3)
        assert manager.get_secret("x") == "v"
        assert second.hits_for(f"{vault_path}/x")


def test_addresses_from_the_environment(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("SECUREML_VAULT_URL", f"{dead}, {bao_server.address}")
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", bao_server.root_token)
    manager = KeyManager(vault_path=vault_path)
    assert manager.set_secret("y", "w") is True
    assert f"{dead},{bao_server.address}" in repr(manager)


def test_mixed_schemes_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="mixes"):
        KeyManager(vault_url=["https://a:8200", "http://127.0.0.1:8200"], vault_token="t")


def test_a_redirect_to_another_configured_node_is_followed(
    bao_server: DevServer, vault_path: str
) -> None:
    """Standbys that do not forward answer 307 to the active node: follow that, once."""
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")

    def to_active(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return 307, {"Location": f"{bao_server.address}{seen.path}"}, b""

    with StubServer(to_active) as standby:
        manager = KeyManager(
            vault_url=[standby.origin, bao_server.address],
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            use_env_fallback=False,
            cache_ttl=0,
        )
        assert manager.get_secret("x") == "v"
        assert standby.requests  # asked first, redirected


def test_read_your_writes_headers_follow_a_write(
    bao_server: DevServer, proxy: FaultProxy, vault_path: str
) -> None:
    manager = KeyManager(
        vault_url=proxy.origin,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        vault_kv_version=2,
        cache_ttl=0,
    )
    manager.get_secret(f"absent-{uuid.uuid4().hex[:6]}", default="d")
    assert all(hit.headers.get("X-Vault-Inconsistent") is None for hit in proxy.hits)
    manager.set_secret("x", "1")
    proxy.hits.clear()
    assert manager.get_secret("x") == "1"
    read = proxy.hits_for(f"{vault_path}/x")[0]
    if "X-Vault-Index" in read.headers:  # the server told us its state after the write
        assert read.headers.get("X-Vault-Inconsistent") == "forward-active-node"


def test_a_redirect_to_an_unlisted_node_is_refused(bao_server: DevServer) -> None:
    def elsewhere(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return 307, {"Location": f"{bao_server.address}{seen.path}"}, b""

    with StubServer(elsewhere) as standby:
        manager = KeyManager(
            vault_url=standby.origin,
            vault_token="s.never-sent-elsewhere",
            use_env_fallback=False,
            retries=0,
        )
        with pytest.raises(VaultError, match="not a configured address"):
            manager.get_secret("x")


def test_a_node_failing_tls_is_skipped_for_the_next(tmp_path: Path) -> None:
    """A node whose certificate does not verify (restarting behind a new one, or an
    impostor) is passed over; the error says TLS only when no node answers."""
    pki = make_pki(tmp_path)
    listener = free_loopback_port()
    config = f"""
listener "tcp" {{
  address = "127.0.0.1:{listener}"
  tls_cert_file = "{pki.server.cert}"
  tls_key_file = "{pki.server.key}"
}}
"""
    with DevServer(extra_config=config) as server:
        good = f"https://127.0.0.1:{listener}"
        server.bao("kv", "put", "-mount=secret", "secureml/x", "value=v")

        def anything(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            return 200, {}, b"{}"

        # Speaks plain http where https is expected: every TLS handshake fails.
        with StubServer(anything) as impostor:
            impostor_url = f"https://127.0.0.1:{impostor.port}"
            manager = KeyManager(
                vault_url=[impostor_url, good],
                vault_token=server.root_token,
                vault_ca_cert=str(pki.other_ca_cert),
                use_env_fallback=False,
                retries=0,
            )
            with pytest.raises(VaultError, match="vault_ca_cert"):
                manager.get_secret("x")  # nobody verifies: the TLS error, not "unavailable"
            mixed = KeyManager(
                vault_url=[impostor_url, good],
                vault_token=server.root_token,
                vault_ca_cert=str(pki.ca_cert),
                use_env_fallback=False,
                cache_ttl=0,
            )
            assert mixed.get_secret("x") == "v"


def test_a_refused_redirect_moves_on_to_the_next_node(
    bao_server: DevServer, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")

    def elsewhere(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return 307, {"Location": f"http://localhost:9{seen.path}"}, b""

    with StubServer(elsewhere) as confused:
        manager = KeyManager(
            vault_url=[confused.origin, bao_server.address],
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            use_env_fallback=False,
            cache_ttl=0,
        )
        assert manager.get_secret("x") == "v"


def test_loopback_is_never_proxied(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Vault Agent on 127.0.0.1 with HTTP_PROXY set: the token must not go to the proxy
    (Go's client, and so the vault/bao CLIs, never proxy loopback either)."""
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")
    with FaultProxy(bao_server.address) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.origin)
        monkeypatch.setenv("NO_PROXY", "")
        manager = KeyManager(
            vault_url=bao_server.address,
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            cache_ttl=0,
        )
        assert manager.get_secret("x") == "v"
        assert proxy.hits == []


def test_a_non_ascii_token_is_refused_up_front() -> None:
    with pytest.raises(ConfigurationError, match="non-ASCII") as caught:
        KeyManager(vault_url="https://vault:8200", vault_token="s.t0ken\u20ac")
    assert "t0ken" not in str(caught.value)
