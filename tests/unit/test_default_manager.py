"""The process-wide default manager: lazy, replaceable, thread-safe."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator

import pytest

import secureml
from secureml.key_management import (
    ConfigurationError,
    KeyManager,
    SecretNotFoundError,
    _default,
    configure_default_key_manager,
    get_default_key_manager,
    get_encryption_key,
)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    _default._slot.manager = None
    yield
    _default._slot.manager = None


def test_built_lazily_and_reused() -> None:
    assert _default._slot.manager is None
    first = get_default_key_manager()
    assert isinstance(first, KeyManager)
    assert get_default_key_manager() is first


def test_built_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_VAULT_URL", "http://127.0.0.1:8200")
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", "t")
    assert "vault_url='http://127.0.0.1:8200'" in repr(get_default_key_manager())


def test_configure_replaces_and_returns() -> None:
    old = get_default_key_manager()
    new = configure_default_key_manager(vault_path="other", use_env_fallback=False)
    assert new is not old
    assert get_default_key_manager() is new
    assert "vault_path='other'" in repr(new)


def test_failed_configure_keeps_the_old_default() -> None:
    old = configure_default_key_manager()
    with pytest.raises(ConfigurationError):
        configure_default_key_manager(vault_url="http://h:1")  # no token
    assert get_default_key_manager() is old


def test_configure_takes_exactly_key_managers_parameters() -> None:
    assert inspect.signature(configure_default_key_manager) == inspect.signature(KeyManager)
    assert secureml.configure_default_key_manager is configure_default_key_manager


def test_module_get_encryption_key_uses_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_DATA_ENCRYPTION_KEY", "hex:" + "11" * 32)
    configure_default_key_manager()
    assert get_encryption_key("data_encryption_key") == b"\x11" * 32
    assert get_encryption_key("data_encryption_key", encoding="hex") == "11" * 32
    assert secureml.get_encryption_key("data_encryption_key", 32, "base64") == (
        "ERERERERERERERERERERERERERERERERERERERERERE="
    )
    with pytest.raises(SecretNotFoundError):
        get_encryption_key()
    assert inspect.signature(get_encryption_key).parameters["key_name"].default == "master_key"


def test_concurrent_first_use_builds_one() -> None:
    seen: list[KeyManager] = []
    barrier = threading.Barrier(32)

    def grab() -> None:
        barrier.wait()
        seen.append(get_default_key_manager())

    threads = [threading.Thread(target=grab) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 32
    assert len({id(m) for m in seen}) == 1
