"""The read cache against the real server: one request for 32 cold threads (counted by the
server-side proxy, not only by stats()), riding out a stopped server on cached values,
and never hiding a permission error behind a stale value.
"""

from __future__ import annotations

import time

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager, PermissionDeniedError, VaultUnavailableError
from tests.support.fault_proxy import FaultProxy
from tests.support.threads import all_at_once


def test_32_cold_threads_cause_one_read(bao_server: DevServer, vault_path: str) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/hot", "value=v")
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            vault_kv_version=2,
        )
        manager.status()  # log in first, so only reads of the secret remain to count
        results = all_at_once(32, lambda: manager.get_secret("hot"))
    assert results == ["v"] * 32
    assert manager.stats().backend_reads == 1
    assert len(proxy.hits_for(f"/v1/secret/data/{vault_path}/hot")) == 1


def test_a_stopped_server_is_ridden_out_on_cached_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with DevServer() as server:
        manager = KeyManager(
            vault_url=server.address,
            vault_token=server.root_token,
            cache_ttl=0.2,
            max_stale=3,
            timeout=1,
            retries=0,
        )
        manager.set_secret("cached", "from-vault")
        assert manager.get_secret("cached") == "from-vault"
    # The server is gone. The cached name keeps serving until max_stale ...
    time.sleep(0.3)
    assert manager.get_secret("cached") == "from-vault"
    # ... uncached names go to the env fallback, or fail as unavailable ...
    monkeypatch.setenv("SECUREML_UNCACHED", "from-env")
    assert manager.get_secret("uncached") == "from-env"
    with pytest.raises(VaultUnavailableError):
        manager.get_secret("nowhere")
    # ... and once max_stale has passed, the cached name follows the same rules.
    time.sleep(3)
    with pytest.raises(VaultUnavailableError):
        manager.get_secret("cached")
    assert manager.stats().stale_serves == 1


def test_a_revoked_permission_is_not_masked_by_a_stale_value(
    bao_server: DevServer, vault_path: str
) -> None:
    policy = f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}'
    name = f"cache-{vault_path}"
    bao_server.bao("policy", "write", name, "-", input=policy.encode())
    token = bao_server.bao("token", "create", f"-policy={name}", "-field=token").stdout
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/k", "value=v")
    manager = KeyManager(
        vault_url=bao_server.address,
        vault_token=token.decode(),
        vault_path=vault_path,
        vault_kv_version=2,
        cache_ttl=0.1,
        max_stale=60,
    )
    assert manager.get_secret("k") == "v"
    bao_server.bao("policy", "write", name, "-", input=b'path "nothing/*" { capabilities = [] }')
    time.sleep(0.15)
    with pytest.raises(PermissionDeniedError):
        manager.get_secret("k")


def test_set_secret_invalidates_at_once(bao_server: DevServer, vault_path: str) -> None:
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    manager.set_secret("k", "1")
    assert manager.get_secret("k") == "1"
    manager.set_secret("k", "2")
    assert manager.get_secret("k") == "2"
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/k", "value=3")
    assert manager.get_secret("k") == "2"  # changed elsewhere: cached until invalidated
    manager.invalidate("k")
    assert manager.get_secret("k") == "3"
