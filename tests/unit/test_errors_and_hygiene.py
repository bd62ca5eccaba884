"""The exception hierarchy, and what a manager shows of itself."""

from __future__ import annotations

import copy
import pickle

import pytest

import secureml.key_management as km
from secureml.key_management import errors
from secureml.key_management._config import VaultSettings

TOKEN = "hvs.never-show-this-token"

HIERARCHY = {
    "ConfigurationError": ("KeyManagementError", ValueError),
    "SecretNotFoundError": ("KeyManagementError", KeyError, LookupError, ValueError),
    "KeyFormatError": ("KeyManagementError", ValueError),
    "VaultError": ("KeyManagementError",),
    "VaultUnavailableError": ("VaultError",),
    "VaultSealedError": ("VaultUnavailableError", "VaultError"),
    "PermissionDeniedError": ("VaultError",),
    "AuthenticationError": ("VaultError",),
    "UnsupportedOperationError": ("KeyManagementError",),
    "InvalidCiphertextError": ("KeyManagementError",),
}


@pytest.mark.parametrize(("name", "bases"), HIERARCHY.items())
def test_hierarchy(name: str, bases: tuple[object, ...]) -> None:
    cls = getattr(errors, name)
    assert getattr(km, name) is cls
    for base in bases:
        resolved = getattr(errors, base) if isinstance(base, str) else base
        assert issubclass(cls, resolved)  # type: ignore[arg-type]
    assert issubclass(cls, Exception)


def test_security_warning() -> None:
    assert issubclass(km.SecurityWarning, UserWarning)
    assert not issubclass(km.SecurityWarning, errors.KeyManagementError)


def test_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc


def test_not_found_message_is_not_quoted_and_pickles() -> None:
    err = errors.SecretNotFoundError("api_key", ["vault:secret/secureml/api_key"])
    assert str(err) == "secret 'api_key' not found (tried: vault:secret/secureml/api_key)"
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert str(back) == str(err)
    assert back.sources_tried == err.sources_tried
    with pytest.raises(KeyError):
        raise err


def test_repr_shows_settings_never_the_token() -> None:
    manager = km.KeyManager(
        vault_url="https://vault.example.com:8200", vault_token=TOKEN, vault_path="ml"
    )
    text = repr(manager)
    assert text == (
        "KeyManager(vault_url='https://vault.example.com:8200', vault_path='ml', "
        "vault_mount='secret', use_env_fallback=True, use_default_fallback=False)"
    )
    assert TOKEN not in repr(manager._core.primary)
    assert TOKEN not in repr(VaultSettings("https://v:1", km.TokenAuth(TOKEN)))


def test_manager_refuses_pickling_and_copying() -> None:
    manager = km.KeyManager(vault_url="https://v:8200", vault_token=TOKEN)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(manager)
    with pytest.raises(TypeError):
        copy.copy(manager)
