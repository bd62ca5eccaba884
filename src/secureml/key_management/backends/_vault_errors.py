"""hvac and requests exceptions -> our hierarchy, in one place.

The translated error is raised ``from None`` by callers: hvac keeps the server's response
body on its exceptions (``.text``, ``.json``), and a body must never ride along on an
error that may be logged. What the user needs (status, Vault's own error strings, the
address and path) goes into the message instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import (
    AuthenticationError,
    KeyManagementError,
    PermissionDeniedError,
    VaultError,
    VaultSealedError,
    VaultUnavailableError,
)


def format_errors(errors: object) -> str:
    """Vault's own error strings (a list, as in its JSON answers), in one bounded line:
    they name paths and problems, never secret values."""
    if not errors:
        return "no detail given"
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    return " ".join(text.split())[:300] or "no detail given"


def vault_errors(exc: BaseException) -> str:
    """The error strings hvac kept from Vault's answer, formatted."""
    return format_errors(getattr(exc, "errors", None))


_T = TypeVar("_T")


def translated(
    op: Callable[..., _T], *args: Any, url: str, action: str, where: str, login: bool = False
) -> _T:
    """Run ``op(*args)``; raise whatever it raises as our error, with no exception
    chained.

    hvac's exceptions carry the server's response body, and requests' carry the request
    with its ``X-Vault-Token`` header; ``raise ... from None`` would still keep them on
    ``__context__``. So the error is raised outside the handler, its chain cleared.
    """
    try:
        return op(*args)
    except KeyManagementError as exc:
        error: KeyManagementError = exc
    except Exception as exc:
        found = translate(exc, url=url, action=action, where=where, login=login)
        if found is None:
            raise
        error = found
    error.__cause__ = error.__context__ = None
    raise error


def translate(
    exc: BaseException, *, url: str, action: str, where: str, login: bool = False
) -> KeyManagementError | None:
    """Our error for ``exc`` (hvac or requests), or ``None`` if it is neither.

    Args:
        exc: What hvac/requests raised.
        url: The Vault address, for the message.
        action: What we were doing (``read``, ``write``, ``log in with approle``...).
        where: What it was done to (``vault:secret/secureml/x``).
        login: 400/401/403 on a login mean bad credentials, not a bad request.
    """
    if isinstance(exc, KeyManagementError):
        return exc
    target = f"{action} {where}".strip()
    return _from_hvac(exc, url, target, login) or _from_requests(exc, url, target)


def _from_hvac(  # noqa: PLR0911 - one return per kind of Vault answer
    exc: BaseException, url: str, target: str, login: bool
) -> KeyManagementError | None:
    import hvac.exceptions as hx

    if not isinstance(exc, hx.VaultError):
        return None
    detail = vault_errors(exc)
    if login and isinstance(exc, (hx.InvalidRequest, hx.Unauthorized, hx.Forbidden)):
        return AuthenticationError(
            f"Vault at {url} refused to {target}: {detail}; check the credentials, the "
            "role and the auth mount"
        )
    if isinstance(exc, hx.Forbidden):
        return PermissionDeniedError(
            f"Vault at {url} denied permission to {target}: the token's policies do not "
            "allow it (or the mount does not exist)"
        )
    if isinstance(exc, hx.Unauthorized):
        return AuthenticationError(f"Vault at {url} rejected the token; cannot {target}")
    if isinstance(exc, hx.VaultDown):
        if "sealed" in detail.lower():
            return VaultSealedError(
                f"Vault at {url} is sealed; cannot {target} until an operator unseals it"
            )
        return VaultUnavailableError(f"Vault at {url} is unavailable (503); cannot {target}")
    unavailable = (
        hx.InternalServerError,
        hx.BadGateway,
        hx.RateLimitExceeded,
        hx.VaultNotInitialized,
    )
    if isinstance(exc, unavailable):
        return VaultUnavailableError(
            f"Vault at {url} failed to {target} ({type(exc).__name__}: {detail})"
        )
    if isinstance(exc, hx.InvalidPath) and detail == "no detail given":
        served = _SERVED_BY_EVERY_VAULT.get(target) or (
            _TOKEN_LOOKUP if target.startswith("log in with token") else "its login path"
        )
        if login or target in _SERVED_BY_EVERY_VAULT:  # where Vault never 404s bare
            return VaultError(
                f"{url} is not a Vault or OpenBao server (404 on {served}); check the "
                "address and its port"
            )
    return VaultError(f"Vault at {url} refused to {target}: {detail}")


#: Requests every Vault answers (the paths, by what we were doing): a 404 there, with
#: none of Vault's error strings, means something else is listening at the address.
_TOKEN_LOOKUP = "/v1/auth/token/lookup-self"  # noqa: S105 - a path, not a password
_SERVED_BY_EVERY_VAULT = {"check the health of the server": "/v1/sys/health"}


def _from_requests(  # noqa: PLR0911 - one return per kind of failure
    exc: BaseException, url: str, target: str
) -> KeyManagementError | None:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        # Not "unavailable": a failed TLS check may be an attack, so no fallback.
        if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc):
            return VaultError(
                f"the server at {url} does not speak TLS (its answer to the handshake was "
                "not TLS: plain HTTP, or another protocol on that port): use its http:// "
                "address if it is Vault over plain HTTP, or check the port"
            )
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return VaultError(
                f"TLS verification of Vault at {url} failed: its certificate is not signed "
                "by a trusted CA or names another host; set vault_ca_cert= to the CA that "
                "signed it"
            ).in_cli_words(
                f"TLS verification of Vault at {url} failed: its certificate is not signed "
                "by a trusted CA or names another host; pass --ca-cert (or set "
                "VAULT_CACERT) with the CA that signed it"
            )
        return VaultError(
            f"the TLS handshake with Vault at {url} failed; if the server requires a client "
            "certificate, set vault_client_cert= and vault_client_key="
        ).in_cli_words(
            f"the TLS handshake with Vault at {url} failed; if the server requires a client "
            "certificate, set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY"
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        # A login is how every first request starts: naming it says nothing more.
        cannot = "" if target.startswith("log in") else f"cannot {target}; "
        return VaultUnavailableError(
            f"Vault at {url} is unreachable ({type(exc).__name__}); {cannot}check the "
            "address and that the server is running"
        )
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return VaultError(
            f"Vault at {url} answered the request to {target} with something that is not "
            "Vault's JSON (a proxy or a redirect?)"
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultError(f"the request to {target} at Vault {url} failed ({type(exc).__name__})")
    return None
