"""Issue 12's findings 3, 4, 7 and 9 against the real server (the others have their own
files: traceback locals, ciphertext trust, proxies in test_failover, rotation in
test_key_lifecycle; the rest need no server)."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    ConfigurationError,
    KeyManager,
    SecretNotFoundError,
    UserpassAuth,
)
from tests.support.fault_proxy import FaultProxy


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as fault_proxy:
        yield fault_proxy


def manager_via(proxy: FaultProxy, bao_server: DevServer, path: str) -> KeyManager:
    return KeyManager(
        vault_url=proxy.origin,
        vault_token=bao_server.root_token,
        vault_path=path,
        vault_kv_version=2,
    )


@pytest.mark.parametrize("name", ["vault_token", "vault/token", "VAULT.TOKEN", "env"])
def test_configuration_variables_never_answer_lookups(
    bao_server: DevServer,
    proxy: FaultProxy,
    vault_path: str,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", "s.configuration-token")
    monkeypatch.setenv("SECUREML_ENV", "development")
    manager = manager_via(proxy, bao_server, vault_path)
    with pytest.raises(ValueError, match="reserved"):
        manager.get_secret(name)
    with pytest.raises(ValueError, match="reserved"):
        manager.get_encryption_key(name, 21)
    assert proxy.hits == []  # refused before any request


def test_a_missing_or_deleted_key_never_seals_under_the_environment(
    bao_server: DevServer, proxy: FaultProxy, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_MODEL_KEY", "hex:" + "11" * 32)
    manager = manager_via(proxy, bao_server, vault_path)
    with pytest.raises(SecretNotFoundError, match="never sealed under an environment key"):
        manager.encrypt(b"x", "model_key")  # a 404: a typo in vault_path looks like this
    manager.generate_key("model_key")
    manager.delete_secret("model_key")  # soft-deletes the latest (and only) version
    with pytest.raises(SecretNotFoundError, match="latest version is deleted"):
        manager.encrypt(b"x", "model_key")
    # Declaring it does not change that: with Vault configured, Vault must hold it.
    declared = KeyManager(
        vault_url=proxy.origin,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        declared_keys=["model_key"],
    )
    with pytest.raises(SecretNotFoundError, match="never sealed under an environment key"):
        declared.encrypt(b"x", "model_key")


def test_an_unbounded_name_is_refused_at_once(
    bao_server: DevServer, proxy: FaultProxy, vault_path: str
) -> None:
    manager = manager_via(proxy, bao_server, vault_path)
    started = time.monotonic()
    with pytest.raises(ValueError, match="512 bytes") as caught:
        manager.get_secret("a" * 65_000)
    assert time.monotonic() - started < 1.0
    assert len(str(caught.value)) < 400  # the message does not carry the name whole
    assert proxy.hits == []


def test_a_userpass_username_cannot_rewrite_the_login_url(bao_server: DevServer) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # enabled by another test
        bao_server.bao("auth", "enable", "userpass")
    with pytest.raises(ConfigurationError, match="username"):
        UserpassAuth("alice/../../../sys/health?x=", "pw-" + uuid.uuid4().hex)
