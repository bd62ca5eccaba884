"""Vault settings from arguments and the environment. Construction never touches the network."""

from __future__ import annotations

import subprocess
import sys

import pytest

from secureml.key_management import ConfigurationError, KeyManager, TokenAuth
from secureml.key_management._config import VaultSettings, resolve_vault_settings

TOKEN = "hvs.super-secret-token-value"


def settings(**env: str) -> VaultSettings | None:
    return resolve_vault_settings(
        url=None, token=None, namespace=None, ca_cert=None, timeout=5.0, environ=env
    )


def test_no_url_means_no_vault() -> None:
    assert settings() is None
    assert settings(VAULT_TOKEN=TOKEN) is None
    assert "vault_url=None" in repr(KeyManager())


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"VAULT_ADDR": "https://v:1"}, "https://v:1"),
        ({"VAULT_ADDR": "https://v:1", "BAO_ADDR": "https://b:1"}, "https://b:1"),
        (
            {
                "VAULT_ADDR": "https://v:1",
                "BAO_ADDR": "https://b:1",
                "SECUREML_VAULT_URL": "https://s:1",
            },
            "https://s:1",
        ),
        ({"SECUREML_VAULT_URL": "", "VAULT_ADDR": "https://v:1"}, "https://v:1"),
    ],
)
def test_url_precedence(env: dict[str, str], url: str) -> None:
    resolved = settings(**env, VAULT_TOKEN=TOKEN)
    assert resolved is not None
    assert resolved.url == url


def token_of(resolved: object) -> str:
    auth = resolved.auth  # type: ignore[attr-defined]
    assert isinstance(auth, TokenAuth)
    return auth._token


def test_token_precedence() -> None:
    env = {"VAULT_ADDR": "https://v:1", "VAULT_TOKEN": "v", "BAO_TOKEN": "b"}
    assert token_of(settings(**env)) == "b"
    assert token_of(settings(**env, SECUREML_VAULT_TOKEN="s")) == "s"


def test_namespace_and_ca_from_env(tmp_path: pytest.TempPathFactory) -> None:
    ca = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.write_text("x")
    resolved = settings(
        VAULT_ADDR="https://v:1", VAULT_TOKEN=TOKEN, VAULT_NAMESPACE="team", VAULT_CACERT=str(ca)
    )
    assert resolved is not None
    assert resolved.namespace == "team"
    assert resolved.ca_cert == str(ca)


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_VAULT_URL", "https://env:1")
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", "env-token")
    km = KeyManager(vault_url="https://arg:2", vault_token="arg-token")
    assert "vault_url='https://arg:2'" in repr(km)
    assert token_of(km._core.primary.settings) == "arg-token"  # type: ignore[union-attr]


def test_env_configures_a_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200/")
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    assert "vault_url='http://127.0.0.1:8200'" in repr(KeyManager())


def test_url_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="no credentials"):
        KeyManager(vault_url="http://127.0.0.1:8200")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    with pytest.raises(ConfigurationError, match="VAULT_TOKEN"):
        KeyManager()


def test_explicit_token_without_url() -> None:
    with pytest.raises(ConfigurationError, match="no Vault URL") as caught:
        KeyManager(vault_token=TOKEN)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://vault:8200",
        "vault.example.com:8200",
        "https://",
        "https://user:pw@vault:8200",
        "https://vault:8200/?x=1",
        "https://vault:8200/#frag",
    ],
)
def test_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        KeyManager(vault_url=url, vault_token=TOKEN)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("token", ["", "   ", "two words", "line\nbreak", "tab\there"])
def test_malformed_tokens_are_not_echoed(token: str) -> None:
    with pytest.raises(ConfigurationError, match="vault_token") as caught:
        KeyManager(vault_url="http://127.0.0.1:8200", vault_token=token)
    assert token.strip() == "" or token not in str(caught.value)


def test_token_is_trimmed() -> None:
    km = KeyManager(vault_url="http://127.0.0.1:8200", vault_token=f"  {TOKEN}\n")
    assert token_of(km._core.primary.settings) == TOKEN  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"vault_url": 8200, "vault_token": TOKEN}, TypeError),
        ({"vault_url": "https://h:1", "vault_token": b"t"}, TypeError),
        ({"vault_url": "https://h:1", "vault_token": TOKEN, "timeout": 0}, ValueError),
        ({"vault_url": "https://h:1", "vault_token": TOKEN, "timeout": "5"}, TypeError),
        ({"vault_url": "https://h:1", "vault_token": TOKEN, "vault_kv_version": 3}, ValueError),
        ({"vault_path": "../up"}, ValueError),
        ({"vault_mount": ""}, ValueError),
        ({"use_env_fallback": "yes"}, TypeError),
        ({"use_default_fallback": 1}, TypeError),
        (
            {"vault_url": "https://h:1", "vault_token": TOKEN, "vault_ca_cert": "/no/such/ca.pem"},
            ConfigurationError,
        ),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        KeyManager(**kwargs)  # type: ignore[arg-type]


def test_empty_vault_path_is_the_mount_root() -> None:
    km = KeyManager(vault_url="https://h:1", vault_token=TOKEN, vault_path="")
    assert km._core.primary.locate("x") == "vault:secret/x"  # type: ignore[union-attr]


def test_missing_hvac_gives_install_hint() -> None:
    # sys.modules[name] = None is how Python spells "this module is not installed".
    code = """
import sys
sys.modules["hvac"] = None
from secureml.key_management import KeyManager, ConfigurationError
print(KeyManager().get_secret("x", default="env-chain-works"))
try:
    KeyManager(vault_url="http://127.0.0.1:8200", vault_token="t")
except ConfigurationError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "env-chain-works" in out
    assert "pip install 'secureml[vault]'" in out
