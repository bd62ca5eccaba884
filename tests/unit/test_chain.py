"""The lookup chain's policy, with a user-implemented backend (the public plug-in seam)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import pytest

from secureml.key_management import (
    AuthenticationError,
    ConfigurationError,
    KeyFormatError,
    KeyManager,
    PermissionDeniedError,
    SecretNotFoundError,
    SecurityWarning,
    VaultSealedError,
    VaultUnavailableError,
)
from secureml.key_management.backends import EnvBackend, SecretBackend, SecretValue


class DictBackend:
    """A minimal SecretBackend a user could write: a dict, or a fixed failure."""

    def __init__(self, data: dict[str, Any] | None = None, fail: Exception | None = None) -> None:
        self.data = dict(data or {})
        self.fail = fail
        self.reads = 0

    @property
    def source(self) -> str:
        return "dict"

    def locate(self, name: str) -> str:
        return f"dict:{name}"

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return self.data.get(name)

    def put(self, name: str, value: SecretValue) -> None:
        if self.fail is not None:
            raise self.fail
        self.data[name] = value

    def delete(self, name: str) -> None:
        self.data.pop(name, None)


def test_dict_backend_is_a_secret_backend() -> None:
    assert isinstance(DictBackend(), SecretBackend)
    assert isinstance(EnvBackend(), SecretBackend)


def test_order_primary_env_default_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DictBackend({"a": "primary"})
    km = KeyManager(backend=backend, use_default_fallback=True)
    monkeypatch.setenv("SECUREML_A", "env")
    monkeypatch.setenv("SECUREML_B", "env")
    assert km.get_secret("a") == "primary"
    assert km.get_secret("b") == "env"
    assert km.get_secret("c", default="given") == "given"
    with pytest.warns(SecurityWarning):
        assert km.get_secret("c").startswith("insecure-dev-")


def test_not_found_lists_sources_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_OTHER", "value-that-must-not-leak")
    km = KeyManager(backend=DictBackend({"x": "also-secret"}))
    with pytest.raises(SecretNotFoundError) as caught:
        km.get_secret("missing")
    err = caught.value
    assert err.name == "missing"
    assert err.sources_tried == ("dict:missing", "env:SECUREML_MISSING")
    assert "dict:missing" in str(err)
    assert "env:SECUREML_MISSING" in str(err)
    assert "value-that-must-not-leak" not in str(err)
    assert "also-secret" not in str(err)


def test_env_fallback_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_B", "env")
    km = KeyManager(backend=DictBackend(), use_env_fallback=False)
    with pytest.raises(SecretNotFoundError, match=r"tried: dict:b\)"):
        km.get_secret("b")


def test_empty_env_var_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_B", "")
    with pytest.raises(SecretNotFoundError):
        KeyManager().get_secret("b")


def test_env_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    km = KeyManager()
    monkeypatch.setenv("SECUREML_LATE", "set-after-construction")
    assert km.get_secret("late") == "set-after-construction"


@pytest.mark.parametrize(
    "outage", [VaultUnavailableError("down"), VaultSealedError("sealed")], ids=["down", "sealed"]
)
def test_outage_falls_through_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outage: Exception
) -> None:
    monkeypatch.setenv("SECUREML_A", "env")
    km = KeyManager(backend=DictBackend(fail=outage))
    with caplog.at_level(logging.WARNING, "secureml.key_management"):
        for _ in range(5):
            assert km.get_secret("a") == "env"
    assert len(caplog.records) == 1
    assert "falling back" in caplog.records[0].getMessage()


def test_outage_warning_repeats_after_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SECUREML_A", "env")
    backend = DictBackend({"a": "vault"}, fail=VaultUnavailableError("down"))
    km = KeyManager(backend=backend, cache_ttl=0)
    with caplog.at_level(logging.WARNING, "secureml.key_management"):
        km.get_secret("a")
        backend.fail = None
        assert km.get_secret("a") == "vault"
        backend.fail = VaultUnavailableError("down again")
        km.get_secret("a")
    assert len(caplog.records) == 2


def test_outage_with_nothing_behind_it_is_raised() -> None:
    km = KeyManager(backend=DictBackend(fail=VaultSealedError("sealed")))
    with pytest.raises(VaultSealedError, match="no fallback had 'a'") as caught:
        km.get_secret("a")
    assert isinstance(caught.value.__cause__, VaultSealedError)


def test_absent_in_primary_found_in_env_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SECUREML_A", "env")
    km = KeyManager(backend=DictBackend())
    with caplog.at_level(logging.WARNING, "secureml.key_management"):
        km.get_secret("a")
        km.get_secret("a")
        with pytest.raises(SecretNotFoundError):
            km.get_secret("nowhere")
    assert [r.getMessage() for r in caplog.records] == [
        "secret 'a' is not in dict:a; using a fallback (env:SECUREML_A)"
    ]


@pytest.mark.parametrize(
    "error", [PermissionDeniedError("denied"), AuthenticationError("bad token")]
)
def test_policy_and_auth_errors_are_never_masked(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setenv("SECUREML_A", "env")
    km = KeyManager(backend=DictBackend(fail=error), use_default_fallback=True)
    with pytest.raises(type(error)):
        km.get_secret("a")
    with pytest.raises(type(error)):
        km.get_secret("a", default="x")
    with pytest.raises(type(error)):
        km.get_encryption_key("a")


class TestKeysFromBackend:
    def test_bytes(self) -> None:
        key = os.urandom(32)
        assert KeyManager(backend=DictBackend({"k": key})).get_encryption_key("k") == key

    def test_text(self) -> None:
        key = os.urandom(32)
        km = KeyManager(backend=DictBackend({"h": key.hex(), "p": "hex:" + key.hex()}))
        assert km.get_encryption_key("h") == key
        assert km.get_encryption_key("p") == key

    def test_fields_are_not_key_material(self) -> None:
        km = KeyManager(backend=DictBackend({"d": {"a": "b"}}))
        with pytest.raises(KeyFormatError, match="dict, not key material"):
            km.get_encryption_key("d")

    def test_wrong_length(self) -> None:
        km = KeyManager(backend=DictBackend({"k": os.urandom(31)}))
        with pytest.raises(KeyFormatError, match="'k' from dict:k is 31 bytes long; 32"):
            km.get_encryption_key("k")


class TestSetSecret:
    def test_returns_true_and_stores(self) -> None:
        backend = DictBackend()
        km = KeyManager(backend=backend)
        assert km.set_secret("s", "v") is True
        assert km.set_secret("b", bytearray(b"\x00")) is True
        assert km.set_secret("m", memoryview(b"\x01")) is True
        assert km.set_secret("f", {"user": "u"}) is True
        assert backend.data == {"s": "v", "b": b"\x00", "m": b"\x01", "f": {"user": "u"}}

    def test_without_vault(self) -> None:
        with pytest.raises(ConfigurationError, match="no Vault is configured"):
            KeyManager().set_secret("s", "v")

    @pytest.mark.parametrize("value", [1, 1.5, None, ["a"], object()])
    def test_unsupported_types(self, value: object) -> None:
        with pytest.raises(TypeError, match="str, bytes or a mapping"):
            KeyManager(backend=DictBackend()).set_secret("s", value)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [{}, {"value": "x", "other": "y"}, {"": "x"}, {1: "x"}])
    def test_bad_mappings(self, value: dict[Any, Any]) -> None:
        with pytest.raises(ValueError, match="'s'"):
            KeyManager(backend=DictBackend()).set_secret("s", value)

    def test_errors_propagate(self) -> None:
        km = KeyManager(backend=DictBackend(fail=VaultUnavailableError("down")))
        with pytest.raises(VaultUnavailableError):
            km.set_secret("s", "v")


def test_backend_and_vault_settings_conflict() -> None:
    with pytest.raises(ConfigurationError, match="either"):
        KeyManager(vault_url="http://h:1", vault_token="t", backend=DictBackend())
    with pytest.raises(TypeError, match="SecretBackend"):
        KeyManager(backend=object())  # type: ignore[arg-type]


def test_env_backend_is_read_only() -> None:
    from secureml.key_management import UnsupportedOperationError

    env = EnvBackend({"SECUREML_X": "1"})
    assert env.get("x") == "1"
    with pytest.raises(UnsupportedOperationError):
        env.put("x", "2")
    with pytest.raises(UnsupportedOperationError):
        env.delete("x")
    with pytest.raises(UnsupportedOperationError, match="versions"):
        env.get("x", version=2)


def test_many_threads_one_warning_per_name(caplog: pytest.LogCaptureFixture) -> None:
    from concurrent.futures import ThreadPoolExecutor

    km = KeyManager(use_default_fallback=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(16) as pool:
            keys = set(pool.map(lambda _: km.get_encryption_key("shared"), range(64)))
    assert len(keys) == 1
    assert sum(w.category is SecurityWarning for w in caught) == 1
