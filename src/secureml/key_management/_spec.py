"""KeyManagerSpec: a manager's settings as a value that pickles, for worker processes.

A :class:`~secureml.key_management.KeyManager` refuses to be pickled: it holds a
token, connections and locks bound to its process. What crosses to a Spark executor,
a Dask or Ray worker, a DataLoader worker or a spawned process is its spec: every
setting, with credentials only by reference (:class:`~._credentials.AuthSpec`).
:meth:`KeyManagerSpec.manager` then gives each process one manager per spec, built on
first use and built again in a forked child, so the thousand tasks of one executor
share one cache and one login.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ._boundary import guarded_class
from ._config import (
    CACERT_VARS,
    CLIENT_CERT_VARS,
    CLIENT_KEY_VARS,
    NAMESPACE_VARS,
    RETRIES_VARS,
    TIMEOUT_VARS,
    URL_VARS,
    _check_retries,
    _check_timeout,
    check_urls,
    env_setting,
    parse_count,
    parse_duration,
)
from ._credentials import ROLE_ID_VAR, SECRET_ID_VAR, AuthSpec, env_reference, reference_of
from ._process import reset_after_fork
from ._status import AccessEvent
from ._validate import (
    check_flag,
    check_jitter,
    check_names,
    check_seconds,
    check_size,
    validate_name,
    validate_path,
)
from ._warnings import warn_caller
from .errors import ConfigurationError, SecurityWarning

if TYPE_CHECKING:
    from ._manager import KeyManager

__all__ = ["KeyManagerSpec"]

logger = logging.getLogger("secureml.key_management")

#: Seconds a worker built from a spec waits at most, at random, before its first login.
DEFAULT_LOGIN_JITTER = 0.5


@guarded_class
@dataclass(frozen=True, kw_only=True)
class KeyManagerSpec:
    """Every setting of a :class:`~secureml.key_management.KeyManager`, with
    credentials only by reference: safe to pickle and send to worker processes.

    Get one from a manager (:meth:`KeyManager.spec`), from the environment
    (:meth:`from_env`), or by keywords (the manager's, with ``auth=`` an
    :class:`AuthSpec` instead of a token). In the worker, :meth:`manager` returns this
    process's manager for the spec.

    Attributes:
        vault_url: The Vault nodes' addresses (``None``: the worker's environment says).
        auth: How the worker logs in (``None``: as the worker's environment says).
        login_jitter: Most seconds a worker waits, at random, before its first login,
            so that many workers started at once spread their logins (0: no wait).

    The other attributes are :class:`KeyManager`'s arguments of the same names; a
    ``None`` means: as the worker's environment says.

    Example:
        >>> spec = km.spec()                          # doctest: +SKIP
        >>> def encrypt_partition(batches):           # runs on an executor
        ...     km = spec.manager()                   # one per process, one login
        ...     for batch in batches:
        ...         yield km.encrypt(batch, key_name="datasets/key")
    """

    vault_url: tuple[str, ...] | None = None
    auth: AuthSpec | None = None
    vault_path: str = "secureml"
    use_env_fallback: bool = True
    use_default_fallback: bool = False
    vault_mount: str = "secret"
    vault_namespace: str | None = None
    vault_ca_cert: str | None = None
    vault_client_cert: str | None = None
    vault_client_key: str | None = None
    vault_kv_version: int | None = None
    verify: bool = True
    timeout: float | None = None
    retries: int | None = None
    cache_ttl: float = 60.0
    cache_size: int = 1024
    max_stale: float = 3600.0
    # Not compared with the rest: a hook cloudpickled by value is a new object in each
    # unpickled copy of the spec; its manager is found by its pickle (_hook_identity).
    audit_hook: Callable[[AccessEvent], object] | None = field(
        default=None, repr=False, compare=False
    )
    declared_keys: frozenset[str] = frozenset()
    declared_transit_keys: frozenset[str] = frozenset()
    require_commitment: bool = False
    login_jitter: float = DEFAULT_LOGIN_JITTER

    def __post_init__(self) -> None:
        # Checked here, where the spec is made, rather than in a worker far away.
        checked: dict[str, Any] = {
            "vault_path": validate_path(self.vault_path, what="vault_path"),
            "vault_mount": validate_name(self.vault_mount, what="vault_mount"),
            "use_env_fallback": check_flag(self.use_env_fallback, "use_env_fallback"),
            "use_default_fallback": check_flag(self.use_default_fallback, "use_default_fallback"),
            "verify": check_flag(self.verify, "verify"),
            "require_commitment": check_flag(self.require_commitment, "require_commitment"),
            "cache_ttl": check_seconds(self.cache_ttl, "cache_ttl"),
            "cache_size": check_size(self.cache_size, "cache_size"),
            "max_stale": check_seconds(self.max_stale, "max_stale"),
            "login_jitter": check_jitter(self.login_jitter),
            "declared_keys": check_names(self.declared_keys, "declared_keys"),
            "declared_transit_keys": check_names(
                self.declared_transit_keys, "declared_transit_keys"
            ),
        }
        if self.vault_url is not None:
            checked["vault_url"] = check_urls(self.vault_url)
        if self.timeout is not None:
            checked["timeout"] = _check_timeout(self.timeout, "timeout")
        if self.retries is not None:
            checked["retries"] = _check_retries(self.retries, "retries")
        if self.auth is not None and not isinstance(self.auth, AuthSpec):
            raise TypeError(
                "auth must be an AuthSpec (credentials by reference), such as "
                "AuthSpec.token(env='VAULT_TOKEN'); a spec never carries a credential"
            )
        if self.vault_kv_version not in (None, 1, 2):
            raise ValueError("vault_kv_version must be 1, 2 or None")
        if self.audit_hook is not None and not callable(self.audit_hook):
            raise TypeError("audit_hook must be callable with one AccessEvent")
        for name in ("vault_namespace", "vault_ca_cert", "vault_client_cert", "vault_client_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    # -- making one --------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **settings: Any) -> KeyManagerSpec:
        """The spec of the manager ``KeyManager()`` would build from this environment:
        the Vault address, namespace, TLS files, timeout and retries it sets, and a
        reference to the variables that hold the credential (AppRole's
        ``SECUREML_VAULT_ROLE_ID``/``SECUREML_VAULT_SECRET_ID``, else the first of
        ``SECUREML_VAULT_TOKEN``, ``BAO_TOKEN``, ``VAULT_TOKEN`` that is set).

        ``settings`` override any attribute (``vault_path="ml"`` ...).

        Raises:
            ConfigurationError: A Vault address is set but no credential variable is.
        """
        env = os.environ if environ is None else environ
        found: dict[str, Any] = {}
        url = env_setting(env, URL_VARS)
        if url is not None:
            found["vault_url"] = url[1]
            if "auth" not in settings:  # an auth= given wins over the environment's
                found["auth"] = _auth_from_env(env, url[1])
        for name, names in (
            ("vault_namespace", NAMESPACE_VARS),
            ("vault_ca_cert", CACERT_VARS),
            ("vault_client_cert", CLIENT_CERT_VARS),
            ("vault_client_key", CLIENT_KEY_VARS),
        ):
            value = env_setting(env, names)
            if value is not None:
                found[name] = value[1]
        for name, names, parse in (
            ("timeout", TIMEOUT_VARS, parse_duration),
            ("retries", RETRIES_VARS, parse_count),
        ):
            text = env_setting(env, names)
            if text is not None:
                found[name] = parse(text[1], text[0])
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"KeyManagerSpec has no setting {sorted(unknown)[0]!r}")
        return cls(**{**found, **settings})

    def __getstate__(self) -> dict[str, Any]:
        # The hook's identity is worked out again where the spec lands (_hook_identity).
        return {k: v for k, v in self.__dict__.items() if k != "_hook_key"}

    def replace(self, **changes: Any) -> KeyManagerSpec:
        """A copy with ``changes`` (e.g. ``cache_ttl=300``), checked as a new spec is."""
        return replace(self, **changes)

    # -- in the worker -----------------------------------------------------------------

    def manager(self) -> KeyManager:
        """This process's manager for this spec: built on first use (its credential
        read here, from the variable or file the spec names), the same one for every
        later call in this process, and built again in a child this process forks.

        Thread-safe: threads asking at once get the same manager.

        Raises:
            ConfigurationError: This process lacks the credential the spec refers to
                (the message names the variable or file), or the settings are refused
                here (e.g. dev defaults outside development).
        """
        return _managers.get(self)

    def new_manager(self) -> KeyManager:
        """A manager of its own for this spec, not shared with :meth:`manager`'s."""
        auth = None if self.auth is None else self.auth.build()
        return _facade()(
            vault_url=None if self.vault_url is None else list(self.vault_url),
            vault_auth=auth,
            vault_path=self.vault_path,
            use_env_fallback=self.use_env_fallback,
            use_default_fallback=self.use_default_fallback,
            vault_mount=self.vault_mount,
            vault_namespace=self.vault_namespace,
            vault_ca_cert=self.vault_ca_cert,
            vault_client_cert=self.vault_client_cert,
            vault_client_key=self.vault_client_key,
            vault_kv_version=self.vault_kv_version,
            verify=self.verify,
            timeout=self.timeout,
            retries=self.retries,
            cache_ttl=self.cache_ttl,
            cache_size=self.cache_size,
            max_stale=self.max_stale,
            audit_hook=self.audit_hook,
            declared_keys=self.declared_keys,
            declared_transit_keys=self.declared_transit_keys,
            require_commitment=self.require_commitment,
            login_jitter=self.login_jitter,
        )


#: The facade's class. It registers itself when imported (importing this module imports
#: the package, so it is always there), as this module sits below it.
_manager_class: type[KeyManager] | None = None


def register_manager_class(cls: type[KeyManager]) -> None:
    """Called once by the facade: the class :meth:`KeyManagerSpec.new_manager` builds."""
    global _manager_class  # noqa: PLW0603 - set once, at import
    _manager_class = cls


def _facade() -> type[KeyManager]:
    if _manager_class is None:  # pragma: no cover - the package imports the facade
        raise RuntimeError("import secureml.key_management before building managers")
    return _manager_class


def _auth_from_env(env: Mapping[str, str], url: str) -> AuthSpec:
    """The reference to the credential variables set in ``env`` (as ``KeyManager()``
    reads them: :func:`~._credentials.env_reference`)."""
    reference = env_reference(env)
    if reference is not None:
        return reference
    raise ConfigurationError(
        f"Vault URL {url} is set but no credential variable: set SECUREML_VAULT_TOKEN (or "
        f"VAULT_TOKEN), or {ROLE_ID_VAR} and {SECRET_ID_VAR}, or pass auth=AuthSpec..."
    )


def spec_of(
    manager: KeyManager,
    *,
    credential_env: str | None = None,
    credential_file: str | None = None,
) -> KeyManagerSpec:
    """:meth:`KeyManager.spec`: the settings of ``manager``, credentials by reference."""
    settings = manager._core.settings
    if settings.backend is not None:
        raise ConfigurationError(
            "a manager over a custom backend= has no spec (the backend may hold anything): "
            "build the manager in each worker instead"
        )
    vault = settings.vault
    if vault is not None and not vault.verify:
        warn_caller(
            "this spec carries verify=False to every worker: they will not check Vault's "
            "TLS certificate either (and warn only on their own stderr)",
            SecurityWarning,
        )
    common: dict[str, Any] = {
        "vault_path": settings.vault_path,
        "use_env_fallback": settings.use_env_fallback,
        "use_default_fallback": settings.use_default_fallback,
        "vault_mount": settings.vault_mount,
        "vault_kv_version": settings.vault_kv_version,
        "cache_ttl": settings.cache_ttl,
        "cache_size": settings.cache_size,
        "max_stale": settings.max_stale,
        "audit_hook": settings.audit_hook,
        "declared_keys": settings.declared_keys,
        "declared_transit_keys": settings.declared_transit_keys,
        "require_commitment": settings.require_commitment,
    }
    if vault is None:
        if credential_env is not None or credential_file is not None:
            raise ConfigurationError("this manager has no Vault, so no credential to refer to")
        return KeyManagerSpec(**common, vault_url=None, auth=None)
    return KeyManagerSpec(
        **common,
        vault_url=vault.urls,
        auth=reference_of(
            vault.auth, credential_env=credential_env, credential_file=credential_file
        ),
        vault_namespace=vault.namespace,
        vault_ca_cert=_absolute(vault.ca_cert),
        vault_client_cert=_absolute(vault.client_cert),
        vault_client_key=_absolute(vault.client_key),
        verify=vault.verify,
        timeout=vault.timeout,
        retries=vault.retries,
        login_jitter=DEFAULT_LOGIN_JITTER if vault.login_jitter is None else vault.login_jitter,
    )


def _absolute(path: str | None) -> str | None:
    """A path as the worker must see it: absolute (its working directory is its own)."""
    return None if path is None else os.path.abspath(path)


#: Managers one process keeps for its specs; past this, the oldest goes (and a warning
#: says that specs differ from task to task, which costs a login each).
MAX_MANAGERS = 64


class _PerProcess:
    """One manager per spec in this process; emptied in a forked child (whose managers
    must be its own), checked by pid as well for forks that bypass Python's hooks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._managers: dict[tuple[KeyManagerSpec, object], KeyManager] = {}
        self._pid = os.getpid()
        self._warned = False
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: none of the parent's managers (the child builds its own)."""
        self._lock = threading.Lock()
        self._managers = {}
        self._pid = os.getpid()

    def get(self, spec: KeyManagerSpec) -> KeyManager:
        if self._pid != os.getpid():  # forked behind the hooks' back
            self.after_fork()
        key = (spec, _hook_identity(spec))
        found = self._managers.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._managers.get(key)
            if found is None:
                if len(self._managers) >= MAX_MANAGERS:
                    del self._managers[next(iter(self._managers))]
                    self._warn_once()
                found = self._managers[key] = spec.new_manager()
            return found

    def _warn_once(self) -> None:
        if self._warned:
            return
        self._warned = True
        logger.warning(
            "spec.manager() has built %d managers in this process: its specs differ from "
            "task to task (an audit_hook that pickles differently each time?), and each "
            "new one logs in; make the hook an importable module-level function",
            MAX_MANAGERS,
        )

    def clear(self) -> None:
        with self._lock:
            self._managers = {}


def _hook_identity(spec: KeyManagerSpec) -> object:
    """What makes two audit hooks the same hook: the digest of their pickle (a function
    by its import path, a bound method with its object, a closure or lambda by value
    through cloudpickle, which shipped it), so copies unpickled from one spec match and
    different hooks never do; the hook object itself if it does not pickle. Worked out
    once per spec object."""
    known = spec.__dict__.get("_hook_key")
    if known is not None:
        return known
    hook = spec.audit_hook
    key: object = None
    if hook is not None:
        key = ("object", id(hook))  # the spec and its manager keep the hook: its id stays its own
        for name in ("pickle", "cloudpickle"):
            try:
                dumps = importlib.import_module(name).dumps
                key = (name, hashlib.sha256(dumps(hook, protocol=4)).digest())
                break
            except Exception:  # noqa: S112 - the next way, or the object itself
                continue
    object.__setattr__(spec, "_hook_key", key if key is not None else ())
    return spec.__dict__["_hook_key"]


_managers = _PerProcess()
