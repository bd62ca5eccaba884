"""Trust-boundary checks on configuration (issue 12): credentials never pickle,
usernames cannot rewrite the login path, URLs cannot forge log lines."""

from __future__ import annotations

import pickle

import pytest

from secureml.key_management import (
    AppRoleAuth,
    ConfigurationError,
    KeyManager,
    TokenAuth,
    UserpassAuth,
)
from secureml.key_management._config import VaultSettings


@pytest.mark.parametrize(
    "credential",
    [
        TokenAuth("s.secret-token"),
        AppRoleAuth("role", "secret-id-value"),
        UserpassAuth("alice", "hunter2"),
        VaultSettings("https://vault.example.com:8200", TokenAuth("s.secret-token")),
    ],
    ids=["token", "approle", "userpass", "settings"],
)
def test_credential_objects_refuse_pickling(credential: object) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(credential)


@pytest.mark.parametrize(
    "username", ["alice/../../../sys/health?x=", "a/b", "..", "a..b", "al ice", "a?b", "a#b"]
)
def test_a_userpass_username_cannot_rewrite_the_login_path(username: str) -> None:
    with pytest.raises(ConfigurationError, match="username"):
        UserpassAuth(username, "hunter2")


@pytest.mark.parametrize("username", ["alice", "etl-bot", "svc.reader", "a_b", "me@example.com"])
def test_ordinary_usernames_are_fine(username: str) -> None:
    UserpassAuth(username, "hunter2")


@pytest.mark.parametrize(
    "url",
    [
        "https://vault.example.com:8200\nFAKE LOG LINE",
        "https://vault.example.com:8200/\x1b[2J",
        "https://vault.exa mple.com:8200",
    ],
)
def test_control_characters_in_a_vault_url_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="control or space"):
        KeyManager(vault_url=url, vault_token="s.token")
