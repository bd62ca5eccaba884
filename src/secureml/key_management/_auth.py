"""How a KeyManager logs in to Vault: one small object per auth method.

Each method turns its credentials into a Vault token through hvac. None of them keeps a
token; :mod:`._session` owns the token's lifecycle (renewal, re-login). Credentials never
appear in a ``repr``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from ._boundary import guarded_class
from ._validate import validate_name
from .errors import AuthenticationError, ConfigurationError

if TYPE_CHECKING:
    import hvac

__all__ = [
    "AppRoleAuth",
    "JWTAuth",
    "KubernetesAuth",
    "Login",
    "TokenAuth",
    "UserpassAuth",
    "VaultAuth",
]

KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class Login:
    """A token an auth method obtained, and what Vault said about it.

    Attributes:
        token: The Vault token (hidden from ``repr``).
        ttl: Seconds the token lives from now, as Vault reported; ``None`` if unknown.
        renewable: Whether ``auth/token/renew-self`` may extend it.
        token_type: ``service`` or ``batch`` (batch tokens are never renewed).
    """

    token: str = field(repr=False)
    ttl: float | None
    renewable: bool
    token_type: str = "service"  # noqa: S105 - a token kind, not a token


@runtime_checkable
class VaultAuth(Protocol):
    """An auth method. Implement ``login`` to add one."""

    @property
    def method(self) -> str:
        """A short name for status and logs, e.g. ``approle``."""
        ...

    @property
    def can_login_again(self) -> bool:
        """Whether ``login`` can mint a fresh token once the current one expires."""
        ...

    def login(self, client: hvac.Client) -> Login:
        """Obtain a token (``client`` carries the address, TLS and namespace)."""
        ...


def _login_result(response: Any, method: str) -> Login:
    auth = response.get("auth") if isinstance(response, dict) else None
    if not auth or not auth.get("client_token"):
        raise AuthenticationError(f"Vault answered the {method} login without a token")
    if not header_safe(str(auth["client_token"])):
        # It would go into every request's header: a newline there forges headers.
        raise AuthenticationError(
            f"Vault answered the {method} login with a token that is not header-safe text"
        )
    return Login(
        token=str(auth["client_token"]),
        ttl=float(auth.get("lease_duration") or 0) or None,
        renewable=bool(auth.get("renewable")),
        token_type=str(auth.get("token_type") or "service"),
    )


def header_safe(text: str) -> bool:
    """Printable ASCII without spaces: what an HTTP header can carry unchanged."""
    return text.isascii() and text.isprintable() and not any(c.isspace() for c in text)


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{what} must not be empty")
    return value.strip()


_USERNAME = re.compile(r"[A-Za-z0-9_.@+\-]+")


def _refuse_pickling(kind: str) -> NoReturn:
    raise TypeError(
        f"{kind} cannot be pickled (it holds a credential); pass each process the name of "
        "the environment variable or file that holds it instead"
    )


#: No token, secret id, password or JWT is longer; a bigger file is not a credential.
MAX_CREDENTIAL_BYTES = 64 * 1024


def read_credential_file(path: str) -> str:
    """The text of a credential file, stripped: a regular file of at most
    :data:`MAX_CREDENTIAL_BYTES` (a FIFO would block the reader, a device flood it; the
    path may come from a spec).

    Raises:
        OSError: It cannot be opened or read.
        ValueError: It is no regular file, or too big (the message ends a sentence
            that starts with the file's name).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags), "rb") as file:  # non-blocking: a FIFO opens now
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ValueError("is not a regular file")
        data = file.read(MAX_CREDENTIAL_BYTES + 1)
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise ValueError(f"is larger than any credential ({MAX_CREDENTIAL_BYTES} bytes at most)")
    return data.decode("utf-8", "replace").strip()


def _read_jwt(path: str, method: str) -> str:
    # Re-read at every login: Kubernetes rotates projected service-account tokens.
    try:
        jwt = read_credential_file(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {method} JWT file {path!r}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise ConfigurationError(f"the {method} JWT file {path!r} {exc}") from None
    if not jwt:
        raise ConfigurationError(f"the {method} JWT file {path!r} is empty")
    return jwt


@guarded_class
class TokenAuth:
    """A token you already have (what ``vault_token=`` means).

    It cannot be renewed into a new one once expired: expiry raises
    :class:`~secureml.key_management.AuthenticationError` saying so.

    Example:
        >>> KeyManager(vault_url=url, vault_auth=TokenAuth(os.environ["VAULT_TOKEN"]))
    """

    #: Where a worker finds this token: an ``AuthSpec``, set when it came from the
    #: environment or a spec (``_credentials`` reads it; it imports this module).
    _reference: object = None

    def __init__(self, token: str) -> None:
        token = _require_text(token, "vault token")
        if not header_safe(token):
            raise ConfigurationError(
                "the vault token contains whitespace, control or non-ASCII characters"
            )
        self._token = token

    @property
    def method(self) -> str:
        return "token"

    @property
    def can_login_again(self) -> bool:
        return False

    def login(self, client: hvac.Client) -> Login:
        # TTL and renewability are learned from lookup-self by the session.
        return Login(token=self._token, ttl=None, renewable=False)

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _refuse_pickling("TokenAuth")


@guarded_class
class _LoginMethod:
    """An auth method that logs in with credentials, so it can always log in again."""

    _method = ""
    #: Where a worker finds these credentials: an ``AuthSpec``, set when they came from
    #: the environment or a spec.
    _reference: object = None

    def __init__(self, mount: str) -> None:
        self._mount = validate_name(mount, what="auth mount")

    @property
    def method(self) -> str:
        return self._method

    @property
    def can_login_again(self) -> bool:
        return True

    def login(self, client: hvac.Client) -> Login:
        return _login_result(self._request_login(client), self._method)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _refuse_pickling(type(self).__name__)

    def _request_login(self, client: hvac.Client) -> Any:
        raise NotImplementedError


@guarded_class
class AppRoleAuth(_LoginMethod):
    """AppRole: a role ID and a secret ID (``auth/<mount>/login``).

    Example:
        >>> AppRoleAuth(role_id="…", secret_id="…")
    """

    _method = "approle"

    def __init__(self, role_id: str, secret_id: str, mount: str = "approle") -> None:
        self._role_id = _require_text(role_id, "role_id")
        self._secret_id = _require_text(secret_id, "secret_id")
        super().__init__(mount)

    def _request_login(self, client: hvac.Client) -> Any:
        return client.auth.approle.login(
            role_id=self._role_id,
            secret_id=self._secret_id,
            mount_point=self._mount,
            use_token=False,
        )

    def __repr__(self) -> str:
        return f"AppRoleAuth(role_id=***, secret_id=***, mount={self._mount!r})"


@guarded_class
class UserpassAuth(_LoginMethod):
    """Username and password (``auth/<mount>/login/<username>``).

    Example:
        >>> UserpassAuth("etl-bot", os.environ["ETL_PASSWORD"])
    """

    _method = "userpass"

    def __init__(self, username: str, password: str, mount: str = "userpass") -> None:
        self._username = _require_text(username, "username")
        if not _USERNAME.fullmatch(self._username) or ".." in self._username:
            # It goes into the login URL (auth/<mount>/login/<username>): a '/' or '..'
            # would send the password to another path.
            raise ConfigurationError(
                f"userpass username {self._username[:64]!r} may only use letters, digits "
                "and '_.@+-' (no '/' or '..')"
            )
        self._password = _require_text(password, "password")
        super().__init__(mount)

    def _request_login(self, client: hvac.Client) -> Any:
        return client.auth.userpass.login(
            username=self._username,
            password=self._password,
            mount_point=self._mount,
            use_token=False,
        )

    def __repr__(self) -> str:
        return f"UserpassAuth(username={self._username!r}, password=***, mount={self._mount!r})"


@guarded_class
class JWTAuth(_LoginMethod):
    """A signed JWT for a role (``auth/<mount>/login``): OIDC workload identity, CI, …

    Pass the token itself (``jwt=``) or a file that holds it (``jwt_path=``, re-read at
    every login, so rotated tokens are picked up).

    Example:
        >>> JWTAuth(role="trainer", jwt_path="/var/run/secrets/tokens/vault")
    """

    _method = "jwt"

    def __init__(
        self,
        role: str,
        jwt: str | None = None,
        jwt_path: str | None = None,
        mount: str = "jwt",
    ) -> None:
        self._role = _require_text(role, "role")
        if (jwt is None) == (jwt_path is None):
            raise ConfigurationError("JWTAuth needs exactly one of jwt= or jwt_path=")
        self._jwt = None if jwt is None else _require_text(jwt, "jwt")
        self._jwt_path = None if jwt_path is None else os.fspath(jwt_path)
        super().__init__(mount)

    def _current_jwt(self) -> str:
        if self._jwt is not None:
            return self._jwt
        return _read_jwt(str(self._jwt_path), self.method)

    def _request_login(self, client: hvac.Client) -> Any:
        return client.auth.jwt.jwt_login(
            role=self._role, jwt=self._current_jwt(), path=self._mount, use_token=False
        )

    def __repr__(self) -> str:
        source = f"jwt_path={self._jwt_path!r}" if self._jwt_path else "jwt=***"
        return f"JWTAuth(role={self._role!r}, {source}, mount={self._mount!r})"


@guarded_class
class KubernetesAuth(_LoginMethod):
    """A Kubernetes service-account token for a role (``auth/<mount>/login``).

    The token file is re-read at every login, since Kubernetes rotates it.

    Example:
        >>> KubernetesAuth(role="feature-pipeline")
    """

    _method = "kubernetes"

    def __init__(
        self, role: str, jwt_path: str = KUBERNETES_JWT_PATH, mount: str = "kubernetes"
    ) -> None:
        self._role = _require_text(role, "role")
        self._jwt_path = os.fspath(jwt_path)
        super().__init__(mount)

    def _request_login(self, client: hvac.Client) -> Any:
        return client.auth.kubernetes.login(
            role=self._role,
            jwt=_read_jwt(self._jwt_path, self.method),
            mount_point=self._mount,
            use_token=False,
        )

    def __repr__(self) -> str:
        return (
            f"KubernetesAuth(role={self._role!r}, jwt_path={self._jwt_path!r}, "
            f"mount={self._mount!r})"
        )
