"""KeyManager: the public facade, with the spec's names, defaults and user docs.

It builds :class:`~._settings.ManagerSettings` from its arguments, a
:class:`~._core.Core` from those, and the services over the core (secrets by name, the
key lifecycle, encryption, Transit); every method delegates. No policy lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NoReturn, TypeVar, overload

from ._auth import VaultAuth
from ._boundary import guarded_class, scrub, scrubs_inline
from ._core import Core
from ._derivation import hkdf_sha256
from ._encoding import Encoding
from ._encryption import Encryptor
from ._files import PathLike
from ._lifecycle import KeyLifecycle
from ._materials import DEFAULT_KEY, KeyMaterials
from ._secrets import Secrets
from ._settings import ManagerSettings
from ._spec import KeyManagerSpec, register_manager_class, spec_of
from ._status import AccessEvent, KeyManagerStats, KeyManagerStatus
from ._transit import TransitKeys
from ._validate import Progress
from .backends.base import KeyVersion, SecretBackend, SecretValue

if TYPE_CHECKING:
    from secureml.columns import ColumnCipher, ColumnMode

    from ._explain import Explanation

__all__ = ["KeyManager"]

_T = TypeVar("_T")


@guarded_class
class KeyManager:
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
    lookup. A manager is safe to share between threads, and with processes forked from
    this one (a child drops the inherited connections and never waits on a load that
    was in flight in the parent).

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
            last resort. For development only: refused unless ``SECUREML_ENV`` is
            unset or ``development``, ``dev``, ``test`` or ``local``.
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
            version, outcome, duration; never the value) after every call that uses a
            secret or key. Exceptions it raises are logged, not propagated.
        backend: Use this :class:`~secureml.key_management.backends.SecretBackend`
            instead of Vault (the Vault settings must then be left unset).
        declared_keys: Names that may serve as keys for :meth:`encrypt` and open
            messages in :meth:`decrypt` although they are not managed keys (made by
            :meth:`generate_key` or :meth:`rotate_key`, which label them and write
            bytes): a key from the environment (``SECUREML_<NAME>``) or a KV v1 mount,
            or a key another tool wrote (also as hex or base64 text). Nothing else may
            be named by a ciphertext: a header naming a plain secret or a configuration
            variable is refused before its value is read.
        declared_transit_keys: Transit keys whose format-1 messages (written before
            format 2, with data keys not bound to secureml) must still open. Format-2
            Transit messages need no declaration.
        require_commitment: Refuse messages of format 1, which is not key-committing
            (as the AWS Encryption SDK's ``REQUIRE_ENCRYPT_REQUIRE_DECRYPT`` policy
            does): turn it on once old data is re-encrypted. New data is always format 2.
            Column cells (Tink's formats, never key-committing) are not messages and
            are not refused by it.
        login_jitter: Before this manager's first Vault login, wait a random time up to
            this many seconds (never past the call's deadline), so that many workers
            started at once spread their logins. ``None``: no wait here, and 0.5 s in
            the managers its :meth:`spec` builds; 0 disables both.

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
        declared_keys: Iterable[str] = (),
        declared_transit_keys: Iterable[str] = (),
        require_commitment: bool = False,
        login_jitter: float | None = None,
    ) -> None:
        settings = ManagerSettings.resolve(
            vault_url=vault_url,
            vault_token=vault_token,
            vault_path=vault_path,
            use_env_fallback=use_env_fallback,
            use_default_fallback=use_default_fallback,
            vault_mount=vault_mount,
            vault_auth=vault_auth,
            vault_namespace=vault_namespace,
            vault_ca_cert=vault_ca_cert,
            vault_client_cert=vault_client_cert,
            vault_client_key=vault_client_key,
            vault_kv_version=vault_kv_version,
            verify=verify,
            timeout=timeout,
            retries=retries,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            max_stale=max_stale,
            audit_hook=audit_hook,
            backend=backend,
            declared_keys=declared_keys,
            declared_transit_keys=declared_transit_keys,
            require_commitment=require_commitment,
            login_jitter=login_jitter,
        )
        self._core = core = Core(settings)
        self._secrets = Secrets(core)
        self._lifecycle = KeyLifecycle(core)
        self._encryptor = Encryptor(KeyMaterials(core), core.observer)
        self._transit: TransitKeys | None = None

    # -- secrets and keys by name ------------------------------------------------------

    @overload
    def get_secret(self, secret_name: str, *, version: int | None = ...) -> SecretValue: ...
    @overload
    def get_secret(
        self, secret_name: str, default: _T, *, version: int | None = ...
    ) -> SecretValue | _T: ...

    @scrubs_inline
    def get_secret(
        self, secret_name: str, default: Any = None, *, version: int | None = None
    ) -> Any:
        """Return secret ``name`` from the first source that has it.

        Args:
            secret_name: Letters, digits, ``_-.``, with ``/`` between segments.
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
            ValueError: ``secret_name`` or ``version`` is malformed.
        """
        try:
            return self._secrets.get_secret(secret_name, default, version)
        except BaseException as exc:  # the hot path: scrubbed inline, not wrapped
            del default
            scrub(exc)
            raise

    def set_secret(self, secret_name: str, value: str | bytes | Mapping[str, Any]) -> bool:
        """Store ``value`` as secret ``secret_name`` in Vault.

        Text is stored in the field ``value``; bytes as base64 with ``encoding=base64``
        (and read back as bytes); a mapping as the secret's fields.

        Args:
            secret_name: Letters, digits, ``_-.``, with ``/`` between segments.
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
            ValueError: ``secret_name`` or a mapping's field names are malformed.
        """
        return self._secrets.set_secret(secret_name, value)

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

    @scrubs_inline
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
        try:
            return self._secrets.get_encryption_key(key_name, key_bytes, encoding, version)
        except BaseException as exc:  # the hot path: scrubbed inline, not wrapped
            scrub(exc)
            raise

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

    # -- key lifecycle ---------------------------------------------------------------

    def generate_key(
        self,
        key_name: str,
        key_bytes: int = 32,
        *,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Store a new key of ``key_bytes`` random bytes (from the OS CSPRNG) in Vault.

        Args:
            key_name: The key's secret name.
            key_bytes: Its length, 16 to 8160 bytes.
            overwrite: Allow adding a new version to a key that exists (its old versions
                stay readable). Without it an existing key is never touched.
            metadata: Labels stored with the key (purpose, owner, rotation period...):
                up to 64 ``str`` to ``str`` pairs, in KV v2 custom metadata.

        Returns:
            The version written (1 for a new key).

        Raises:
            ConfigurationError: The key exists and ``overwrite`` is false.
            UnsupportedOperationError: No Vault, or a KV v1 mount (no versions).
            PermissionDeniedError, AuthenticationError, VaultUnavailableError: as for
                :meth:`set_secret`.
            TypeError, ValueError: A bad name, length or label.

        Example:
            >>> km.generate_key("datasets/key", metadata={"owner": "ml-platform"})
            1
        """
        return self._lifecycle.generate_key(
            key_name, key_bytes, overwrite=overwrite, metadata=metadata
        )

    def rotate_key(self, key_name: str, *, force: bool = False) -> int:
        """Add a version of fresh random bytes, as long as the current key, and make it
        the one reads return. Old versions stay readable (``version=``,
        :meth:`get_key_ring`) until retired with :meth:`delete_secret`.

        Check-and-set makes concurrent rotations safe: one wins, the others raise
        :class:`VersionConflictError` and write nothing. A rotation that would make
        Vault drop a still-live old version for good (``max_versions``) is refused.

        Only keys :meth:`generate_key` made (they carry the ``secureml-key`` label)
        rotate: rotating an ordinary secret (a password, an API key) would replace it
        with random bytes.

        Args:
            key_name: The key's secret name.
            force: Rotate a secret without the label anyway (a key written by other
                tools); it is labelled as a key from then on. Never fewer than 16 bytes
                are written.

        Returns:
            The new version.

        Raises:
            ConfigurationError: The secret is not a key this library made, and
                ``force`` is false.
            SecretNotFoundError: The key does not exist, or none of its versions is
                readable (to take the length from).
            VersionConflictError: Another rotation or write won the race.
            KeyManagementError: The rotation would drop a live version (the message says
                what to retire first).
            UnsupportedOperationError: No Vault, or a KV v1 mount.

        Example:
            >>> km.rotate_key("datasets/key")
            2
        """
        return self._lifecycle.rotate_key(key_name, force=force)

    def rotate_if_older_than(
        self,
        key_name: str,
        max_age: timedelta | float,
        *,
        now: datetime | None = None,
        force: bool = False,
    ) -> int | None:
        """Rotate the key if its current version is at least ``max_age`` old; for cron.

        Safe to run from several places at once: if another rotation wins the race and
        the key is then young enough, this returns ``None`` instead of failing.

        Args:
            key_name: The key's secret name.
            max_age: A ``timedelta``, or seconds.
            now: The time to compare with (timezone-aware); ``None`` for the real clock.
            force: As for :meth:`rotate_key`.

        Returns:
            The new version, or ``None`` when the key was young enough.

        Example:
            >>> km.rotate_if_older_than("datasets/key", timedelta(days=90))  # doctest: +SKIP
        """
        return self._lifecycle.rotate_if_older_than(key_name, max_age, now=now, force=force)

    def key_versions(self, key_name: str) -> list[KeyVersion]:
        """Every version Vault keeps of ``key_name``, oldest first.

        Raises:
            SecretNotFoundError: The key does not exist.
            UnsupportedOperationError: No Vault, or a KV v1 mount.

        Example:
            >>> [(v.version, v.is_current) for v in km.key_versions("datasets/key")]
            [(1, False), (2, True)]
        """
        return self._lifecycle.key_versions(key_name)

    def labels(self, name: str) -> dict[str, str]:
        """The free-form labels (Vault KV v2 custom metadata) of a secret or key: those
        given to ``generate_key(metadata=...)``, and ``secureml-key`` on a key this
        library made. Holds no value.

        Raises:
            SecretNotFoundError: No such secret.
            UnsupportedOperationError: No Vault, or a KV v1 mount.
        """
        return self._lifecycle.labels(name)

    def get_key_ring(self, key_name: str) -> dict[int, bytes]:
        """Every readable version of a key: ``{version: key bytes}``, oldest first.

        What a decryptor needs after rotations: the key that encrypted a message is
        found by the version its header names. Deleted and destroyed versions are left
        out.

        Raises:
            SecretNotFoundError: The key does not exist or no version is readable.
            KeyFormatError: A version holds something that is not key material.

        Example:
            >>> sorted(km.get_key_ring("datasets/key"))
            [1, 2]
        """
        return self._lifecycle.get_key_ring(key_name)

    def list_secrets(self, prefix: str = "") -> list[str]:
        """The names of every secret in Vault under ``vault_path`` that start with
        ``prefix``, sorted; names in sub-folders included (``models/key``).

        Raises:
            UnsupportedOperationError: No Vault (the environment is not listed).
            PermissionDeniedError: The token may not list the folder.

        Example:
            >>> km.list_secrets("datasets/")
            ['datasets/key']
        """
        return self._lifecycle.list_secrets(prefix)

    def delete_secret(
        self, name: str, *, destroy: bool = False, versions: Iterable[int] | None = None
    ) -> None:
        """Delete a secret or some of its versions; soft (undoable) unless ``destroy``.

        ================================  ============================================
        call                              effect (KV v2)
        ================================  ============================================
        ``delete_secret(n)``              the latest version is soft-deleted
        ``versions=[1, 2]``               those versions are soft-deleted
        ``versions=[1], destroy=True``    those versions' data is destroyed for good
        ``destroy=True``                  every version and the metadata: gone for good
        ================================  ============================================

        A soft-deleted version can be restored by an operator
        (``bao kv undelete -versions=N``). Meanwhile a read of it by number is a
        :class:`SecretNotFoundError`, and if it is the latest version, reads without
        ``version=`` treat the secret as absent from Vault: the lookup moves on to the
        environment and ``default=`` (never to an older version). On a KV v1 mount only
        ``destroy=True`` works, since its deletes cannot be undone.

        Deletes through this manager drop its cached copies at once; a version deleted
        or destroyed elsewhere (another process, the ``bao`` CLI) is served from this
        manager's cache until ``cache_ttl`` passes (or :meth:`invalidate`), and while
        Vault is unreachable for up to ``max_stale``.

        Raises:
            UnsupportedOperationError: No Vault, or a soft delete on KV v1.
            PermissionDeniedError: The policy forbids it.
        """
        self._lifecycle.delete_secret(name, destroy=destroy, versions=versions)

    # -- encryption ------------------------------------------------------------------

    @scrubs_inline
    def undelete_secret(self, name: str, *, versions: Iterable[int] | None = None) -> None:
        """Restore soft-deleted versions of a secret (``None``: the latest), as
        ``bao kv undelete`` does; destroyed versions are gone for good.

        Raises:
            UnsupportedOperationError: No Vault, a KV v1 mount, or a backend that cannot.
            PermissionDeniedError: The policy forbids it.
        """
        self._lifecycle.undelete_secret(name, versions=versions)

    def encrypt(
        self,
        data: bytes,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        transit_key: str | None = None,
    ) -> bytes:
        """Encrypt ``data`` with the current version of key ``key_name``.

        The result names the key and its version, so :meth:`decrypt` needs no key name
        and still works after the key is rotated. AES-256-GCM with a key derived per
        message; the format is ``docs/FORMAT.md``.

        Args:
            data: The plaintext.
            key_name: A managed key (Vault KV, or the environment / dev default chain).
            aad: Associated data: authenticated, not encrypted; :meth:`decrypt` must be
                given the same.
            transit_key: Encrypt with a fresh data key from this Vault Transit key
                instead of ``key_name``; only the wrapped data key is kept, in the result.

        Raises:
            SecretNotFoundError: No source has the key.
            KeyFormatError: The key is shorter than 16 bytes or not key material.
        """
        try:
            return self._encryptor.encrypt(data, key_name, aad=aad, transit_key=transit_key)
        except BaseException as exc:  # the hot path: scrubbed inline, not wrapped
            del data
            scrub(exc)
            raise

    @scrubs_inline
    def decrypt(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        """Decrypt what :meth:`encrypt` (or :meth:`encrypt_file`) made, with the key and
        version its header names.

        Raises:
            InvalidCiphertextError: The blob is altered, truncated, extended, not ours, or
                ``aad`` differs. Deliberately says nothing more.
            SecretNotFoundError: The key version it names is gone (deleted, destroyed).
        """
        try:
            return self._encryptor.decrypt(blob, aad=aad)
        except BaseException as exc:  # the hot path: scrubbed inline, not wrapped
            scrub(exc)
            raise

    def reencrypt(
        self,
        blob: bytes,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        transit_key: str | None = None,
    ) -> bytes:
        """Decrypt ``blob`` and encrypt it again with the current version of ``key_name``
        (default: the key it names, or its Transit key): what to run after a rotation,
        before retiring the old version.
        """
        return self._encryptor.reencrypt(blob, key_name, aad=aad, transit_key=transit_key)

    def encrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
        segment_size: int | None = None,
    ) -> int:
        """Encrypt a binary stream of any length, in bounded memory (three buffers of a
        segment each).

        Args:
            reader: Anything with ``read(n)`` returning bytes (files, pipes, sockets).
            writer: Anything with ``write(b)``.
            progress: Called with the plaintext bytes done, after each segment.
            segment_size: Plaintext bytes per segment, 64 KiB to 4 MiB (default 1 MiB):
                the unit :meth:`open_encrypted` decrypts, so a file read at random in
                small pieces reads faster with small segments (each adds 16 bytes).

        Returns:
            The plaintext bytes encrypted.
        """
        return self._encryptor.encrypt_stream(
            reader,
            writer,
            key_name,
            aad=aad,
            progress=progress,
            transit_key=transit_key,
            segment_size=segment_size,
        )

    def decrypt_stream(
        self, reader: Any, writer: Any, *, aad: bytes = b"", progress: Progress | None = None
    ) -> int:
        """Decrypt a stream made by :meth:`encrypt_stream` or :meth:`encrypt_file`.

        Plaintext is written as each segment authenticates. If the stream turns out to be
        truncated or altered further on, :class:`InvalidCiphertextError` is raised after
        the earlier segments were written: to keep all-or-nothing, decrypt into a
        temporary place (as :meth:`decrypt_file` does).

        Returns:
            The plaintext bytes written.
        """
        return self._encryptor.decrypt_stream(reader, writer, aad=aad, progress=progress)

    def reencrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
    ) -> int:
        """:meth:`reencrypt` for streams: decrypts and encrypts segment by segment, so
        plaintext never rests anywhere. Returns the plaintext bytes moved."""
        return self._encryptor.reencrypt_stream(
            reader, writer, key_name, aad=aad, progress=progress, transit_key=transit_key
        )

    def encrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
        durable: bool = False,
        segment_size: int | None = None,
    ) -> int:
        """Encrypt file ``src`` to ``dst`` (replaced only once complete). Returns the
        plaintext bytes.

        Args:
            durable: fsync ``dst`` (and its folder) before returning, as a crash could
                otherwise lose it: pass ``True`` when ``src`` will be deleted next.
            segment_size: Plaintext bytes per segment, 64 KiB to 4 MiB (default 1 MiB;
                see :meth:`encrypt_stream`).
        """
        return self._encryptor.encrypt_file(
            src,
            dst,
            key_name,
            aad=aad,
            progress=progress,
            transit_key=transit_key,
            durable=durable,
            segment_size=segment_size,
        )

    def decrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        durable: bool = False,
    ) -> int:
        """Decrypt file ``src`` to ``dst``, all or nothing.

        Plaintext goes to a temporary file beside ``dst`` (mode 0600) that becomes
        ``dst`` only after the last segment authenticates: a tampered or truncated file
        never leaves partial plaintext at ``dst``. Returns the plaintext bytes.
        ``durable`` fsyncs ``dst`` before returning.
        """
        return self._encryptor.decrypt_file(src, dst, aad=aad, progress=progress, durable=durable)

    def reencrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
    ) -> int:
        """:meth:`reencrypt_stream` from file ``src`` to ``dst`` (may be the same path),
        replaced only once the whole file authenticated and was encrypted again. Always
        fsynced before the rename: after a re-encryption the old key version tends to
        be destroyed, and a crash must not leave ``dst`` empty."""
        return self._encryptor.reencrypt_file(
            src, dst, key_name, aad=aad, progress=progress, transit_key=transit_key
        )

    # -- columns ---------------------------------------------------------------------

    def open_encrypted(self, src: PathLike | BinaryIO, *, aad: bytes = b"") -> BinaryIO:
        """A read-only, seekable file object over the plaintext of encrypted file ``src``
        (a path, or a seekable binary file object whose message starts at its current
        position), decrypting only the segments a read touches: ``read``, ``readinto``,
        ``seek`` (every whence), ``tell``, ``with``.

        The last segment is authenticated when it opens, so the size, every
        ``SEEK_END``, the key and the ``aad`` are checked before anything is read, and a
        file cut short fails here. Every byte returned is authenticated first; a tampered
        segment raises :class:`~.errors.InvalidCiphertextError` (naming the segment, and
        audited as a rejected decrypt) when it is read. A few decrypted segments are
        kept in memory while it is open; threads sharing it take turns. Its
        ``segments_decrypted`` counts the segments it has decrypted (the last one's, at
        open, included): what to watch when choosing a ``segment_size``.

        Raises:
            InvalidCiphertextError: Not a secureml file, cut short, a wrong key or
                ``aad``, or (on a read) a segment that does not authenticate.
            ValueError: ``src`` is a file object that cannot seek.
            TypeError: ``src`` is a text file, or neither a path nor a file object.

        Example:
            >>> with km.open_encrypted("train.parquet.sml") as f:   # doctest: +SKIP
            ...     f.seek(-8, 2); f.read(8)                          # the footer's tail
        """
        reader: BinaryIO = self._encryptor.open_encrypted(src, aad=aad)
        return reader

    def open_encrypting(
        self,
        dst: PathLike | BinaryIO,
        key_name: str,
        *,
        aad: bytes = b"",
        segment_size: int | None = None,
    ) -> BinaryIO:
        """A write-only file object that encrypts what is written to it under managed
        key ``key_name``, as :meth:`encrypt_file` would: a path ``dst`` appears only
        when ``close()`` (or the end of its ``with`` block) finishes a clean write; an
        error in the block, or the object dropped unclosed, leaves no file (and an
        existing ``dst`` as it was). Memory stays at about one segment.

        ``dst`` may instead be a writable binary file object: the message is written
        into it from where it stands, ``close()`` seals the last segment and flushes
        it, and it is never closed here. All-or-nothing is then its owner's to keep
        (e.g. an fsspec file opened with ``autocommit=False``: commit it after a clean
        close, discard it after an error, as ``secureml::`` URLs do).

        Args:
            segment_size: Plaintext bytes per segment, 64 KiB to 4 MiB (default 1 MiB;
                see :meth:`encrypt_stream`).

        Example:
            >>> with km.open_encrypting("m.pt.sml", "models/key") as f:  # doctest: +SKIP
            ...     torch.save(model.state_dict(), f)
        """
        writer: BinaryIO = self._encryptor.open_encrypting(
            dst, key_name, aad=aad, segment_size=segment_size
        )
        return writer

    def column_cipher(
        self,
        key_name: str,
        mode: ColumnMode = "deterministic",
        *,
        column: str,
        version: int | None = None,
    ) -> ColumnCipher:
        """A cipher for the values of one column: the key is resolved once, here, for
        millions of values (see :mod:`secureml.columns`).

        Args:
            key_name: A managed key (made by :meth:`generate_key` or :meth:`rotate_key`)
                or a declared one (``declared_keys=``); no other secret serves.
            mode: ``deterministic`` (equal values, equal cells: joins and group-by;
                AES-SIV, Tink-compatible), ``randomized`` (AES-GCM, equal values give
                different cells) or ``tokenize`` (one-way HMAC-SHA256 tokens).
            column: The column's name, bound into every cell as associated data.
            version: Encrypt with this version of the key instead of the current one:
                deterministic cells and tokens of different versions never compare
                equal, so new data that must join old data uses the old data's version.

        Returns:
            A :class:`~secureml.columns.ColumnCipher`, with ``encrypt(values)`` and
            ``decrypt(values)`` over lists, pyarrow arrays and pandas Series.

        Raises:
            ConfigurationError: ``key_name`` is not a managed or declared key, or
                ``version`` of it cannot serve.
            SecretNotFoundError: The key does not exist.
            ValueError: An unknown ``mode``.

        Example:
            >>> emails = km.column_cipher("pii", column="email")     # doctest: +SKIP
            >>> cells = emails.encrypt(["a@example.com", None])       # doctest: +SKIP
            >>> emails.decrypt(cells, text=True)                     # doctest: +SKIP
            ['a@example.com', None]
        """
        from secureml.columns import _cipher

        return _cipher.open_cipher(self._core, key_name, mode, column=column, version=version)

    # -- Transit, status, cache ---------------------------------------------------------

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
        return self._core.status()

    def explain(
        self, secret_name: str, default: Any = None, *, fingerprint_key: bytes | None = None
    ) -> Explanation:
        """Where ``secret_name``'s value would come from, without it: every source in
        lookup order with what it holds (Vault's path, KV version, secret version and
        its age; the environment variable; ``default``; the dev default), which one
        wins, which it shadows, the cache's state, and a keyed fingerprint instead of
        the value (a key check value too, for a key). Safe to print and log.

        Args:
            secret_name: The secret to explain.
            default: The ``default=`` a read would pass, to place it in the chain.
            fingerprint_key: A key (16 bytes or more) shared between machines, so
                fingerprints compare across them; else ``SECUREML_FINGERPRINT_KEY``,
                else a random key of this process.

        Asks Vault for the value and its metadata (uncached); an outage or a refusal is
        reported, not raised.

        Example:
            >>> km.explain("db_password").served_from          # doctest: +SKIP
            'vault:secret/secureml/db_password'
        """
        from ._explain import explain

        return explain(self._core, secret_name, default, fingerprint_with=fingerprint_key)

    def stats(self) -> KeyManagerStats:
        """Counters since this manager was built: cache, backend, logins, errors.

        Example:
            >>> km.stats().hits                       # doctest: +SKIP
            4096
        """
        return self._core.stats()

    def invalidate(self, name: str | None = None) -> int:
        """Drop cached values: every version of ``name``, or everything when ``None``.

        Writes through this manager already do this; call it after a secret was changed
        elsewhere (the ``bao`` CLI, another process) to see the change before
        ``cache_ttl`` runs out.

        Returns:
            How many cache entries were dropped.
        """
        return self._secrets.invalidate(name)

    # -- workers ---------------------------------------------------------------------

    def spec(
        self, *, credential_env: str | None = None, credential_file: str | None = None
    ) -> KeyManagerSpec:
        """This manager's settings as a :class:`KeyManagerSpec`, to send to worker
        processes (Spark, Dask, Ray, DataLoader, multiprocessing): every setting, with
        the credential only by reference, never a token, secret id or password.

        The reference is where this manager's credential came from (an environment
        variable, a JWT or Kubernetes token file), else one of the variables secureml
        reads (``VAULT_TOKEN`` ...) that holds the same credential. A credential passed
        as a value needs ``credential_env=`` (the variable each worker reads it from)
        or ``credential_file=``; when set here, it must hold the same credential.

        A manager without Vault gives a spec without Vault settings: a worker whose
        environment configures Vault (``VAULT_ADDR`` ...) will use it.

        Warns:
            SecurityWarning: ``verify=False`` goes to every worker with the spec.

        Raises:
            ConfigurationError: The credential cannot be referred to (the message names
                the fix), or the manager has a custom ``backend=``.
            TypeError: A custom auth method.

        Example:
            >>> spec = km.spec()                              # doctest: +SKIP
            >>> pool.map(functools.partial(work, spec), items)  # worker: spec.manager()
        """
        return spec_of(self, credential_env=credential_env, credential_file=credential_file)

    # -- hygiene ---------------------------------------------------------------------

    def __repr__(self) -> str:
        s = self._core.settings
        vault = ",".join(s.vault.urls) if s.vault is not None else None
        return (
            f"KeyManager(vault_url={vault!r}, vault_path={s.vault_path!r}, "
            f"vault_mount={s.vault_mount!r}, use_env_fallback={s.use_env_fallback}, "
            f"use_default_fallback={s.use_default_fallback})"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # Pickling would write the Vault token into the pickle.
        raise TypeError(
            "KeyManager cannot be pickled (it holds a Vault token); send km.spec() "
            "instead and call spec.manager() in the worker"
        )


register_manager_class(KeyManager)
