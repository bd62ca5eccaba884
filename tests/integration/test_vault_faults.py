"""Faults injected into the real server: policies, bad tokens, outages, sealing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import (
    AuthenticationError,
    KeyManager,
    PermissionDeniedError,
    SecretNotFoundError,
    VaultSealedError,
    VaultUnavailableError,
)


def token_with_policy(server: DevServer, rules: str) -> str:
    policy = f"p-{uuid.uuid4().hex[:8]}"
    server.bao("policy", "write", policy, "-", input=rules.encode())
    return server.bao("token", "create", f"-policy={policy}", "-field=token").stdout.decode()


def vault_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "secureml.key_management" and r.levelno == logging.WARNING
    ]


class TestLeastPrivilege:
    @pytest.fixture
    def reader(self, bao_server: DevServer, vault_path: str) -> KeyManager:
        rules = f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}'
        token = token_with_policy(bao_server, rules)
        return KeyManager(vault_url=bao_server.address, vault_token=token, vault_path=vault_path)

    def test_detects_kv_version_and_reads(
        self, bao_server: DevServer, reader: KeyManager, vault_path: str
    ) -> None:
        bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/mine", "value=ok")
        assert reader.get_secret("mine") == "ok"

    def test_token_for_one_secret_only(self, bao_server: DevServer, vault_path: str) -> None:
        bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/only", "value=one")
        rules = f'path "secret/data/{vault_path}/only" {{ capabilities = ["read"] }}'
        token = token_with_policy(bao_server, rules)
        manager = KeyManager(vault_url=bao_server.address, vault_token=token, vault_path=vault_path)
        assert manager.get_secret("only") == "one"

    def test_denied_read_is_never_masked_by_env(
        self, monkeypatch: pytest.MonkeyPatch, bao_server: DevServer, vault_path: str
    ) -> None:
        bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/elsewhere", "value=v")
        token = token_with_policy(
            bao_server, f'path "secret/data/{vault_path}/mine" {{ capabilities = ["read"] }}'
        )
        manager = KeyManager(vault_url=bao_server.address, vault_token=token, vault_path=vault_path)
        monkeypatch.setenv("SECUREML_ELSEWHERE", "env-value")
        with pytest.raises(PermissionDeniedError, match="elsewhere"):
            manager.get_secret("elsewhere")

    def test_denied_write(self, reader: KeyManager) -> None:
        with pytest.raises(PermissionDeniedError, match="write"):
            reader.set_secret("mine", "nope")

    def test_write_allowed_with_create_update(self, bao_server: DevServer, vault_path: str) -> None:
        rules = (
            f'path "secret/data/{vault_path}/*" {{ capabilities = ["create", "update", "read"] }}'
        )
        token = token_with_policy(bao_server, rules)
        writer = KeyManager(vault_url=bao_server.address, vault_token=token, vault_path=vault_path)
        assert writer.set_secret("w", "written") is True
        assert writer.get_secret("w") == "written"


class TestBadTokens:
    def test_unknown_token(self, bao_server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SECUREML_X", "env-value")
        manager = KeyManager(vault_url=bao_server.address, vault_token="not-a-real-token")
        with pytest.raises(AuthenticationError) as caught:
            manager.get_secret("x")
        assert "not-a-real-token" not in str(caught.value)

    def test_revoked_token(self, bao_server: DevServer, vault_path: str) -> None:
        token = bao_server.bao("token", "create", "-field=token").stdout.decode()
        manager = KeyManager(
            vault_url=bao_server.address, vault_token=token, vault_path=vault_path, cache_ttl=0
        )
        manager.set_secret("r", "before")
        assert manager.get_secret("r") == "before"
        bao_server.bao("token", "revoke", token)
        with pytest.raises(AuthenticationError, match="rejected the token") as caught:
            manager.get_secret("r")
        assert token not in str(caught.value)
        with pytest.raises(AuthenticationError):
            manager.set_secret("r", "after")


class TestUnreachable:
    @pytest.fixture
    def dead(self) -> KeyManager:
        address = f"http://127.0.0.1:{free_loopback_port()}"
        return KeyManager(vault_url=address, vault_token="t0ken-unused", timeout=2)

    def test_falls_through_to_env_warning_once(
        self, dead: KeyManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("SECUREML_API_KEY", "env-value")
        with caplog.at_level(logging.WARNING, "secureml.key_management"):
            for _ in range(5):
                assert dead.get_secret("api_key") == "env-value"
        warnings = vault_warnings(caplog)
        assert len(warnings) == 1
        assert "unreachable" in warnings[0]

    def test_without_fallback_the_outage_is_raised(self, dead: KeyManager) -> None:
        with pytest.raises(VaultUnavailableError) as caught:
            dead.get_secret("api_key")
        assert not isinstance(caught.value, SecretNotFoundError)
        assert "env:SECUREML_API_KEY" in str(caught.value)

    def test_default_still_applies(self, dead: KeyManager) -> None:
        assert dead.get_secret("api_key", default="fallback") == "fallback"

    def test_write_raises(self, dead: KeyManager) -> None:
        with pytest.raises(VaultUnavailableError):
            dead.set_secret("api_key", "v")


class TestServerGoesAway:
    @pytest.fixture
    def server(self) -> Iterator[DevServer]:
        server = DevServer().start()
        try:
            yield server
        finally:
            server.stop()

    def test_stopped_mid_run(
        self, server: DevServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = KeyManager(
            vault_url=server.address, vault_token=server.root_token, timeout=2, cache_ttl=0
        )
        manager.set_secret("s", "from-vault")
        assert manager.get_secret("s") == "from-vault"
        server.stop()
        monkeypatch.setenv("SECUREML_S", "from-env")
        with caplog.at_level(logging.WARNING, "secureml.key_management"):
            assert manager.get_secret("s") == "from-env"
            assert manager.get_secret("s") == "from-env"
        assert len(vault_warnings(caplog)) == 1
        monkeypatch.delenv("SECUREML_S")
        with pytest.raises(VaultUnavailableError):
            manager.get_secret("s")

    def test_sealed(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token)
        manager.set_secret("s", "from-vault")
        server.bao("operator", "seal")
        with pytest.raises(VaultSealedError, match="sealed"):
            manager.get_secret("s")
        monkeypatch.setenv("SECUREML_S", "from-env")
        assert manager.get_secret("s") == "from-env"
        with pytest.raises(VaultSealedError):
            manager.set_secret("s", "x")

    def test_sealed_before_first_use(self, server: DevServer) -> None:
        server.bao("operator", "seal")
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token)
        with pytest.raises(VaultSealedError):
            manager.get_secret("s")
        assert isinstance(VaultSealedError("x"), VaultUnavailableError)
