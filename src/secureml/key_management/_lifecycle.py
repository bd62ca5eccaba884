"""The key lifecycle: generate, rotate, list versions, retire.

A key is a versioned secret (Vault KV v2): each rotation writes a new version of fresh
random bytes, and old versions stay readable, so data encrypted before a rotation still
decrypts after it, until an operator retires those versions. Writes that make a version
use check-and-set, so two rotations racing cannot both land. The user docs are on
``KeyManager``'s methods, which delegate here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from ._core import MANAGED_KEY_LABEL, Core, is_managed
from ._encoding import MIN_KEY_BYTES, key_from_material
from ._observe import Served
from ._validate import (
    check_age,
    check_flag,
    check_labels,
    check_length,
    check_now,
    check_version,
    validate_name,
    validate_secret_name,
)
from .backends.base import KeyVersion, SecretMetadata, VersionedSecretBackend
from .errors import (
    ConfigurationError,
    KeyManagementError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VersionConflictError,
)

__all__ = ["MANAGED_KEY_LABEL", "KeyLifecycle"]

# MANAGED_KEY_LABEL (from the core) marks a secret as a key this library made: only
# those rotate without ``force=True``, as rotating replaces the value with random bytes
# (a password or API key "rotated" would be gone).
_MAX_USER_LABELS = 63  # Vault keeps 64; one is the mark


class KeyLifecycle:
    """Generate, rotate, list and retire keys, over a :class:`~._core.Core`."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._observed = core.observer.observed

    def generate_key(
        self,
        key_name: str,
        key_bytes: int = 32,
        *,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """See ``KeyManager.generate_key``."""
        validate_secret_name(key_name, what="key_name")
        length = check_length(key_bytes, what="key_bytes", low=MIN_KEY_BYTES)
        check_flag(overwrite, "overwrite")
        labels = _user_labels(metadata)
        backend = self._core.require_versioned("generate key", key_name)
        where = backend.locate(key_name)

        exists = ConfigurationError(
            f"key {key_name!r} already exists at {where} (perhaps with every version "
            "deleted); pass overwrite=True to add a version of fresh random bytes, or use "
            "rotate_key()"
        ).in_cli_words(
            f"key {key_name!r} already exists at {where} (perhaps with every version "
            "deleted); pass --overwrite to add a version of fresh random bytes, or run "
            f"secureml keys rotate {key_name}"
        )

        def generate() -> Served:
            existing = backend.metadata(key_name)
            has_versions = existing is not None and bool(existing.versions)
            if has_versions and not overwrite:
                raise exists
            if existing is not None and has_versions:
                _refuse_to_drop_live_version(existing, key_name, where)
            kept = dict(existing.custom_metadata) if existing is not None else {}
            cas = existing.current_version if existing is not None else 0
            # The label says from which version on the secret is a key: an existing key
            # keeps its own; a secret becoming one is a key from the version written now.
            since = kept.get(MANAGED_KEY_LABEL) or str(cas + 1)
            wanted = {**(kept if labels is None else labels), MANAGED_KEY_LABEL: since}
            # A new key is labelled first: if the labels are refused, no key is left behind.
            labelled = has_versions and wanted == kept
            if not has_versions:
                self._label(backend, key_name, wanted)
                labelled = True
            try:
                version = self._write_version(backend, key_name, length, cas)
            except VersionConflictError:
                if overwrite:
                    raise
                raise exists from None
            if not labelled:
                self._label(backend, key_name, wanted)
            return Served(version, where, version=version)

        result: int = self._observed("generate_key", key_name, generate)
        return result

    def rotate_key(self, key_name: str, *, force: bool = False) -> int:
        """See ``KeyManager.rotate_key``."""
        validate_secret_name(key_name, what="key_name")
        check_flag(force, "force")
        backend = self._core.require_versioned("rotate key", key_name)

        def rotate() -> Served:
            version = self._rotate(backend, key_name, force=force)
            return Served(version, backend.locate(key_name), version=version)

        result: int = self._observed("rotate_key", key_name, rotate)
        return result

    def rotate_if_older_than(
        self,
        key_name: str,
        max_age: timedelta | float,
        *,
        now: datetime | None = None,
        force: bool = False,
    ) -> int | None:
        """See ``KeyManager.rotate_if_older_than``."""
        validate_secret_name(key_name, what="key_name")
        check_flag(force, "force")
        age = check_age(max_age)
        when = check_now(now)
        backend = self._core.require_versioned("rotate key", key_name)
        where = backend.locate(key_name)

        def due(metadata: SecretMetadata) -> bool:
            current = metadata.version(metadata.current_version)
            return current is None or when - current.created_at >= age

        def maybe_rotate() -> Served:
            metadata = _metadata(backend, key_name)
            _require_key(metadata, key_name, where, force=force)  # due or not: say so now
            if not due(metadata):
                return Served(None, where, "fresh")
            try:
                # Check-and-set against the version judged old, not a fresher one.
                version = self._rotate(backend, key_name, metadata, force=force)
            except VersionConflictError:
                if due(_metadata(backend, key_name)):
                    raise
                return Served(None, where, "fresh")  # another rotation got there first
            return Served(version, where, version=version)

        result: int | None = self._observed("rotate_if_older_than", key_name, maybe_rotate)
        return result

    def key_versions(self, key_name: str) -> list[KeyVersion]:
        """See ``KeyManager.key_versions`` (also for a reserved name: only Vault is asked,
        and moving data off such a key needs it)."""
        validate_name(key_name, what="key_name")
        backend = self._core.require_versioned("list versions of", key_name)

        def versions() -> Served:
            metadata = _metadata(backend, key_name)
            return Served(list(metadata.versions), backend.locate(key_name))

        result: list[KeyVersion] = self._observed("key_versions", key_name, versions)
        return result

    def labels(self, name: str) -> dict[str, str]:
        """See ``KeyManager.labels``."""
        validate_name(name)
        backend = self._core.require_versioned("read the labels of", name)

        def read() -> Served:
            metadata = _metadata(backend, name)
            return Served(dict(metadata.custom_metadata), backend.locate(name))

        found: dict[str, str] = self._observed("labels", name, read)
        return found

    def get_key_ring(self, key_name: str) -> dict[int, bytes]:
        """See ``KeyManager.get_key_ring``."""
        validate_name(key_name, what="key_name")
        backend = self._core.require_versioned("read the key ring of", key_name)
        where = backend.locate(key_name)

        def ring() -> Served:
            live = [v.version for v in _metadata(backend, key_name).versions if v.live]
            keys: dict[int, bytes] = {}
            for number in live:
                try:
                    material = self._core.read_version(key_name, number).value
                except SecretNotFoundError:
                    continue  # deleted since the metadata was read
                keys[number] = key_from_material(
                    material, described=f"version {number} of key {key_name!r} at {where}"
                )
            if not keys:
                raise SecretNotFoundError(key_name, [where], detail="no version is readable")
            return Served(keys, where)

        result: dict[int, bytes] = self._observed("get_key_ring", key_name, ring)
        return result

    def list_secrets(self, prefix: str = "") -> list[str]:
        """See ``KeyManager.list_secrets``."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if prefix.rstrip("/"):
            validate_name(prefix.rstrip("/"), what="prefix")
        backend = self._core.require_versioned("list", prefix or "secrets")

        def listing() -> Served:
            return Served(backend.list_names(prefix), backend.locate(prefix))

        result: list[str] = self._observed("list_secrets", prefix, listing)
        return result

    def delete_secret(
        self, name: str, *, destroy: bool = False, versions: Iterable[int] | None = None
    ) -> None:
        """See ``KeyManager.delete_secret``."""
        validate_name(name)
        check_flag(destroy, "destroy")
        chosen = None if versions is None else sorted({check_version(v) for v in versions})
        if chosen == []:
            raise ValueError("versions must name at least one version (or be None)")
        primary = self._core.primary
        if primary is None:
            raise UnsupportedOperationError(
                f"cannot delete {name!r}: no Vault is configured (the environment is read-only)"
            )
        versioned = self._core.versioned

        def remove() -> None:
            if versioned is not None:
                if destroy and chosen is None:
                    versioned.destroy_all(name)
                else:
                    versioned.delete_versions(name, chosen, destroy=destroy)
            elif destroy and chosen is None:
                primary.delete(name)
            else:
                raise UnsupportedOperationError(
                    f"cannot soft-delete {name!r} or delete versions of it: the "
                    f"{primary.source} backend keeps no versions; pass destroy=True"
                )

        def delete() -> Served:
            self._core.write(name, remove)
            return Served(None, primary.locate(name))

        self._observed("delete_secret", name, delete)

    def undelete_secret(self, name: str, *, versions: Iterable[int] | None = None) -> None:
        """See ``KeyManager.undelete_secret``."""
        validate_name(name)
        chosen = None if versions is None else sorted({check_version(v) for v in versions})
        if chosen == []:
            raise ValueError("versions must name at least one version (or be None)")
        versioned = self._core.versioned
        restore_versions = getattr(versioned, "undelete_versions", None)
        if versioned is None or restore_versions is None:
            source = (
                "no Vault is configured"
                if self._core.primary is None
                else (f"the {self._core.primary.source} backend cannot undelete")
            )
            raise UnsupportedOperationError(f"cannot undelete {name!r}: {source}")

        def restore() -> None:
            restore_versions(name, chosen)

        def undelete() -> Served:
            self._core.write(name, restore)
            return Served(None, versioned.locate(name))

        self._observed("undelete_secret", name, undelete)

    # -- shared steps ----------------------------------------------------------------

    def _rotate(
        self,
        backend: VersionedSecretBackend,
        key_name: str,
        metadata: SecretMetadata | None = None,
        *,
        force: bool,
    ) -> int:
        where = backend.locate(key_name)
        if metadata is None:
            metadata = _metadata(backend, key_name)
        marked = _require_key(metadata, key_name, where, force=force)
        _refuse_to_drop_live_version(metadata, key_name, where)
        # Never fewer than 16 bytes, even from a short secret rotated with force=True.
        length = max(self._current_length(backend, key_name, metadata), MIN_KEY_BYTES)
        version = self._write_version(backend, key_name, length, metadata.current_version)
        if not marked:  # rotated as a key: a key from this version on, not before
            labels = {**metadata.custom_metadata, MANAGED_KEY_LABEL: str(version)}
            self._label(backend, key_name, labels)
        return version

    def _label(
        self, backend: VersionedSecretBackend, key_name: str, labels: Mapping[str, str]
    ) -> None:
        # Through the core's write: the cached managed-key label is dropped with it.
        self._core.write(
            key_name, lambda: backend.set_custom_metadata(key_name, labels), latest_only=True
        )

    def _write_version(
        self, backend: VersionedSecretBackend, key_name: str, length: int, cas: int
    ) -> int:
        # Only reads of "the latest" can change: a numbered version never does. The key
        # bytes are made inside the lambda, so no frame of this call holds them.
        return self._core.write(
            key_name,
            lambda: backend.put_version(key_name, secrets.token_bytes(length), cas=cas),
            latest_only=True,
        )

    def _current_length(
        self, backend: VersionedSecretBackend, key_name: str, metadata: SecretMetadata
    ) -> int:
        """The length of the newest readable version: a rotation keeps the key's size."""
        where = backend.locate(key_name)
        for record in reversed(metadata.versions):
            if not record.live:
                continue
            try:
                material = self._core.read_version(key_name, record.version).value
            except SecretNotFoundError:
                continue
            described = f"version {record.version} of key {key_name!r} at {where}"
            return len(key_from_material(material, described=described))
        missing = SecretNotFoundError(
            key_name,
            [where],
            detail="no version is readable to take the key length from; use "
            "generate_key(..., overwrite=True) to start again",
        )
        raise missing.in_cli_words(
            str(missing).replace(
                "generate_key(..., overwrite=True)",
                f"secureml keys generate {key_name} --overwrite",
            )
        )


def _require_key(metadata: SecretMetadata, key_name: str, where: str, *, force: bool) -> bool:
    """Whether the secret is labelled as a key; refuse to go on if not, unless forced."""
    marked = is_managed(metadata)
    if not marked and not force:
        raise ConfigurationError(
            f"{key_name!r} at {where} is not a key made by generate_key (it has no "
            f"{MANAGED_KEY_LABEL!r} label): rotating would replace its value with random "
            "bytes; if it is a key, pass force=True (secureml keys rotate --force)"
        )
    return marked


def _user_labels(metadata: object) -> dict[str, str] | None:
    labels = check_labels(metadata)
    if labels is None:
        return None
    if MANAGED_KEY_LABEL in labels:
        raise ValueError(f"metadata label {MANAGED_KEY_LABEL!r} is secureml's own; pick another")
    if len(labels) > _MAX_USER_LABELS:
        raise ValueError(
            f"metadata may hold at most {_MAX_USER_LABELS} labels (Vault keeps 64, one of "
            f"them marks the key); got {len(labels)}"
        )
    return labels


def _metadata(backend: VersionedSecretBackend, key_name: str) -> SecretMetadata:
    metadata = backend.metadata(key_name)
    if metadata is None or not metadata.versions:
        missing = SecretNotFoundError(
            key_name, [backend.locate(key_name)], detail="create it with generate_key()"
        )
        raise missing.in_cli_words(
            str(missing).replace("generate_key()", f"secureml keys generate {key_name}")
        )
    return metadata


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
    flags = " ".join(f"--version {v}" for v in alive)
    raise KeyManagementError(
        f"rotating key {key_name!r} at {where} would make Vault drop version(s) {listed} "
        f"for good (it keeps {kept} versions) while not destroyed: re-encrypt what they "
        f"protect, then retire them with delete_secret({key_name!r}, versions=[{listed}], "
        "destroy=True), or raise the key's max_versions (bao kv metadata put "
        "-max-versions=N)"
    ).in_cli_words(
        f"rotating key {key_name!r} at {where} would make Vault drop version(s) {listed} "
        f"for good (it keeps {kept} versions) while not destroyed: re-encrypt what they "
        f"protect, then retire them with secureml delete {key_name} {flags} --destroy, "
        "or raise the key's max_versions (bao kv metadata put -max-versions=N)"
    )
