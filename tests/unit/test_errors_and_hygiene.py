"""The exception hierarchy, and what a manager shows of itself."""

from __future__ import annotations

import copy
import json
import pickle
import urllib.parse
from typing import Any

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


# -- what a refusal echoes back ------------------------------------------------------------


@pytest.mark.parametrize(
    "echo",
    [
        lambda v: v,
        lambda v: json.dumps(v)[1:-1],
        lambda v: json.dumps(json.dumps({"password": v}))[1:-1],  # a JSON request, quoted in JSON
        lambda v: (  # Go's encoder (Vault's)
            json.dumps(v)[1:-1]
            .replace("&", "\\u0026")
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
        ),
        lambda v: urllib.parse.quote(v, safe=""),
        urllib.parse.quote_plus,
    ],
    ids=["as-sent", "json", "json-twice", "go-json", "percent", "form"],
)
def test_a_refusal_is_cleared_of_the_credentials_however_it_echoes_them(echo: Any) -> None:
    from secureml.key_management.backends._vault_http import Answer
    from secureml.key_management.backends._vault_transport import _forget_echoes

    password, token = 'pw&"<x> y/1234', "s.token-0123456789"
    errors = [f"bad request: {echo(password)} {echo(token)}"]
    for body in (json.dumps({"errors": errors}).encode(), errors[0].encode()):  # JSON, or not
        answer = Answer(400, {}, body, "http://v/", "Bad Request")
        _forget_echoes(answer, token, {}, {"json": {"password": password}})
        text = answer._content.decode()
        assert "1234" not in text
        assert "0123456789" not in text
        assert "[redacted]" in text
