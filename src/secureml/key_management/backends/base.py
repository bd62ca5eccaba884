"""The one small seam between the manager and where secrets live.

A backend does I/O and nothing else: it does not fall back, cache, decode key material or
warn. ``get`` returns ``None`` for "not here" and raises for "broken"; the manager
decides what each means.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, runtime_checkable

#: What a secret can be: text, raw bytes, or several named fields.
SecretValue: TypeAlias = "str | bytes | dict[str, Any]"


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
