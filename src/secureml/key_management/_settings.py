"""A manager's settings: every argument checked once, into one frozen value.

:meth:`ManagerSettings.resolve` takes :class:`~secureml.key_management.KeyManager`'s
arguments, fills in what the environment says (``SECUREML_VAULT_URL``, ``VAULT_ADDR``
...), refuses contradictions, and returns what the core is built from. Nothing here does
I/O, and nothing secret shows in a ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from ._auth import VaultAuth
from ._config import VaultSettings, resolve_vault_settings
from ._devdefaults import DEVELOPMENT_VALUES, PRODUCTION_ENV_VAR, development_environment
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
from .backends.base import SecretBackend
from .errors import ConfigurationError

__all__ = ["ManagerSettings"]

AuditHook = Callable[[AccessEvent], object]


@dataclass(frozen=True)
class ManagerSettings:
    """Everything a manager is built from (see ``KeyManager`` for each meaning).

    Attributes:
        vault: How to reach Vault, or ``None`` (no Vault, or a custom ``backend``).
        backend: A custom primary source instead of Vault.
        vault_path: The folder under the KV mount.
        vault_mount: The KV engine's mount path.
        vault_kv_version: 1 or 2, or ``None`` to detect.
        use_env_fallback: Read ``SECUREML_<NAME>`` variables after the primary.
        use_default_fallback: Serve insecure dev defaults as a last resort.
        cache_ttl: Seconds a value is served from memory.
        cache_size: Most entries cached.
        max_stale: Seconds a cached value may be served during an outage.
        audit_hook: Called with every :class:`AccessEvent`.
        declared_keys: Names that may serve as keys without the managed-key label.
        declared_transit_keys: Transit keys whose format-1 messages may open.
        require_commitment: Refuse format-1 (not key-committing) messages.
    """

    vault: VaultSettings | None
    backend: SecretBackend | None = field(repr=False)
    vault_path: str
    vault_mount: str
    vault_kv_version: int | None
    use_env_fallback: bool
    use_default_fallback: bool
    cache_ttl: float
    cache_size: int
    max_stale: float
    audit_hook: AuditHook | None = field(repr=False)
    declared_keys: frozenset[str] = frozenset()
    declared_transit_keys: frozenset[str] = frozenset()
    require_commitment: bool = False

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # The Vault settings hold the credentials themselves, not a reference to them.
        raise TypeError("ManagerSettings cannot be pickled (they hold Vault credentials)")

    @classmethod
    def resolve(
        cls,
        *,
        vault_url: str | list[str] | None,
        vault_token: str | None,
        vault_path: str,
        use_env_fallback: bool,
        use_default_fallback: bool,
        vault_mount: str,
        vault_auth: VaultAuth | None,
        vault_namespace: str | None,
        vault_ca_cert: str | None,
        vault_client_cert: str | None,
        vault_client_key: str | None,
        vault_kv_version: int | None,
        verify: bool,
        timeout: float | None,
        retries: int | None,
        cache_ttl: float,
        cache_size: int,
        max_stale: float,
        audit_hook: AuditHook | None,
        backend: SecretBackend | None,
        declared_keys: Iterable[str] = (),
        declared_transit_keys: Iterable[str] = (),
        require_commitment: bool = False,
        login_jitter: float | None = None,
    ) -> ManagerSettings:
        """Check every argument and fill in the environment's Vault settings.

        Raises:
            ConfigurationError: Contradictory or unsafe settings.
            TypeError, ValueError: A malformed argument.
        """
        path = validate_path(vault_path, what="vault_path")
        mount = validate_name(vault_mount, what="vault_mount")
        env_fallback = check_flag(use_env_fallback, "use_env_fallback")
        default_fallback = check_flag(use_default_fallback, "use_default_fallback")
        other = development_environment() if default_fallback else None
        if other is not None:
            allowed = ", ".join(DEVELOPMENT_VALUES)
            raise ConfigurationError(
                f"use_default_fallback=True is refused because {PRODUCTION_ENV_VAR}="
                f"{other[:40]!r} is not a development environment (unset, or one of "
                f"{allowed}): dev defaults are public values, not secrets"
            )
        if vault_kv_version not in (None, 1, 2):
            raise ValueError(f"vault_kv_version must be 1, 2 or None; got {vault_kv_version!r}")
        vault: VaultSettings | None = None
        if backend is not None:
            if vault_url is not None or vault_token is not None or vault_auth is not None:
                raise ConfigurationError(
                    "pass either backend= or vault_url=/vault_token=/vault_auth="
                )
            # Decided once here, so no call pays for a runtime Protocol check.
            if not isinstance(backend, SecretBackend):
                raise TypeError("backend must implement the SecretBackend protocol")
        else:
            vault = resolve_vault_settings(
                url=vault_url,
                token=vault_token,
                auth=vault_auth,
                namespace=vault_namespace,
                ca_cert=vault_ca_cert,
                client_cert=vault_client_cert,
                client_key=vault_client_key,
                verify=verify,
                timeout=timeout,
                retries=retries,
                login_jitter=None if login_jitter is None else check_jitter(login_jitter),
            )
        ttl = check_seconds(cache_ttl, "cache_ttl")
        size = check_size(cache_size, "cache_size")
        stale = check_seconds(max_stale, "max_stale")
        if audit_hook is not None and not callable(audit_hook):
            raise TypeError("audit_hook must be callable with one AccessEvent")
        declared = check_names(declared_keys, "declared_keys")
        declared_transit = check_names(declared_transit_keys, "declared_transit_keys")
        return cls(
            vault=vault,
            backend=backend,
            vault_path=path,
            vault_mount=mount,
            vault_kv_version=vault_kv_version,
            use_env_fallback=env_fallback,
            use_default_fallback=default_fallback,
            cache_ttl=ttl,
            cache_size=size,
            max_stale=stale,
            audit_hook=audit_hook,
            declared_keys=declared,
            declared_transit_keys=declared_transit,
            require_commitment=check_flag(require_commitment, "require_commitment"),
        )
