"""The one small seam between the manager and where secrets live.

A backend does I/O and nothing else: it does not fall back, cache, decode key material or
warn. ``get`` returns ``None`` for "not here" and raises for "broken"; the manager
decides what each means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

#: What a secret can be: text, raw bytes, or several named fields.
SecretValue: TypeAlias = "str | bytes | dict[str, Any]"


@dataclass(frozen=True)
class KeyVersion:
    """One version of a versioned secret or key (KV v2 keeps one per write).

    Attributes:
        version: The version number, counting from 1.
        created_at: When it was written (UTC).
        deleted: Soft-deleted: unreadable, but an operator can undelete it.
        destroyed: Its data is gone for good.
        is_current: It is the latest version (reads without ``version=`` get it,
            unless it is deleted or destroyed).
        deleted_at: When it was soft-deleted, or ``None``.
    """

    version: int
    created_at: datetime
    deleted: bool
    destroyed: bool
    is_current: bool
    deleted_at: datetime | None = None

    @property
    def live(self) -> bool:
        """Readable: neither deleted nor destroyed."""
        return not (self.deleted or self.destroyed)


@dataclass(frozen=True)
class SecretMetadata:
    """What a versioned backend knows about a secret besides its data.

    Attributes:
        current_version: The latest version's number.
        versions: The versions the backend still keeps, oldest first.
        max_versions: How many versions the backend keeps before it drops the oldest
            for good; ``None`` when that cannot be known (rotations are then refused
            rather than risk losing a version).
        custom_metadata: Free-form labels (purpose, owner, rotation period...).
    """

    current_version: int
    versions: tuple[KeyVersion, ...]
    max_versions: int | None
    custom_metadata: Mapping[str, str] = field(default_factory=dict)

    def version(self, number: int) -> KeyVersion | None:
        """The record of version ``number``, or ``None`` if it is not kept."""
        return next((v for v in self.versions if v.version == number), None)


@runtime_checkable
class SecretBackend(Protocol):
    """A source of secrets.

    Implement it to plug another store into :class:`~secureml.key_management.KeyManager`.
    Errors must be :class:`~secureml.key_management.errors.KeyManagementError` subclasses;
    ``VaultUnavailableError`` (or a subclass) means "try the next source".
    """

    @property
    def source(self) -> str:
        """A short label for messages and logs, e.g. ``vault`` or ``env``."""
        ...

    def locate(self, name: str) -> str:
        """Where ``name`` lives in this backend, for messages (never a value)."""
        ...

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        """Return the secret, or ``None`` when this backend does not have it."""
        ...

    def put(self, name: str, value: SecretValue) -> None:
        """Store ``value`` under ``name``, replacing (or versioning) what was there."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing secret is not an error."""
        ...


@runtime_checkable
class VersionedSecretBackend(SecretBackend, Protocol):
    """A source that keeps every version of a secret (Vault KV v2), so keys can rotate.

    :meth:`SecretBackend.get` takes ``version=``; ``None`` there means "this version
    is not readable" (absent, deleted or destroyed: :meth:`metadata` says which).
    A backend whose store turns out to keep no versions (a KV v1 mount) raises
    :class:`~secureml.key_management.errors.UnsupportedOperationError` from these
    methods, saying why.
    """

    def get_latest(self, name: str) -> tuple[SecretValue, int] | None:
        """The latest version and its number in one read (``None``: absent, or the
        latest version is deleted or destroyed)."""
        ...

    def put_version(self, name: str, value: SecretValue, *, cas: int | None = None) -> int:
        """Write a new version; return its number.

        Args:
            cas: Check-and-set: write only if the current version is this one (0: only
                if the secret does not exist). A mismatch raises
                :class:`~secureml.key_management.errors.VersionConflictError`.
        """
        ...

    def metadata(self, name: str) -> SecretMetadata | None:
        """The secret's versions and labels, or ``None`` if it does not exist."""
        ...

    def set_custom_metadata(self, name: str, metadata: Mapping[str, str]) -> None:
        """Replace the secret's free-form labels."""
        ...

    def delete_versions(self, name: str, versions: Sequence[int] | None, *, destroy: bool) -> None:
        """Soft-delete (undoable) or destroy (for good) the given versions (``None``:
        the latest)."""
        ...

    def destroy_all(self, name: str) -> None:
        """Destroy every version and the metadata of ``name``: it is gone for good."""
        ...

    def list_names(self, prefix: str = "") -> list[str]:
        """Every secret name that starts with ``prefix``, sorted."""
        ...
