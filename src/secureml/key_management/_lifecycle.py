"""The key lifecycle half of :class:`KeyManager`: generate, rotate, versions, retire.

A key is a versioned secret (Vault KV v2): each rotation writes a new version of fresh
random bytes, and old versions stay readable, so data encrypted before a rotation still
decrypts after it, until an operator retires those versions. Writes that make a version
use check-and-set, so two rotations racing cannot both land.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from ._encoding import MIN_KEY_BYTES, check_length, decode_key_material
from ._names import validate_name
from .backends.base import KeyVersion, SecretMetadata, VersionedSecretBackend
from .errors import (
    ConfigurationError,
    KeyFormatError,
    KeyManagementError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VersionConflictError,
)

if TYPE_CHECKING:
    from ._cache import SecretCache
    from .backends.base import SecretBackend

__all__ = ["KeyLifecycle", "check_version", "key_from_material"]

_T = TypeVar("_T")

# Vault's limits on KV v2 custom metadata; checked here so a bad label fails before I/O.
_MAX_LABELS = 64
_MAX_LABEL_KEY_BYTES = 128
_MAX_LABEL_VALUE_BYTES = 512


def check_version(version: object) -> int:
    """A version number: an ``int`` of 1 or more."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, not {type(version).__name__}")
    if version < 1:
        raise ValueError(f"version must be 1 or more; got {version}")
    return version


def key_from_material(material: object, *, described: str) -> bytes:
    """Key bytes from stored material at whatever length it has (bytes, or hex/base64
    text as :func:`~._encoding.decode_key_text` reads it)."""
    if isinstance(material, (bytes, bytearray)):
        return bytes(material)
    if isinstance(material, str):
        return decode_key_material(material, described=described)
    raise KeyFormatError(f"{described} is a {type(material).__name__}, not key material")


def _check_labels(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    if len(metadata) > _MAX_LABELS:
        raise ValueError(f"metadata may hold at most {_MAX_LABELS} labels; got {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values must be str (Vault stores labels as text)")
        if not key or len(key.encode()) > _MAX_LABEL_KEY_BYTES:
            raise ValueError(
                f"metadata key {key[:40]!r} must be 1 to {_MAX_LABEL_KEY_BYTES} bytes long"
            )
        if len(value.encode()) > _MAX_LABEL_VALUE_BYTES:
            raise ValueError(
                f"metadata value for {key!r} is longer than {_MAX_LABEL_VALUE_BYTES} bytes"
            )
    return dict(metadata)


def _check_age(max_age: object) -> timedelta:
    if isinstance(max_age, timedelta):
        age = max_age
    elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
        age = timedelta(seconds=max_age)
    else:
        raise TypeError(
            f"max_age must be a timedelta or a number of seconds, not {type(max_age).__name__}"
        )
    if age <= timedelta(0):
        raise ValueError(f"max_age must be positive; got {age}")
    return age


def _check_now(now: object) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now


class KeyLifecycle:
    """Key lifecycle methods, mixed into :class:`~secureml.key_management.KeyManager`."""

    if TYPE_CHECKING:
        _primary: SecretBackend | None
        _cache: SecretCache

        def _versioned(self, action: str, name: str) -> VersionedSecretBackend: ...

        def _observed(
            self,
            operation: str,
            name: str,
            call: Callable[[], tuple[_T, str | None, str]],
            *,
            version: int | None = None,
            returns_version: bool = False,
        ) -> _T: ...

        def _read_version(self, name: str, version: int) -> tuple[Any, str, str]: ...

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
        validate_name(key_name, what="key_name")
        length = check_length(key_bytes, what="key_bytes", low=MIN_KEY_BYTES)
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be True or False, not {type(overwrite).__name__}")
        labels = _check_labels(metadata)
        backend = self._versioned("generate key", key_name)
        where = backend.locate(key_name)

        exists = ConfigurationError(
            f"key {key_name!r} already exists at {where} (perhaps with every version "
            "deleted); pass overwrite=True to add a version of fresh random bytes, or use "
            "rotate_key()"
        )

        def generate() -> tuple[int, str, str]:
            existing = backend.metadata(key_name)
            has_versions = existing is not None and bool(existing.versions)
            if has_versions and not overwrite:
                raise exists
            if existing is not None and has_versions:
                _refuse_to_drop_live_version(existing, key_name, where)
            # A new key is labelled first: if the labels are refused, no key is left behind.
            labelled = labels is None
            if not labelled and not has_versions:
                backend.set_custom_metadata(key_name, labels or {})
                labelled = True
            cas = existing.current_version if existing is not None else 0
            try:
                version = self._write_version(backend, key_name, secrets.token_bytes(length), cas)
            except VersionConflictError:
                if overwrite:
                    raise
                raise exists from None
            if not labelled:
                backend.set_custom_metadata(key_name, labels or {})
            return version, where, "ok"

        result: int = self._observed("generate_key", key_name, generate, returns_version=True)
        return result

    def rotate_key(self, key_name: str) -> int:
        """Add a version of fresh random bytes, as long as the current key, and make it
        the one reads return. Old versions stay readable (``version=``,
        :meth:`get_key_ring`) until retired with :meth:`delete_secret`.

        Check-and-set makes concurrent rotations safe: one wins, the others raise
        :class:`VersionConflictError` and write nothing. A rotation that would make
        Vault drop a still-live old version for good (``max_versions``) is refused.

        Returns:
            The new version.

        Raises:
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
        validate_name(key_name, what="key_name")
        backend = self._versioned("rotate key", key_name)

        def rotate() -> tuple[int, str, str]:
            return self._rotate(backend, key_name), backend.locate(key_name), "ok"

        result: int = self._observed("rotate_key", key_name, rotate, returns_version=True)
        return result

    def rotate_if_older_than(
        self,
        key_name: str,
        max_age: timedelta | float,
        *,
        now: datetime | None = None,
    ) -> int | None:
        """Rotate the key if its current version is at least ``max_age`` old; for cron.

        Safe to run from several places at once: if another rotation wins the race and
        the key is then young enough, this returns ``None`` instead of failing.

        Args:
            key_name: The key's secret name.
            max_age: A ``timedelta``, or seconds.
            now: The time to compare with (timezone-aware); ``None`` for the real clock.

        Returns:
            The new version, or ``None`` when the key was young enough.

        Example:
            >>> km.rotate_if_older_than("datasets/key", timedelta(days=90))  # doctest: +SKIP
        """
        validate_name(key_name, what="key_name")
        age = _check_age(max_age)
        when = _check_now(now)
        backend = self._versioned("rotate key", key_name)
        where = backend.locate(key_name)

        def due(metadata: SecretMetadata) -> bool:
            current = metadata.version(metadata.current_version)
            return current is None or when - current.created_at >= age

        def maybe_rotate() -> tuple[int | None, str, str]:
            metadata = self._metadata(backend, key_name)
            if not due(metadata):
                return None, where, "fresh"
            try:
                # Check-and-set against the version judged old, not a fresher one.
                return self._rotate(backend, key_name, metadata), where, "ok"
            except VersionConflictError:
                if due(self._metadata(backend, key_name)):
                    raise
                return None, where, "fresh"  # another rotation got there first

        result: int | None = self._observed(
            "rotate_if_older_than", key_name, maybe_rotate, returns_version=True
        )
        return result

    def key_versions(self, key_name: str) -> list[KeyVersion]:
        """Every version Vault keeps of ``key_name``, oldest first.

        Raises:
            SecretNotFoundError: The key does not exist.
            UnsupportedOperationError: No Vault, or a KV v1 mount.

        Example:
            >>> [(v.version, v.is_current) for v in km.key_versions("datasets/key")]
            [(1, False), (2, True)]
        """
        validate_name(key_name, what="key_name")
        backend = self._versioned("list versions of", key_name)

        def versions() -> tuple[list[KeyVersion], str, str]:
            metadata = self._metadata(backend, key_name)
            return list(metadata.versions), backend.locate(key_name), "ok"

        result: list[KeyVersion] = self._observed("key_versions", key_name, versions)
        return result

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
        validate_name(key_name, what="key_name")
        backend = self._versioned("read the key ring of", key_name)
        where = backend.locate(key_name)

        def ring() -> tuple[dict[int, bytes], str, str]:
            live = [v.version for v in self._metadata(backend, key_name).versions if v.live]
            keys: dict[int, bytes] = {}
            for number in live:
                try:
                    material, _, _ = self._read_version(key_name, number)
                except SecretNotFoundError:
                    continue  # deleted since the metadata was read
                keys[number] = key_from_material(
                    material, described=f"version {number} of key {key_name!r} at {where}"
                )
            if not keys:
                raise SecretNotFoundError(key_name, [where], detail="no version is readable")
            return keys, where, "ok"

        result: dict[int, bytes] = self._observed("get_key_ring", key_name, ring)
        return result

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
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if prefix.rstrip("/"):
            validate_name(prefix.rstrip("/"), what="prefix")
        backend = self._versioned("list", prefix or "secrets")

        def listing() -> tuple[list[str], str, str]:
            return backend.list_names(prefix), backend.locate(prefix), "ok"

        result: list[str] = self._observed("list_secrets", prefix, listing)
        return result

    def delete_secret(
        self, name: str, *, destroy: bool = False, versions: Iterable[int] | None = None
    ) -> None:
        """Delete a secret or some of its versions; soft (undoable) unless ``destroy``.

        ============================  ============================================
        call                          effect (KV v2)
        ============================  ============================================
        ``delete_secret(n)``          the latest version is soft-deleted
        ``versions=[1, 2]``           those versions are soft-deleted
        ``versions=[1], destroy=True``  those versions' data is destroyed for good
        ``destroy=True``              every version and the metadata: gone for good
        ============================  ============================================

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
        validate_name(name)
        if not isinstance(destroy, bool):
            raise TypeError(f"destroy must be True or False, not {type(destroy).__name__}")
        chosen = None if versions is None else sorted({check_version(v) for v in versions})
        if chosen == []:
            raise ValueError("versions must name at least one version (or be None)")
        primary = self._primary
        if primary is None:
            raise UnsupportedOperationError(
                f"cannot delete {name!r}: no Vault is configured (the environment is read-only)"
            )

        def delete() -> tuple[None, str, str]:
            self._cache.invalidate(lambda key: key[0] == name)
            try:
                if isinstance(primary, VersionedSecretBackend):
                    if destroy and chosen is None:
                        primary.destroy_all(name)
                    else:
                        primary.delete_versions(name, chosen, destroy=destroy)
                elif destroy and chosen is None:
                    primary.delete(name)
                else:
                    raise UnsupportedOperationError(
                        f"cannot soft-delete {name!r} or delete versions of it: the "
                        f"{primary.source} backend keeps no versions; pass destroy=True"
                    )
            finally:
                self._cache.invalidate(lambda key: key[0] == name)
            return None, primary.locate(name), "ok"

        self._observed("delete_secret", name, delete)

    # -- shared steps ----------------------------------------------------------------

    def _rotate(
        self,
        backend: VersionedSecretBackend,
        key_name: str,
        metadata: SecretMetadata | None = None,
    ) -> int:
        where = backend.locate(key_name)
        if metadata is None:
            metadata = self._metadata(backend, key_name)
        _refuse_to_drop_live_version(metadata, key_name, where)
        length = self._current_length(backend, key_name, metadata)
        return self._write_version(
            backend, key_name, secrets.token_bytes(length), metadata.current_version
        )

    def _write_version(
        self, backend: VersionedSecretBackend, key_name: str, key: bytes, cas: int
    ) -> int:
        # Only reads of "the latest" (None; 0 is the latest with its number) can change:
        # a numbered version never does.
        def latest(cached: tuple[str, int | None]) -> bool:
            return cached[0] == key_name and not cached[1]

        self._cache.invalidate(latest)
        try:
            return backend.put_version(key_name, key, cas=cas)
        finally:
            self._cache.invalidate(latest)

    @staticmethod
    def _metadata(backend: VersionedSecretBackend, key_name: str) -> SecretMetadata:
        metadata = backend.metadata(key_name)
        if metadata is None or not metadata.versions:
            raise SecretNotFoundError(
                key_name, [backend.locate(key_name)], detail="create it with generate_key()"
            )
        return metadata

    def _current_length(
        self, backend: VersionedSecretBackend, key_name: str, metadata: SecretMetadata
    ) -> int:
        """The length of the newest readable version: a rotation keeps the key's size."""
        where = backend.locate(key_name)
        for record in reversed(metadata.versions):
            if not record.live:
                continue
            try:
                material, _, _ = self._read_version(key_name, record.version)
            except SecretNotFoundError:
                continue
            described = f"version {record.version} of key {key_name!r} at {where}"
            return len(key_from_material(material, described=described))
        raise SecretNotFoundError(
            key_name,
            [where],
            detail="no version is readable to take the key length from; use "
            "generate_key(..., overwrite=True) to start again",
        )


def _refuse_to_drop_live_version(metadata: SecretMetadata, key_name: str, where: str) -> None:
    """Vault keeps ``max_versions`` versions and drops the oldest for good on the next
    write: refuse if one of those could still be needed to decrypt something."""
    kept = metadata.max_versions
    if kept is None:
        raise KeyManagementError(
            f"cannot tell how many versions Vault keeps of key {key_name!r} at {where}, so "
            "a rotation could drop an old version for good: grant the token read on the "
            "mount's config path (e.g. secret/config), or set the key's own max_versions "
            "(bao kv metadata put -max-versions=N)"
        )
    dropped = metadata.versions[: max(0, len(metadata.versions) + 1 - kept)]
    alive = [v.version for v in dropped if not v.destroyed]
    if not alive:
        return
    listed = ", ".join(map(str, alive))
    raise KeyManagementError(
        f"rotating key {key_name!r} at {where} would make Vault drop version(s) {listed} "
        f"for good (it keeps {kept} versions) while not destroyed: re-encrypt what they "
        f"protect, then retire them with delete_secret({key_name!r}, versions=[{listed}], "
        "destroy=True), or raise the key's max_versions (bao kv metadata put "
        "-max-versions=N)"
    )
