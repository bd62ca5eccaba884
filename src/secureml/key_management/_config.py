"""Vault connection settings: explicit arguments first, then the environment.

Precedence for each setting: the argument, then ``SECUREML_VAULT_*``, then ``BAO_*``
(as OpenBao's own client prefers it), then ``VAULT_*``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigurationError

URL_VARS = ("SECUREML_VAULT_URL", "BAO_ADDR", "VAULT_ADDR")
TOKEN_VARS = ("SECUREML_VAULT_TOKEN", "BAO_TOKEN", "VAULT_TOKEN")
NAMESPACE_VARS = ("SECUREML_VAULT_NAMESPACE", "BAO_NAMESPACE", "VAULT_NAMESPACE")
CACERT_VARS = ("SECUREML_VAULT_CACERT", "BAO_CACERT", "VAULT_CACERT")

INSTALL_HINT = "install the Vault extra: pip install 'secureml[vault]'"


@dataclass(frozen=True)
class VaultSettings:
    """Where and how to reach Vault; the token is kept out of ``repr``.

    Attributes:
        url: Base address, e.g. ``https://vault.example.com:8200``.
        token: The Vault token sent as ``X-Vault-Token``.
        namespace: Vault Enterprise / OpenBao namespace, sent on every request.
        ca_cert: CA bundle file or directory to verify TLS against (system store if unset).
        timeout: Seconds to wait for each request.
    """

    url: str
    token: str = field(repr=False)
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 5.0


def _from_env(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"vault_url must be a str, not {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"vault_url {url!r} is not an http(s) URL like https://vault.example.com:8200"
        )
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and reprs; Vault never takes them that way.
        raise ConfigurationError(
            "vault_url must not carry credentials; pass the token as vault_token="
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"vault_url {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def _check_token(token: object) -> str:
    if not isinstance(token, str):
        raise TypeError(f"vault_token must be a str, not {type(token).__name__}")
    token = token.strip()
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        # Never echo the token: say what is wrong with it, not what it is.
        raise ConfigurationError(
            "vault_token is empty or contains whitespace or control characters"
        )
    return token


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
    return float(timeout)


def resolve_vault_settings(
    *,
    url: str | None,
    token: str | None,
    namespace: str | None,
    ca_cert: str | None,
    timeout: float,
    environ: Mapping[str, str] | None = None,
) -> VaultSettings | None:
    """Work out the Vault settings, or ``None`` when no Vault is configured.

    Vault is on when a URL is given or found in the environment. A token found only in
    the environment, with no URL anywhere, is ignored: ``VAULT_TOKEN`` is often set for
    the ``vault`` CLI alone.

    Raises:
        ConfigurationError: A URL with no token, a token with no URL (both given as
            arguments), a malformed URL or token, or hvac missing.
        TypeError: An argument has the wrong type.
    """
    env = os.environ if environ is None else environ
    checked_timeout = _check_timeout(timeout)
    resolved_url = url if url is not None else _from_env(env, URL_VARS)
    if resolved_url is None:
        if token is not None:
            raise ConfigurationError(
                "vault_token was given but no Vault URL: pass vault_url= or set "
                "SECUREML_VAULT_URL (or VAULT_ADDR)"
            )
        return None
    checked_url = _check_url(resolved_url)
    resolved_token = token if token is not None else _from_env(env, TOKEN_VARS)
    if resolved_token is None:
        raise ConfigurationError(
            f"Vault URL {checked_url} is configured but no token: pass vault_token= or set "
            "SECUREML_VAULT_TOKEN (or VAULT_TOKEN)"
        )
    if importlib.util.find_spec("hvac") is None:
        raise ConfigurationError(
            f"Vault URL {checked_url} is configured but hvac is missing: {INSTALL_HINT}"
        )
    resolved_ca = ca_cert if ca_cert is not None else _from_env(env, CACERT_VARS)
    if resolved_ca is not None and not os.path.exists(resolved_ca):
        raise ConfigurationError(f"vault_ca_cert {resolved_ca!r} does not exist")
    return VaultSettings(
        url=checked_url,
        token=_check_token(resolved_token),
        namespace=namespace if namespace is not None else _from_env(env, NAMESPACE_VARS),
        ca_cert=resolved_ca,
        timeout=checked_timeout,
    )
