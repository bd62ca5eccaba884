"""Vault connection settings: explicit arguments first, then the environment.

Precedence for each setting: the argument, then ``SECUREML_VAULT_*``, then ``BAO_*``
(as OpenBao's own client prefers it), then ``VAULT_*``. ``VAULT_SKIP_VERIFY`` is
deliberately not read: turning TLS verification off takes ``verify=False`` in code.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

from ._auth import AppRoleAuth, TokenAuth, VaultAuth, header_safe
from ._credentials import ROLE_ID_VAR, SECRET_ID_VAR, env_reference
from ._warnings import Once, warn_caller
from .errors import ConfigurationError, SecurityWarning

URL_VARS = ("SECUREML_VAULT_URL", "BAO_ADDR", "VAULT_ADDR")
NAMESPACE_VARS = ("SECUREML_VAULT_NAMESPACE", "BAO_NAMESPACE", "VAULT_NAMESPACE")
# Vault's CLI: VAULT_CACERT wins over VAULT_CAPATH.
CACERT_VARS = (
    "SECUREML_VAULT_CACERT",
    "BAO_CACERT",
    "VAULT_CACERT",
    "BAO_CAPATH",
    "VAULT_CAPATH",
)
CLIENT_CERT_VARS = ("SECUREML_VAULT_CLIENT_CERT", "BAO_CLIENT_CERT", "VAULT_CLIENT_CERT")
CLIENT_KEY_VARS = ("SECUREML_VAULT_CLIENT_KEY", "BAO_CLIENT_KEY", "VAULT_CLIENT_KEY")
TIMEOUT_VARS = ("SECUREML_VAULT_TIMEOUT", "BAO_CLIENT_TIMEOUT", "VAULT_CLIENT_TIMEOUT")
RETRIES_VARS = ("SECUREML_VAULT_MAX_RETRIES", "BAO_MAX_RETRIES", "VAULT_MAX_RETRIES")

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
MAX_RETRIES = 10

_T = TypeVar("_T")

INSTALL_HINT = "install the Vault extra: pip install 'secureml[vault]'"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_plain_http_warned = Once()


@dataclass(frozen=True)
class VaultSettings:
    """Where and how to reach Vault. Nothing secret shows in ``repr``.

    Attributes:
        url: Base address, e.g. ``https://vault.example.com:8200`` (the first node).
        auth: How to obtain a token (:class:`~secureml.key_management.TokenAuth`,
            :class:`~secureml.key_management.AppRoleAuth`, ...).
        namespace: Vault Enterprise / OpenBao namespace, sent on every request.
        ca_cert: CA bundle file, or a directory of hashed CA files, to verify TLS
            against (if unset: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, or certifi's bundle).
        client_cert: Client certificate (PEM) for mutual TLS.
        client_key: The client certificate's private key (PEM), if not in ``client_cert``.
        verify: Verify the server's TLS certificate. Off only when asked for in code.
        timeout: Seconds to connect, and to wait for each answer.
        retries: Extra rounds after a failure worth retrying (0 disables).
        urls: Every node's address, ``url`` first (a cluster without a load balancer).
        login_jitter: Most seconds to wait, at random, before this process's first login
            (``None``: not set, no wait).
    """

    url: str
    auth: VaultAuth
    namespace: str | None = None
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    urls: tuple[str, ...] = ()
    login_jitter: float | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # The auth method holds the credential itself, not a reference to it.
        raise TypeError("VaultSettings cannot be pickled (they hold Vault credentials)")


def env_setting(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``names`` set (not blank) in ``environ``, and its value, stripped."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _from_env(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    found = env_setting(environ, names)
    return None if found is None else found[1]


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"vault_url must be a str, not {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and reprs; Vault never takes them that way.
        # Checked first, so no later message quotes them.
        raise ConfigurationError(
            "vault_url must not carry credentials; pass the token as vault_token="
        ).in_cli_words(
            "the Vault address must not carry credentials; put the token in BAO_TOKEN "
            "(or VAULT_TOKEN) instead"
        )
    if not url.strip().isprintable() or any(c.isspace() for c in url.strip()):
        # A newline in a URL would forge lines in every log and repr that shows it.
        raise ConfigurationError(
            f"vault_url {url.strip()[:80]!r} holds control or space characters; give the "
            "address alone, like https://vault.example.com:8200 (a list: commas between)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"vault_url {url!r} is not an http(s) URL like https://vault.example.com:8200"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"vault_url {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def check_urls(value: object) -> tuple[str, ...]:
    """One address, or several (a list, or a comma-separated string) for a cluster."""
    if isinstance(value, str):
        parts: list[object] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise TypeError(f"vault_url must be a str or a list of str, not {type(value).__name__}")
    if not parts:
        raise ConfigurationError("vault_url is empty; give at least one address")
    urls = tuple(dict.fromkeys(_check_url(p) for p in parts))  # in order, no repeats
    if len({urlsplit(u).scheme for u in urls}) > 1:
        raise ConfigurationError(
            "vault_url mixes http:// and https:// addresses; a cluster is one or the other"
        )
    return urls


def check_token(token: object) -> str:
    """``token``, stripped, or an error that describes (never shows) what is wrong."""
    if not isinstance(token, str):
        raise TypeError(f"vault_token must be a str, not {type(token).__name__}")
    token = token.strip()
    if not token or not header_safe(token):
        raise ConfigurationError(
            "vault_token is empty or contains whitespace, control or non-ASCII characters"
        ).in_cli_words(
            "the Vault token (BAO_TOKEN, VAULT_TOKEN or ~/.vault-token) is empty or contains "
            "whitespace, control or non-ASCII characters"
        )
    return token


def parse_duration(text: object, source: str) -> float:
    """Seconds from a variable such as ``VAULT_CLIENT_TIMEOUT`` (``5``, ``5s``, ``500ms``)."""
    match = _DURATION.match(str(text))
    if match is None:
        raise ConfigurationError(
            f"{source}={text!r} is not a duration; use seconds such as 5, 5s or 500ms"
        )
    number, unit = float(match.group(1)), match.group(2) or "s"
    return _check_timeout(number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit], source)


def _check_timeout(timeout: object, source: str) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{source} must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"{source} must be a positive number of seconds; got {timeout}")
    return float(timeout)


def parse_count(text: object, source: str) -> int:
    """A whole number from a variable such as ``VAULT_MAX_RETRIES``."""
    if not str(text).strip().isdigit():
        raise ConfigurationError(f"{source}={text!r} is not a whole number")
    return _check_retries(int(str(text)), source)


def _check_retries(retries: object, source: str) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"{source} must be an int, not {type(retries).__name__}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"{source} must be 0 to {MAX_RETRIES}; got {retries}")
    return retries


def _check_namespace(namespace: object) -> str | None:
    if namespace is None:
        return None
    if not isinstance(namespace, str):
        raise TypeError(f"vault_namespace must be a str, not {type(namespace).__name__}")
    checked = namespace.strip().strip("/")
    if not checked or not header_safe(checked):
        raise ConfigurationError(
            f"vault_namespace {namespace!r} must be a path such as 'team' or 'org/team', "
            "without spaces or control characters"
        )
    return checked


def _check_file(path: object, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(path).__name__}")
    checked = os.fspath(path)
    if not os.path.exists(checked):
        raise ConfigurationError(f"{what} {checked!r} does not exist")
    return str(checked)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ::1, or an
    IPv4-mapped ::ffff:127.x address)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _warn_plain_http(url: str) -> None:
    """Plain HTTP beyond this machine sends the token in clear text: say so, once."""
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback(parts.hostname or ""):
        return
    if not _plain_http_warned.first(url):
        return
    warn_caller(
        f"Vault at {url} is reached over plain http: tokens and secrets cross the network "
        "unencrypted. Use https:// outside local development.",
        SecurityWarning,
    )


def _resolve_auth(
    token: str | None, auth: VaultAuth | None, env: Mapping[str, str]
) -> VaultAuth | None:
    if auth is not None:
        if token is not None:
            raise ConfigurationError("pass vault_auth= or vault_token=, not both")
        if not isinstance(auth, VaultAuth):
            raise TypeError(
                "vault_auth must be an auth method such as TokenAuth or AppRoleAuth, "
                f"not {type(auth).__name__}"
            )
        return auth
    if token is not None:
        return TokenAuth(check_token(token))
    reference = env_reference(env)
    if reference is None:
        return None
    found: VaultAuth
    if reference.method == "approle":
        found = AppRoleAuth(env[ROLE_ID_VAR].strip(), env[SECRET_ID_VAR].strip())
    else:
        found = TokenAuth(check_token(env[str(reference.env)]))
    # Where a worker finds the same credentials (KeyManager.spec()).
    found._reference = reference
    return found


def resolve_vault_settings(
    *,
    url: str | list[str] | tuple[str, ...] | None,
    token: str | None,
    auth: VaultAuth | None = None,
    namespace: str | None = None,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    verify: bool = True,
    timeout: float | None = None,
    retries: int | None = None,
    login_jitter: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> VaultSettings | None:
    """Work out the Vault settings, or ``None`` when no Vault is configured.

    Vault is on when a URL is given or found in the environment. Credentials found only
    in the environment, with no URL anywhere, are ignored: ``VAULT_TOKEN`` is often set
    for the ``vault`` CLI alone.

    Warns:
        SecurityWarning: ``verify=False``, or plain ``http://`` to a host other than
            loopback (once per address).

    Raises:
        ConfigurationError: A URL with no credentials, credentials with no URL (both
            given as arguments), malformed values, missing files, or hvac missing.
        TypeError: An argument has the wrong type.
    """
    env = os.environ if environ is None else environ
    checked_timeout = (
        _check_timeout(timeout, "timeout")
        if timeout is not None
        else _env_value(env, TIMEOUT_VARS, parse_duration, DEFAULT_TIMEOUT)
    )
    checked_retries = (
        _check_retries(retries, "retries")
        if retries is not None
        else _env_value(env, RETRIES_VARS, parse_count, DEFAULT_RETRIES)
    )
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, not {type(verify).__name__}")
    resolved_url = url if url is not None else _from_env(env, URL_VARS)
    if resolved_url is None:
        if token is not None or auth is not None:
            raise ConfigurationError(
                "Vault credentials were given but no Vault URL: pass vault_url= or set "
                "SECUREML_VAULT_URL (or VAULT_ADDR)"
            )
        return None
    urls = check_urls(resolved_url)
    checked_url = urls[0]
    resolved_auth = _resolve_auth(token, auth, env)
    if resolved_auth is None:
        raise ConfigurationError(
            f"Vault URL {checked_url} is configured but no credentials: pass vault_token= "
            "or vault_auth=, or set SECUREML_VAULT_TOKEN (or VAULT_TOKEN)"
        ).in_cli_words(
            f"Vault at {checked_url} is configured but no credentials: set BAO_TOKEN (or "
            "VAULT_TOKEN), or log in with bao login (it writes ~/.vault-token)"
        )
    if importlib.util.find_spec("hvac") is None:
        raise ConfigurationError(
            f"Vault URL {checked_url} is configured but hvac is missing: {INSTALL_HINT}"
        )
    resolved_ca = ca_cert if ca_cert is not None else _from_env(env, CACERT_VARS)
    if resolved_ca is not None and not verify:
        raise ConfigurationError(
            "vault_ca_cert is set but verify=False turns verification off; keep one"
        )
    cert = client_cert if client_cert is not None else _from_env(env, CLIENT_CERT_VARS)
    key = client_key if client_key is not None else _from_env(env, CLIENT_KEY_VARS)
    if key is not None and cert is None:
        raise ConfigurationError("vault_client_key needs vault_client_cert as well")
    if not verify:
        warn_caller(
            f"TLS verification of Vault at {checked_url} is OFF (verify=False): anyone on "
            "the network path can read the token and the secrets. Use vault_ca_cert= instead.",
            SecurityWarning,
        )
    for each in urls:
        _warn_plain_http(each)
    return VaultSettings(
        url=checked_url,
        auth=resolved_auth,
        namespace=_check_namespace(
            namespace if namespace is not None else _from_env(env, NAMESPACE_VARS)
        ),
        ca_cert=None if resolved_ca is None else _check_file(resolved_ca, "vault_ca_cert"),
        client_cert=None if cert is None else _check_file(cert, "vault_client_cert"),
        client_key=None if key is None else _check_file(key, "vault_client_key"),
        verify=verify,
        timeout=checked_timeout,
        retries=checked_retries,
        urls=urls,
        login_jitter=login_jitter,
    )


def _env_value(
    env: Mapping[str, str],
    names: tuple[str, ...],
    check: Callable[[object, str], _T],
    default: _T,
) -> _T:
    """The first of ``names`` set in ``env``, checked (errors name the variable)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return check(value, name)
    return default
