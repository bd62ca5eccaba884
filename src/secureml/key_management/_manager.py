"""KeyManager: the lookup chain, key encodings and derivation.

Policy lives here (which source is asked, in what order, what a miss or an outage
means, how key material is decoded); I/O lives in the backends.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal, NoReturn, TypeVar, overload

from ._auth import VaultAuth
from ._cache import ABSENT, CacheEntry, SecretCache
from ._config import resolve_vault_settings
from ._counters import BACKEND_READS, HITS, MISSES, STALE, Counters
from ._derivation import hkdf_sha256
from ._devdefaults import (
    PRODUCTION_ENV_VAR,
    dev_default_key,
    dev_default_secret,
    running_in_production,
)
from ._encoding import (
    MIN_KEY_BYTES,
    Encoding,
    check_encoding,
    check_key_bytes,
    check_length,
    decode_key_text,
    encode_key,
)
from ._encryption import Encryption
from ._lifecycle import KeyLifecycle, check_version
from ._names import validate_name, validate_path
from ._status import AccessEvent, KeyManagerStats, KeyManagerStatus
from ._transit import TransitKeys
from ._warnings import warn_caller
from .backends.base import SecretBackend, SecretValue, VersionedSecretBackend
from .backends.env import EnvBackend
from .backends.vault import VALUE_FIELD, VaultBackend
from .errors import (
    AuthenticationError,
    ConfigurationError,
    KeyFormatError,
    KeyManagementError,
    PermissionDeniedError,
    SecretNotFoundError,
    SecurityWarning,
    UnsupportedOperationError,
    VaultUnavailableError,
)

__all__ = ["KeyManager"]

logger = logging.getLogger("secureml.key_management")

_T = TypeVar("_T")


class KeyManager(KeyLifecycle, Encryption):
    """Secrets and encryption keys from Vault, the environment, or dev defaults.

    A lookup asks, in order: Vault (when configured), the environment variable
    ``SECUREML_<NAME>`` (when ``use_env_fallback``), the caller's ``default=``, and a
    deterministic development default (only when ``use_default_fallback``). The first
    that has the secret wins; if none has it, :class:`SecretNotFoundError` lists what was
    tried. Vault being unreachable, sealed or without the secret moves on to the next
    source (logged once, not per call); Vault refusing the token or the path raises,
    because a fallback must never hide a policy or credential mistake.

    Keys stored on a Vault KV v2 mount have versions: :meth:`generate_key`,
    :meth:`rotate_key`, :meth:`rotate_if_older_than`, :meth:`key_versions`,
    :meth:`get_key_ring` and ``version=`` on reads manage them, :meth:`list_secrets` and
    :meth:`delete_secret` the secrets around them, and :attr:`transit` drives Vault's
    Transit engine.

    Building a manager never touches the network: Vault is first contacted on the first
    lookup. A manager is safe to share between threads.

    Args:
        vault_url: Vault/OpenBao address, e.g. ``https://vault.example.com:8200``, or
            the addresses of a cluster's nodes (a list, or comma-separated): a request
            moves on to the next node when one is down, sealed or cannot serve, and
            the node that answered is asked first next time. When omitted:
            ``SECUREML_VAULT_URL``, ``BAO_ADDR``, ``VAULT_ADDR``. No URL anywhere means
            no Vault.
        vault_token: Token for Vault (short for ``vault_auth=TokenAuth(token)``). When
            neither it nor ``vault_auth`` is given: AppRole from
            ``SECUREML_VAULT_ROLE_ID`` and ``SECUREML_VAULT_SECRET_ID``, else a token
            from ``SECUREML_VAULT_TOKEN``, ``BAO_TOKEN``, ``VAULT_TOKEN``.
        vault_path: Folder under the KV mount that holds the secrets (``""`` for the
            mount's root).
        use_env_fallback: Read ``SECUREML_<NAME>`` environment variables.
        use_default_fallback: Serve generated, *insecure* deterministic defaults as a
            last resort. For development only; refused when ``SECUREML_ENV`` is
            ``production`` or ``prod``.
        vault_mount: The KV engine's mount path.
        vault_auth: How to log in: :class:`TokenAuth`, :class:`AppRoleAuth`,
            :class:`UserpassAuth`, :class:`JWTAuth`, :class:`KubernetesAuth`. Tokens are
            renewed before they expire and, for methods that can, obtained again by
            logging in when they run out or are revoked.
        vault_namespace: Vault Enterprise / OpenBao namespace, sent on every request
            (logins too). When omitted: ``SECUREML_VAULT_NAMESPACE``, ``BAO_NAMESPACE``,
            ``VAULT_NAMESPACE``.
        vault_ca_cert: CA bundle file, or directory of hashed CA files, to verify Vault's
            TLS certificate. When omitted: ``SECUREML_VAULT_CACERT``, ``BAO_CACERT``,
            ``VAULT_CACERT``, ``BAO_CAPATH``, ``VAULT_CAPATH``; otherwise what
            requests (and so hvac) trusts: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, or
            certifi's bundle.
        vault_client_cert: Client certificate (PEM) for mutual TLS (also
            ``VAULT_CLIENT_CERT``).
        vault_client_key: Its private key (PEM) if not in the certificate file (also
            ``VAULT_CLIENT_KEY``).
        vault_kv_version: 1 or 2 to skip detecting the mount's KV version.
        verify: Verify Vault's TLS certificate. ``False`` warns with
            :class:`SecurityWarning`; there is no environment variable for it.
        timeout: Seconds to connect, and to wait for each answer. When omitted:
            ``VAULT_CLIENT_TIMEOUT`` (``BAO_CLIENT_TIMEOUT``), else 5.
        retries: Extra attempts, with exponential backoff and jitter, after connection
            errors, 412, 429 and 5xx other than 501 (never other 4xx); 0 disables. When
            omitted: ``VAULT_MAX_RETRIES`` (``BAO_MAX_RETRIES``), else 2. A call takes
            at most ``timeout`` x attempts plus backoff.
        cache_ttl: Seconds a value read from Vault is served from memory (0: no cache).
            Writes through this manager drop the name's entries at once; see
            :meth:`invalidate` for changes made elsewhere.
        cache_size: Most names (and versions) cached; the least recently used goes.
        max_stale: While Vault is unreachable or sealed, serve a cached value up to this
            many seconds old (one WARNING per name) before falling back to the
            environment (0: never serve stale). Never after a permission error.
        audit_hook: Called with an :class:`AccessEvent` (operation, name, source,
            outcome, duration; never the value) after every access. Exceptions it
            raises are logged, not propagated.
        backend: Use this :class:`~secureml.key_management.backends.SecretBackend`
            instead of Vault (the Vault settings must then be left unset).

    Raises:
        ConfigurationError: Contradictory or unsafe settings (e.g. a Vault URL but no
            token, hvac missing, dev defaults in production).
        TypeError: An argument of the wrong type.
        ValueError: A malformed ``vault_path`` or ``vault_mount``.

    Example:
        >>> km = KeyManager(use_default_fallback=True)
        >>> key = km.get_encryption_key("master_key")   # warns: dev default
        >>> len(km.derive_key(key, purpose="data_encryption"))
        32
    """

    def __init__(
        self,
        vault_url: str | list[str] | None = None,
        vault_token: str | None = None,
        vault_path: str = "secureml",
        use_env_fallback: bool = True,
        use_default_fallback: bool = False,
        *,
        vault_mount: str = "secret",
        vault_auth: VaultAuth | None = None,
        vault_namespace: str | None = None,
        vault_ca_cert: str | None = None,
        vault_client_cert: str | None = None,
        vault_client_key: str | None = None,
        vault_kv_version: int | None = None,
        verify: bool = True,
        timeout: float | None = None,
        retries: int | None = None,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        max_stale: float = 3600.0,
        audit_hook: Callable[[AccessEvent], object] | None = None,
        backend: SecretBackend | None = None,
    ) -> None:
        self._vault_path = validate_path(vault_path, what="vault_path")
        self._vault_mount = validate_name(vault_mount, what="vault_mount")
        self._use_env_fallback = _check_flag(use_env_fallback, "use_env_fallback")
        self._use_default_fallback = _check_flag(use_default_fallback, "use_default_fallback")
        if self._use_default_fallback and running_in_production():
            raise ConfigurationError(
                f"use_default_fallback=True is refused because {PRODUCTION_ENV_VAR} says "
                "production: dev defaults are public values, not secrets"
            )
        if backend is not None:
            if vault_url is not None or vault_token is not None or vault_auth is not None:
                raise ConfigurationError(
                    "pass either backend= or vault_url=/vault_token=/vault_auth="
                )
            if not isinstance(backend, SecretBackend):
                raise TypeError("backend must implement the SecretBackend protocol")
            self._primary: SecretBackend | None = backend
        else:
            settings = resolve_vault_settings(
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
            )
            self._primary = (
                None
                if settings is None
                else VaultBackend(
                    settings,
                    mount=self._vault_mount,
                    path=self._vault_path,
                    kv_version=vault_kv_version,
                )
            )
        self._env = EnvBackend() if self._use_env_fallback else None
        self._once_lock = threading.Lock()
        self._said: set[tuple[str, str]] = set()
        self._cache = SecretCache(
            ttl=_check_seconds(cache_ttl, "cache_ttl"),
            size=_check_size(cache_size),
            max_stale=_check_seconds(max_stale, "max_stale"),
        )
        self._counts = Counters()
        if audit_hook is not None and not callable(audit_hook):
            raise TypeError("audit_hook must be callable with one AccessEvent")
        self._audit = audit_hook
        self._transit: TransitKeys | None = None

    # -- public API ------------------------------------------------------------------

    @overload
    def get_secret(self, name: str, *, version: int | None = ...) -> SecretValue: ...
    @overload
    def get_secret(
        self, name: str, default: _T, *, version: int | None = ...
    ) -> SecretValue | _T: ...

    def get_secret(self, name: str, default: Any = None, *, version: int | None = None) -> Any:
        """Return secret ``name`` from the first source that has it.

        Args:
            name: Letters, digits, ``_-.``, with ``/`` between segments.
            default: Returned when neither Vault nor the environment has the secret
                (before any dev default). ``None`` means "no default".
            version: Read this version (Vault KV v2 only; no fallback applies, and
                ``default`` cannot be combined with it). ``None``: the latest.

        Returns:
            ``str`` for text, ``bytes`` for secrets stored as bytes, a ``dict`` for a Vault
            secret with several fields and no ``value`` field; or ``default``.

        Raises:
            SecretNotFoundError: No source had it; the message lists the sources tried.
                With ``version=``: that version does not exist, was deleted or destroyed
                (the message says which).
            PermissionDeniedError: Vault's policies forbid reading it.
            AuthenticationError: Vault rejected the token.
            VaultUnavailableError: Vault is down and no later source had it.
            UnsupportedOperationError: ``version=`` without a KV v2 Vault.
            ValueError: ``name`` or ``version`` is malformed.
        """
        entry = None
        # Only well-formed calls may take the fast path (1.0 and True hash like 1).
        if version is None or (type(version) is int and version > 0 and default is None):
            try:  # noqa: SIM105 - contextlib.suppress costs the hot path ~0.3 µs
                entry = self._cache.fresh((name, version))
            except TypeError:  # unhashable: let validation say what is wrong with it
                pass
        if entry is not None and entry.value is not ABSENT and self._audit is None:
            self._counts.mine()[HITS] += 1  # the hot path: no lock, no validation (done)
            return _private(entry.value)

        def read() -> tuple[Any, str | None, str]:
            validate_name(name)
            if version is None:
                return self._lookup(name, default, lambda: dev_default_secret(name))
            if default is not None:
                raise ValueError(
                    "get_secret: default= cannot stand in for a specific version; pass one "
                    "or the other"
                )
            return self._read_version(name, check_version(version))

        return self._observed("get_secret", name, read, version=version)

    def set_secret(self, name: str, value: str | bytes | Mapping[str, Any]) -> bool:
        """Store ``value`` as secret ``name`` in Vault.

        Text is stored in the field ``value``; bytes as base64 with ``encoding=base64``
        (and read back as bytes); a mapping as the secret's fields.

        Args:
            name: Letters, digits, ``_-.``, with ``/`` between segments.
            value: ``str``, ``bytes`` or a mapping of field names to JSON values.

        Returns:
            ``True`` once Vault has acknowledged the write. Failure always raises.

        Raises:
            ConfigurationError: No Vault is configured (the environment is read-only).
            PermissionDeniedError: Vault's policies forbid the write.
            AuthenticationError: Vault rejected the token.
            VaultUnavailableError: Vault could not be reached; nothing was written.
            WriteOutcomeUnknownError: The connection broke after the write was sent (or a
                gateway answered 500/502/504): it may or may not have landed. Not retried
                automatically; read the secret back before writing again.
            TypeError: ``value`` is of an unsupported type.
            ValueError: ``name`` or a mapping's field names are malformed.
        """
        validate_name(name)
        checked = _check_secret_value(value, name)
        if self._primary is None:
            raise ConfigurationError(
                f"cannot store {name!r}: no Vault is configured (pass vault_url= and "
                "vault_token=, or set SECUREML_VAULT_URL and SECUREML_VAULT_TOKEN)"
            )
        primary = self._primary

        def write() -> tuple[bool, str | None, str]:
            # Before: a read already in flight must not cache what it finds. After: a
            # write of unknown outcome may have changed the value too.
            self._cache.invalidate(lambda key: key[0] == name)
            try:
                primary.put(name, checked)
            finally:
                self._cache.invalidate(lambda key: key[0] == name)
            return True, primary.locate(name), "ok"

        result: bool = self._observed("set_secret", name, write)
        return result

    @overload
    def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        encoding: Literal["bytes"] = ...,
        *,
        version: int | None = ...,
    ) -> bytes: ...
    @overload
    def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        *,
        encoding: Literal["hex", "base64", "base64url"],
        version: int | None = ...,
    ) -> str: ...
    @overload
    def get_encryption_key(
        self,
        key_name: str,
        key_bytes: int,
        encoding: Literal["hex", "base64", "base64url"],
        *,
        version: int | None = ...,
    ) -> str: ...

    @overload
    def get_encryption_key(
        self,
        key_name: str = ...,
        key_bytes: int = ...,
        encoding: Encoding = ...,
        *,
        version: int | None = ...,
    ) -> bytes | str: ...

    def get_encryption_key(
        self,
        key_name: str = "master_key",
        key_bytes: int = 32,
        encoding: Encoding = "bytes",
        *,
        version: int | None = None,
    ) -> bytes | str:
        """Return encryption key ``key_name``: exactly ``key_bytes`` bytes, encoded.

        Key material stored as bytes is used as is; text (environment variables, text
        in Vault) is read as ``hex:...``/``base64:...``, or as unprefixed hex/base64
        when it decodes to exactly ``key_bytes``. Material of another length is an error:
        it is never hashed, padded or cut to fit.

        Args:
            key_name: The key's secret name.
            key_bytes: The key length in bytes, 16 to 8160.
            encoding: ``bytes`` (raw), or text: ``hex``, ``base64``, ``base64url``.
            version: Read this version of the key (Vault KV v2 only, no fallback), e.g.
                to decrypt data written before a rotation. ``None``: the latest.

        Returns:
            ``bytes`` for ``encoding="bytes"``, else a ``str``.

        Raises:
            KeyFormatError: The stored material has the wrong length or does not decode.
            SecretNotFoundError: No source had the key.
            PermissionDeniedError, AuthenticationError, VaultUnavailableError,
                UnsupportedOperationError: as for :meth:`get_secret`.
            ValueError: A bad ``key_name``, ``key_bytes``, ``encoding`` or ``version``.
        """
        if (
            encoding == "bytes"
            and type(key_bytes) is int
            and key_bytes >= MIN_KEY_BYTES
            and (version is None or (type(version) is int and version > 0))
        ):
            try:
                entry = self._cache.fresh((key_name, version))
            except TypeError:  # unhashable: let validation say what is wrong with it
                entry = None
            if (
                entry is not None
                and type(entry.value) is bytes
                and len(entry.value) == key_bytes
                and self._audit is None
            ):
                self._counts.mine()[HITS] += 1  # raw key bytes, cached: nothing to decode
                return entry.value
        validate_name(key_name, what="key_name")
        length = check_length(key_bytes, what="key_bytes", low=MIN_KEY_BYTES)
        checked_encoding = check_encoding(encoding)

        def read() -> tuple[bytes | str, str | None, str]:
            if version is None:
                material, where, outcome = self._lookup(
                    key_name, None, lambda: dev_default_key(key_name, length)
                )
            else:
                material, where, outcome = self._read_version(key_name, check_version(version))
            return (
                self._decode_key(key_name, material, where, length, checked_encoding),
                where,
                outcome,
            )

        key: bytes | str = self._observed("get_encryption_key", key_name, read, version=version)
        return key

    @staticmethod
    def _decode_key(
        key_name: str, material: object, where: str | None, length: int, encoding: Encoding
    ) -> bytes | str:
        described = f"key {key_name!r} from {where}"
        if isinstance(material, (bytes, bytearray)):
            key = check_key_bytes(bytes(material), length, described=described)
        elif isinstance(material, str):
            key = decode_key_text(material, length, described=described)
        else:
            raise KeyFormatError(
                f"{described} is a {type(material).__name__}, not key material; store it in "
                f"the field {VALUE_FIELD!r}"
            )
        return encode_key(key, encoding)

    def derive_key(
        self,
        base_key: bytes,
        purpose: str | bytes,
        key_bytes: int = 32,
        *,
        salt: bytes | None = None,
    ) -> bytes:
        """Derive a purpose-specific key from ``base_key`` with HKDF-SHA256 (RFC 5869).

        Different purposes give independent keys, so a key leaked from one use says
        nothing about another. Same inputs, same key: nothing is stored.

        Args:
            base_key: The input key material, e.g. from :meth:`get_encryption_key`.
            purpose: HKDF ``info``: what the key is for (``str`` is UTF-8 encoded).
            key_bytes: Output length, 1 to 8160.
            salt: Optional HKDF salt.

        Returns:
            ``key_bytes`` bytes.

        Raises:
            TypeError: ``base_key`` is not bytes (e.g. hex text), or another bad type.
            ValueError: Empty ``base_key`` or ``purpose``, or ``key_bytes`` out of range.
        """
        return hkdf_sha256(base_key, purpose, key_bytes, salt)

    @property
    def transit(self) -> TransitKeys:
        """Vault's Transit engine on its default mount, ``transit``.

        For another mount, make a :class:`TransitKeys` yourself:
        ``TransitKeys(km, mount="transit-eu")``.

        Raises:
            UnsupportedOperationError: This manager has no Vault.

        Example:
            >>> km.transit.encrypt("features", b"row 42")      # doctest: +SKIP
            'vault:v1:...'
        """
        transit = self._transit
        if transit is None:
            transit = self._transit = TransitKeys(self)
        return transit

    def status(self) -> KeyManagerStatus:
        """Where the manager gets secrets from, and how Vault is doing.

        Cheap: one health request (not retried), then, when Vault is up, a token
        lookup (logging in first if no token is held yet) and, once, the KV version.
        Never raises because Vault is down, sealed or refusing: the result's ``error``
        says what went wrong. Holds no secret or token, so it is safe to log.

        Example:
            >>> km.status().reachable                 # doctest: +SKIP
            True
        """
        base = (
            self._primary.status()
            if isinstance(self._primary, VaultBackend)
            else KeyManagerStatus()
        )
        return replace(
            base,
            env_fallback=self._use_env_fallback,
            default_fallback=self._use_default_fallback,
        )

    def stats(self) -> KeyManagerStats:
        """Counters since this manager was built: cache, backend, logins, errors.

        Example:
            >>> km.stats().hits                       # doctest: +SKIP
            4096
        """
        (hits, misses, stale, reads), errors = self._counts.totals()
        session = getattr(self._primary, "session", None)
        return KeyManagerStats(
            hits=hits,
            misses=misses,
            stale_serves=stale,
            backend_reads=reads,
            failovers=int(getattr(self._primary, "failovers", 0)),
            logins=int(getattr(session, "logins", 0)),
            renewals=int(getattr(session, "renewals", 0)),
            errors=errors,
        )

    def invalidate(self, name: str | None = None) -> int:
        """Drop cached values: every version of ``name``, or everything when ``None``.

        Writes through this manager already do this; call it after a secret was changed
        elsewhere (the ``bao`` CLI, another process) to see the change before
        ``cache_ttl`` runs out.

        Returns:
            How many cache entries were dropped.
        """
        if name is None:
            return self._cache.invalidate()
        validate_name(name)
        return self._cache.invalidate(lambda key: key[0] == name)

    # -- the lookup chain ------------------------------------------------------------

    def _lookup(
        self,
        name: str,
        default: object,
        dev_default: Callable[[], object] | None,
        *,
        outage_falls_through: bool = True,
    ) -> tuple[Any, str, str]:
        """Walk the chain; return the value, where it came from, and how (``ok``,
        ``cached``, ``stale``)."""
        tried: list[str] = []
        outage: VaultUnavailableError | None = None
        if self._primary is not None:
            where = self._primary.locate(name)
            tried.append(where)
            try:
                value, outcome = self._read_primary(self._primary, name)
            except VaultUnavailableError as exc:
                stale = self._cache.stale((name, None))
                if stale is not None and stale.value is not ABSENT:
                    self._serve_stale(name, exc, stale)
                    return _private(stale.value), where, "stale"
                if not outage_falls_through:
                    raise
                outage = exc
                if stale is None:
                    self._log_once(
                        ("outage", self._primary.source),
                        "%s; falling back to the next source until it answers again",
                        exc,
                    )
            else:
                if value is not None:
                    return value, where, outcome
        if self._env is not None:
            where = self._env.locate(name)
            tried.append(where)
            value = self._env.get(name)
            if value is not None:
                self._note_fallback(name, tried, outage)
                return value, where, "ok"
        if default is not None:
            self._note_fallback(name, tried, outage)
            return default, "default=", "ok"
        if self._use_default_fallback and dev_default is not None:
            self._warn_dev_default(name)
            return dev_default(), "insecure dev default", "ok"
        if outage is not None:
            _raise_outage(outage, name, tried)
        raise SecretNotFoundError(name, tried)

    def _read_primary(
        self, primary: SecretBackend, name: str, version: int | None = None
    ) -> tuple[Any, str]:
        """The primary source's answer for ``name`` (``None``: absent), through the
        cache; concurrent misses share one backend read."""
        counts = self._counts.mine()
        key = (name, version)
        entry = self._cache.fresh(key)
        if entry is not None:
            counts[HITS] += 1
            return (None if entry.value is ABSENT else _private(entry.value)), "cached"
        counts[MISSES] += 1

        def load() -> object:
            self._counts.mine()[BACKEND_READS] += 1
            value = primary.get(name, version)
            return ABSENT if value is None else value

        try:
            value, _ = self._cache.load(key, load)
        except PermissionDeniedError:
            # Never again serve what this identity may no longer read, not even stale.
            self._cache.invalidate(lambda cached: cached[0] == name)
            raise
        except AuthenticationError:
            self._cache.invalidate()  # the credentials are gone: so is what they read
            raise
        self._recovered(primary.source)
        return (None if value is ABSENT else _private(value)), "ok"

    def _read_version(self, name: str, version: int) -> tuple[Any, str, str]:
        """Version ``version`` of ``name`` from the primary source (no fallback: no other
        source has versions); a version that cannot be read is an error that says why."""
        backend = self._versioned("read version", name)
        where = backend.locate(name)
        key = (name, version)
        try:
            value, outcome = self._read_primary(backend, name, version)
        except VaultUnavailableError as exc:
            # A version never changes: a stale copy is as true as a fresh one.
            stale = self._cache.stale(key)
            if stale is None or stale.value is ABSENT:
                raise
            self._serve_stale(name, exc, stale)
            return _private(stale.value), where, "stale"
        if value is None:
            self._cache.invalidate(lambda cached: cached == key)  # it may yet be written
            raise SecretNotFoundError(
                name, [where], detail=self._why_unreadable(backend, name, version)
            )
        return value, where, outcome

    @staticmethod
    def _why_unreadable(  # noqa: PLR0911 - one answer per state a version can be in
        backend: VersionedSecretBackend, name: str, version: int
    ) -> str:
        try:
            metadata = backend.metadata(name)
        except KeyManagementError:  # e.g. the policy allows data/ but not metadata/
            return f"version {version} is deleted, destroyed or was never written"
        if metadata is None:
            return "it does not exist"
        record = metadata.version(version)
        if record is None:
            if version > metadata.current_version:
                return f"it has no version {version} (the latest is {metadata.current_version})"
            return (
                f"version {version} is no longer kept (the store keeps the last "
                f"{metadata.max_versions})"
            )
        if record.destroyed:
            return f"version {version} was destroyed"
        if record.deleted:
            return (
                f"version {version} was deleted (an operator can restore it: bao kv "
                f"undelete -versions={version})"
            )
        return f"version {version} could not be read"

    def _vault(self, action: str) -> VaultBackend:
        """The Vault backend, for features only Vault has (Transit)."""
        if not isinstance(self._primary, VaultBackend):
            raise UnsupportedOperationError(
                f"cannot {action}: this manager has no Vault (configure vault_url= and credentials)"
            )
        return self._primary

    def _versioned(self, action: str, name: str) -> VersionedSecretBackend:
        """The primary source, if it keeps versions; else say why the call cannot work."""
        if self._primary is None:
            raise UnsupportedOperationError(
                f"cannot {action} {name!r}: no Vault is configured, and environment "
                "variables and dev defaults keep no versions; configure a Vault KV v2 mount"
            )
        if not isinstance(self._primary, VersionedSecretBackend):
            raise UnsupportedOperationError(
                f"cannot {action} {name!r}: the {self._primary.source} backend keeps no "
                "versions (it does not implement VersionedSecretBackend)"
            )
        return self._primary

    def _serve_stale(self, name: str, outage: VaultUnavailableError, entry: CacheEntry) -> None:
        self._counts.mine()[STALE] += 1
        self._log_once(
            ("stale", name),
            "%s; serving %r from a cached value %.0f s old (max_stale allows %.0f s)",
            outage,
            name,
            time.monotonic() - entry.fetched_at,
            self._cache.max_stale,
        )

    def _recovered(self, source: str) -> None:
        """The primary answered: outage and stale notices may be given again."""
        if self._said:
            with self._once_lock:
                self._said = {c for c in self._said if c[0] not in ("outage", "stale")}

    # -- observability ---------------------------------------------------------------

    def _observed(
        self,
        operation: str,
        name: str,
        call: Callable[[], tuple[_T, str | None, str]],
        *,
        version: int | None = None,
        returns_version: bool = False,
    ) -> _T:
        """Run ``call``; count its errors and tell ``audit_hook`` how it went.

        Args:
            version: The version the call is about, if known up front.
            returns_version: The call returns the version it made (generate, rotate).
        """
        started = time.perf_counter()
        try:
            value, source, outcome = call()
        except Exception as exc:
            self._counts.error(type(exc).__name__)
            self._emit(
                operation,
                name,
                source=None,
                version=version if type(version) is int else None,
                outcome="error",
                error=type(exc).__name__,
                started=started,
            )
            raise
        if returns_version and isinstance(value, int):
            version = value
        self._emit(
            operation,
            name,
            source=source,
            version=version if type(version) is int else None,
            outcome=outcome,
            error=None,
            started=started,
        )
        return value

    def _emit(
        self,
        operation: str,
        name: str,
        *,
        source: str | None,
        version: int | None = None,
        outcome: str,
        error: str | None,
        started: float,
    ) -> None:
        if self._audit is None:
            return
        event = AccessEvent(
            operation=operation,
            name=name if isinstance(name, str) else repr(type(name)),
            source=source,
            version=version,
            outcome=outcome,
            error=error,
            duration=time.perf_counter() - started,
        )
        try:
            self._audit(event)
        except Exception as exc:  # an audit sink must never break the call it observes
            self._log_once(("audit", type(exc).__name__), "audit_hook raised %r", exc)

    def _note_fallback(
        self, name: str, tried: list[str], outage: VaultUnavailableError | None
    ) -> None:
        """Say once per name that Vault did not have a secret a fallback then served."""
        if self._primary is not None and outage is None:
            self._log_once(
                ("absent", name),
                "secret %r is not in %s; using a fallback (%s)",
                name,
                tried[0],
                ", ".join(tried[1:]) or "default=",
            )

    def _log_once(self, condition: tuple[str, str], message: str, *args: object) -> None:
        with self._once_lock:
            if condition in self._said:
                return
            self._said.add(condition)
        logger.warning(message, *args)

    def _forget(self, condition: tuple[str, str]) -> None:
        if condition in self._said:
            with self._once_lock:
                self._said.discard(condition)

    def _warn_dev_default(self, name: str) -> None:
        with self._once_lock:
            if ("dev-default", name) in self._said:
                return
            self._said.add(("dev-default", name))
        warn_caller(
            f"serving an INSECURE deterministic development default for {name!r}: anyone "
            "can compute it. Store the secret in Vault or the environment, and set "
            "use_default_fallback=False outside development.",
            SecurityWarning,
        )

    # -- hygiene ---------------------------------------------------------------------

    def __repr__(self) -> str:
        vault = (
            ",".join(self._primary.settings.urls)
            if isinstance(self._primary, VaultBackend)
            else None
        )
        return (
            f"KeyManager(vault_url={vault!r}, vault_path={self._vault_path!r}, "
            f"vault_mount={self._vault_mount!r}, use_env_fallback={self._use_env_fallback}, "
            f"use_default_fallback={self._use_default_fallback})"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # Pickling would write the Vault token into the pickle.
        raise TypeError(
            "KeyManager cannot be pickled (it holds a Vault token); create one in each "
            "process instead"
        )


def _private(value: _T) -> _T:
    """``value`` as the caller may keep it: str and bytes are immutable and shared; a
    dict of fields is copied, so changing it cannot change what others are served."""
    return copy.deepcopy(value) if type(value) is dict else value


def _check_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{what} must be 0 or more seconds; got {value}")
    return float(value)


def _check_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"cache_size must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"cache_size must be at least 1; got {value}")
    return value


def _check_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def _check_secret_value(value: object, name: str) -> str | bytes | dict[str, Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"secret {name!r}: a mapping value needs at least one field")
        if not all(isinstance(k, str) and k for k in value):
            raise ValueError(f"secret {name!r}: field names must be non-empty str")
        if VALUE_FIELD in value:
            raise ValueError(
                f"secret {name!r}: a mapping with a {VALUE_FIELD!r} field would read back as "
                "that field alone; pass the value itself, or rename the field"
            )
        return dict(value)
    raise TypeError(
        f"secret {name!r} must be str, bytes or a mapping of fields, not {type(value).__name__}"
    )


def _raise_outage(outage: VaultUnavailableError, name: str, tried: list[str]) -> NoReturn:
    """Vault was down and nothing after it had the secret: say both, keep the type."""
    raise type(outage)(
        f"{outage}; no fallback had {name!r} either (tried: {', '.join(tried)})"
    ) from outage
