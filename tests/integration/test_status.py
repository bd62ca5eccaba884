"""KeyManager.status(): typed, cheap, and never raising because Vault is unwell."""

from __future__ import annotations

import time
import uuid

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import KeyManager, KeyManagerStatus


def test_a_healthy_server(bao_server: DevServer, vault_path: str) -> None:
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    status = manager.status()
    assert isinstance(status, KeyManagerStatus)
    assert status.vault_url == bao_server.address
    assert status.reachable is True
    assert status.initialized is True
    assert status.sealed is False
    assert status.server_version
    assert status.server_version[0].isdigit()
    assert status.auth_method == "token"
    assert status.token_ttl is None  # the dev root token never expires
    assert status.kv_mount == "secret"
    assert status.kv_version == 2
    assert status.namespace is None
    assert status.env_fallback is True
    assert status.default_fallback is False
    assert status.error is None
    assert bao_server.root_token not in repr(status)


def test_token_ttl_and_renewable(bao_server: DevServer, vault_path: str) -> None:
    created = bao_server.bao("token", "create", "-ttl=120s", "-field=token").stdout
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=created.decode().strip(), vault_path=vault_path
    )
    status = manager.status()
    assert status.token_ttl is not None
    assert 100 < status.token_ttl <= 120
    assert status.renewable is True


def test_no_vault_configured() -> None:
    status = KeyManager(use_env_fallback=False).status()
    assert status == KeyManagerStatus(env_fallback=False, default_fallback=False)
    assert status.reachable is False
    assert status.vault_url is None


def test_an_unreachable_server_is_reported_not_raised() -> None:
    address = f"http://127.0.0.1:{free_loopback_port()}"
    status = KeyManager(vault_url=address, vault_token="s.t0ken").status()
    assert status.reachable is False
    assert status.sealed is None
    assert status.error is not None
    assert "unreachable" in status.error
    assert "s.t0ken" not in repr(status)


def test_status_of_a_silent_server_takes_one_timeout(black_hole: str) -> None:
    manager = KeyManager(vault_url=black_hole, vault_token="s.t0ken", timeout=0.5)
    started = time.monotonic()
    status = manager.status()
    assert time.monotonic() - started < 1.0  # one attempt: status is not retried
    assert status.reachable is False


def test_a_sealed_server() -> None:
    with DevServer() as server:
        server.bao("operator", "seal")
        status = KeyManager(vault_url=server.address, vault_token=server.root_token).status()
    assert status.reachable is True
    assert status.sealed is True
    assert status.kv_version is None


def test_a_refused_token_is_reported(bao_server: DevServer) -> None:
    manager = KeyManager(vault_url=bao_server.address, vault_token="s.not-a-real-token")
    status = manager.status()
    assert status.reachable is True
    assert status.error is not None
    assert "s.not-a-real-token" not in status.error


def test_status_inside_a_namespace(bao_server: DevServer) -> None:
    """sys/health is root-only: the probe must not carry the namespace."""
    namespace = f"ns-status-{uuid.uuid4().hex[:8]}"
    bao_server.bao("namespace", "create", namespace)
    bao_server.bao(
        "secrets", "enable", "-path=secret", "kv-v2", extra_env={"BAO_NAMESPACE": namespace}
    )
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_namespace=namespace
    )
    status = manager.status()
    assert status.reachable is True
    assert status.namespace == namespace
    assert status.kv_version == 2
    assert status.error is None
