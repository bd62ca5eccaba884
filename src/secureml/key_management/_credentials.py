"""Credentials by reference: how a worker process logs in without being sent a secret.

An :class:`AuthSpec` names an auth method and *where* its credential lives (an
environment variable, a file), never the credential. It pickles, so it crosses to Spark
executors, Dask and Ray workers and spawned processes inside a
:class:`~secureml.key_management.KeyManagerSpec`; :meth:`AuthSpec.build` reads the
credential in the worker and returns the auth method.

:func:`reference_of` goes the other way, for ``KeyManager.spec()``: the reference of an
auth method a manager was built with, found from how it was built, or by matching its
credential (in constant time) against the variables secureml reads, or named by the
caller.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from ._auth import (
    KUBERNETES_JWT_PATH,
    AppRoleAuth,
    JWTAuth,
    KubernetesAuth,
    Login,
    TokenAuth,
    UserpassAuth,
    VaultAuth,
    read_credential_file,
)
from ._boundary import guarded_class
from ._validate import validate_name
from .errors import AuthenticationError, ConfigurationError

if TYPE_CHECKING:
    import hvac

__all__ = ["AuthSpec", "env_reference", "reference_of"]

AuthMethod = Literal["token", "approle", "userpass", "jwt", "kubernetes"]
_METHODS: Final = ("token", "approle", "userpass", "jwt", "kubernetes")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The variables secureml itself reads a token or AppRole secret id from (see _config).
TOKEN_VARS: Final = ("SECUREML_VAULT_TOKEN", "BAO_TOKEN", "VAULT_TOKEN")
ROLE_ID_VAR: Final = "SECUREML_VAULT_ROLE_ID"
SECRET_ID_VAR: Final = "SECUREML_VAULT_SECRET_ID"  # noqa: S105 - a variable name


def _env_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be the name of an environment variable (a str)")
    if not _ENV_NAME.fullmatch(name):
        # Not quoted: a credential passed here by mistake must not reach the message.
        raise ValueError(
            f"{what} is not an environment variable name (letters, digits, _): give the "
            "name of the variable, never the credential itself"
        )
    return name


def _file_path(path: object, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike)")
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ValueError(f"{what} must be a non-empty text path")
    # Absolute where the spec is made: a worker's working directory is not the driver's.
    return os.path.abspath(text)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{what} must be a non-empty str")
    return value.strip()


@guarded_class
@dataclass(frozen=True)
class AuthSpec:
    """How a worker logs in to Vault, with its credential only by reference.

    Make one with a constructor per method (:meth:`token`, :meth:`approle`,
    :meth:`userpass`, :meth:`jwt`, :meth:`kubernetes`); ``KeyManager.spec()`` makes
    one for you. It holds names of environment variables and paths of files, never a
    token, secret id, password or JWT, so pickling it is safe.

    Attributes:
        method: ``token``, ``approle``, ``userpass``, ``jwt`` or ``kubernetes``.
        mount: The auth method's mount path (``None`` for tokens).
        role: The JWT or Kubernetes role.
        role_id: The AppRole role id, if carried by value (an identifier, not a secret).
        role_id_env: The variable holding the AppRole role id instead.
        username: The userpass user name.
        env: The variable holding the credential (token, secret id, password or JWT).
        file: The file holding the credential (token or JWT; re-read at each JWT login).
    """

    method: AuthMethod
    mount: str | None = None
    role: str | None = None
    role_id: str | None = None
    role_id_env: str | None = None
    username: str | None = None
    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"auth method must be one of {', '.join(_METHODS)}")
        if (self.env is None) == (self.file is None):
            raise ConfigurationError(
                f"a {self.method} AuthSpec names exactly one of env= or file= for its credential"
            )
        if self.env is not None:
            _env_name(self.env, "env")
        if self.file is not None:
            _file_path(self.file, "file")
        if self.mount is not None:
            validate_name(self.mount, what="auth mount")
        # What build() needs, checked here rather than built as the text "None".
        if self.method in ("jwt", "kubernetes") and not isinstance(self.role, str):
            raise TypeError(f"a {self.method} AuthSpec needs role= (a str)")
        if self.method == "kubernetes" and self.file is None:
            raise ConfigurationError("a kubernetes AuthSpec reads its token from file=")
        if self.method == "userpass" and not isinstance(self.username, str):
            raise TypeError("a userpass AuthSpec needs username= (a str)")
        if self.method == "approle":
            if (self.role_id is None) == (self.role_id_env is None):
                raise ConfigurationError(
                    "an approle AuthSpec needs exactly one of role_id or role_id_env"
                )
            if self.role_id_env is not None:
                _env_name(self.role_id_env, "role_id_env")

    # -- one constructor per method ----------------------------------------------------

    @classmethod
    def token(cls, *, env: str | None = None, file: str | None = None) -> AuthSpec:
        """A token in variable ``env`` (e.g. ``VAULT_TOKEN``) or in ``file`` (e.g. a
        Vault Agent sink)."""
        return cls("token", env=env, file=None if file is None else _file_path(file, "file"))

    @classmethod
    def approle(
        cls,
        role_id: str | None = None,
        *,
        role_id_env: str | None = None,
        secret_id_env: str = SECRET_ID_VAR,
        mount: str = "approle",
    ) -> AuthSpec:
        """AppRole: the role id (by value, or in ``role_id_env``) and the variable
        holding the secret id."""
        if (role_id is None) == (role_id_env is None):
            raise ConfigurationError("AuthSpec.approle needs exactly one of role_id or role_id_env")
        return cls(
            "approle",
            mount=mount,
            role_id=None if role_id is None else _text(role_id, "role_id"),
            role_id_env=None if role_id_env is None else _env_name(role_id_env, "role_id_env"),
            env=secret_id_env,
        )

    @classmethod
    def userpass(cls, username: str, *, password_env: str, mount: str = "userpass") -> AuthSpec:
        """Username (by value) and the variable holding the password."""
        return cls("userpass", mount=mount, username=_text(username, "username"), env=password_env)

    @classmethod
    def jwt(
        cls,
        role: str,
        *,
        jwt_path: str | None = None,
        jwt_env: str | None = None,
        mount: str = "jwt",
    ) -> AuthSpec:
        """A JWT for ``role`` in a file (re-read at each login) or a variable."""
        return cls("jwt", mount=mount, role=_text(role, "role"), env=jwt_env, file=jwt_path)

    @classmethod
    def kubernetes(
        cls, role: str, *, jwt_path: str = KUBERNETES_JWT_PATH, mount: str = "kubernetes"
    ) -> AuthSpec:
        """The pod's service-account token file for ``role`` (re-read at each login)."""
        return cls("kubernetes", mount=mount, role=_text(role, "role"), file=jwt_path)

    # -- in the worker -----------------------------------------------------------------

    def build(self, environ: Mapping[str, str] | None = None) -> VaultAuth:
        """The auth method, its credential read from this process's environment or
        file system now (JWT and Kubernetes token files: at each login).

        Raises:
            ConfigurationError: The variable is unset or empty, or the file is missing;
                the message names it (never a value).
        """
        env = os.environ if environ is None else environ
        try:
            auth = self._build(env)
        except ConfigurationError as exc:
            if str(exc).startswith("this process"):
                raise
            # A credential refused as malformed: say where it was read from.
            raise ConfigurationError(f"{exc} (read from {self._source()})") from None
        auth._reference = self  # type: ignore[attr-defined]
        return auth

    def _source(self) -> str:
        if self.env is not None:
            return f"the environment variable {self.env}"
        return f"the file {self.file!r}"

    def _build(self, env: Mapping[str, str]) -> VaultAuth:
        auth: VaultAuth
        mount = self.mount or self.method
        if self.method == "token" and self.file is not None:
            auth = _TokenFileAuth(lambda: self._credential(env))
        elif self.method == "token":
            auth = TokenAuth(self._credential(env))
        elif self.method == "approle":
            role_id = self.role_id
            if role_id is None:
                role_id = self._variable(env, str(self.role_id_env), "AppRole role id")
            auth = AppRoleAuth(role_id, self._credential(env), mount=mount)
        elif self.method == "userpass":
            auth = UserpassAuth(str(self.username), self._credential(env), mount=mount)
        elif self.method == "jwt":
            if self.file is not None:
                self._require_file()
                auth = JWTAuth(str(self.role), jwt_path=self.file, mount=mount)
            else:
                auth = JWTAuth(str(self.role), jwt=self._credential(env), mount=mount)
        else:
            self._require_file()
            auth = KubernetesAuth(str(self.role), jwt_path=str(self.file), mount=mount)
        return auth

    def _credential(self, env: Mapping[str, str]) -> str:
        what = {
            "token": "Vault token",
            "approle": "AppRole secret id",
            "userpass": "password",
            "jwt": "JWT",
        }[self.method]
        if self.env is not None:
            return self._variable(env, self.env, what)
        path = self._require_file()
        try:
            text = read_credential_file(path)
        except OSError as exc:
            raise ConfigurationError(
                f"this process cannot read its {what} file {path!r}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"this process's {what} file {path!r} {exc}") from None
        if not text:
            raise ConfigurationError(f"this process's {what} file {path!r} is empty")
        return text

    def _variable(self, env: Mapping[str, str], name: str, what: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise ConfigurationError(
                f"this process has no {what}: set the environment variable {name} (the "
                "spec it was built from names that variable; it never carries the value)"
            )
        return value

    def _require_file(self) -> str:
        path = str(self.file)
        if not os.path.isfile(path):  # not a FIFO or a device, which could hang or flood
            raise ConfigurationError(
                f"this process has no {self.method} credential file {path!r} (the spec "
                "it was built from names that file; mount or write it on every worker)"
            )
        return path

    def __repr__(self) -> str:
        shown = [f"method={self.method!r}"]
        for name in ("mount", "role", "role_id_env", "username", "env", "file"):
            value = getattr(self, name)
            if value is not None:
                shown.append(f"{name}={value!r}")
        if self.role_id is not None:
            shown.append("role_id=***")
        return f"AuthSpec({', '.join(shown)})"


@guarded_class
class _TokenFileAuth(TokenAuth):
    """A token in a file another process keeps fresh (Vault Agent's sink), read again
    at each login: a token rotated there is picked up once the old one is refused or
    expires."""

    def __init__(self, read: Callable[[], str]) -> None:
        super().__init__(read())
        self._read = read

    @property
    def can_login_again(self) -> bool:
        return True

    def login(self, client: hvac.Client) -> Login:
        try:
            self._token = TokenAuth(self._read())._token
        except ConfigurationError as exc:
            # A sink being rewritten (or removed after reading): the session keeps the
            # token it has while that one is still valid.
            raise AuthenticationError(f"cannot log in again: {exc}") from None
        return Login(token=self._token, ttl=None, renewable=False)


def env_reference(env: Mapping[str, str]) -> AuthSpec | None:
    """Which credential ``env`` sets, as secureml reads it: AppRole
    (``SECUREML_VAULT_ROLE_ID`` and ``SECUREML_VAULT_SECRET_ID``) first, then the first
    of ``SECUREML_VAULT_TOKEN``, ``BAO_TOKEN``, ``VAULT_TOKEN``; ``None`` if none is.
    The one precedence both ``KeyManager()`` and ``KeyManagerSpec.from_env()`` follow.

    Raises:
        ConfigurationError: Only one of the two AppRole variables is set.
    """
    role_id, secret_id = env.get(ROLE_ID_VAR, "").strip(), env.get(SECRET_ID_VAR, "").strip()
    if role_id or secret_id:
        if not (role_id and secret_id):
            raise ConfigurationError(
                f"AppRole needs both {ROLE_ID_VAR} and {SECRET_ID_VAR}; only one is set"
            )
        return AuthSpec.approle(role_id_env=ROLE_ID_VAR, secret_id_env=SECRET_ID_VAR)
    for name in TOKEN_VARS:
        if env.get(name, "").strip():
            return AuthSpec.token(env=name)
    return None


def reference_of(
    auth: VaultAuth,
    *,
    credential_env: str | None = None,
    credential_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> AuthSpec:
    """Where a worker finds the credential of ``auth``: an :class:`AuthSpec`.

    In order: the variable or file the caller names (checked against the credential
    when it is set here); the reference ``auth`` was built from (the environment, a
    spec, a JWT or token file); one of the variables secureml reads (``VAULT_TOKEN``
    ...) holding the same credential.

    Raises:
        ConfigurationError: There is no way to refer to the credential (it was passed as
            a value), or the named variable or file holds a different one; the message
            names the fix.
        TypeError: A custom auth method (not one of secureml's).
    """
    env = os.environ if environ is None else environ
    if not isinstance(auth, (TokenAuth, AppRoleAuth, UserpassAuth, JWTAuth, KubernetesAuth)):
        raise TypeError(
            f"a manager with a custom auth method ({type(auth).__name__}) has no spec: "
            "build it in each worker, or use one of secureml's auth methods"
        )
    if credential_env is not None and credential_file is not None:
        raise ConfigurationError("name credential_env= or credential_file=, not both")
    secret = _credential_value(auth)
    named = _named(auth, secret, credential_env, credential_file, env)
    if named is not None:
        return named
    built: AuthSpec | None = getattr(auth, "_reference", None)
    if built is not None:
        return built
    if isinstance(auth, KubernetesAuth):
        return AuthSpec.kubernetes(auth._role, jwt_path=auth._jwt_path, mount=auth._mount)
    if isinstance(auth, JWTAuth) and auth._jwt_path is not None:
        return AuthSpec.jwt(auth._role, jwt_path=auth._jwt_path, mount=auth._mount)
    candidates: tuple[str, ...] = TOKEN_VARS if isinstance(auth, TokenAuth) else ()
    if isinstance(auth, AppRoleAuth):
        candidates = (SECRET_ID_VAR,)
    for name in candidates:
        if secret is not None and _same(env.get(name), secret):
            return _with_credential(auth, env=name, file=None, environ=env)
    what = _CREDENTIAL_NAMES[type(auth).__name__]
    raise ConfigurationError(
        f"this manager's {what} was passed as a value, and a spec never carries one: "
        f"call spec(credential_env='NAME') with the environment variable each worker reads "
        f"it from (or credential_file='PATH'), or build the manager from the environment"
    )


_CREDENTIAL_NAMES: Final = {
    "TokenAuth": "Vault token",
    "AppRoleAuth": "AppRole secret id",
    "UserpassAuth": "userpass password",
    "JWTAuth": "JWT",
    "KubernetesAuth": "service-account token",
}


def _credential_value(auth: VaultAuth) -> str | None:
    if isinstance(auth, TokenAuth):
        return auth._token
    if isinstance(auth, AppRoleAuth):
        return auth._secret_id
    if isinstance(auth, UserpassAuth):
        return auth._password
    if isinstance(auth, JWTAuth):
        return auth._jwt
    return None


def _same(candidate: str | None, secret: str) -> bool:
    return candidate is not None and hmac.compare_digest(
        candidate.strip().encode(), secret.encode()
    )


def _named(
    auth: VaultAuth,
    secret: str | None,
    credential_env: str | None,
    credential_file: str | None,
    env: Mapping[str, str],
) -> AuthSpec | None:
    """The reference the caller named, checked against the credential where it can be."""
    if credential_env is None and credential_file is None:
        return None
    if secret is not None and any(
        isinstance(given, str) and _same(given, secret)
        for given in (credential_env, credential_file)
    ):
        # The credential itself, passed by mistake: it would travel in the spec.
        raise ConfigurationError(
            "credential_env=/credential_file= take the name of the variable or the path "
            "of the file that holds the credential, never the credential itself"
        )
    if isinstance(auth, KubernetesAuth) or (isinstance(auth, JWTAuth) and auth._jwt is None):
        raise ConfigurationError(
            f"this manager's {auth.method} login already reads its token from a file; "
            "credential_env=/credential_file= are for credentials passed as values"
        )
    if isinstance(auth, (AppRoleAuth, UserpassAuth)) and credential_file is not None:
        raise ConfigurationError(
            f"a {auth.method} credential is referred to by a variable: use credential_env="
        )
    if credential_env is not None:
        name = _env_name(credential_env, "credential_env")
        here = env.get(name)
        if here is not None and here.strip() and secret is not None and not _same(here, secret):
            raise ConfigurationError(
                f"credential_env={name} holds a different credential here than this manager "
                "uses: name the variable that holds this manager's"
            )
        return _with_credential(auth, env=name, file=None, environ=env)
    path = _file_path(credential_file, "credential_file")
    if os.path.isfile(path) and secret is not None:
        try:
            here_text = Path(path).read_text()
        except OSError:
            here_text = None
        if here_text is not None and not _same(here_text, secret):
            raise ConfigurationError(
                f"credential_file={path!r} holds a different credential than this manager uses"
            )
    return _with_credential(auth, env=None, file=path, environ=env)


def _with_credential(
    auth: VaultAuth, *, env: str | None, file: str | None, environ: Mapping[str, str]
) -> AuthSpec:
    """The spec of ``auth`` with its credential at ``env`` or ``file``."""
    if isinstance(auth, TokenAuth):
        return AuthSpec.token(env=env, file=file)
    if isinstance(auth, AppRoleAuth):
        built: AuthSpec | None = getattr(auth, "_reference", None)
        role_env = built.role_id_env if built is not None else None
        if role_env is None and _same(environ.get(ROLE_ID_VAR), auth._role_id):
            role_env = ROLE_ID_VAR
        return AuthSpec.approle(
            None if role_env else auth._role_id,
            role_id_env=role_env,
            secret_id_env=str(env),
            mount=auth._mount,
        )
    if isinstance(auth, UserpassAuth):
        return AuthSpec.userpass(auth._username, password_env=str(env), mount=auth._mount)
    assert isinstance(auth, JWTAuth)  # noqa: S101 - the only other kind with a value
    return AuthSpec.jwt(auth._role, jwt_path=file, jwt_env=env, mount=auth._mount)
