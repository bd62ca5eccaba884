"""The one exception hierarchy of :mod:`secureml.key_management`.

::

    KeyManagementError                 base of everything raised on purpose
    +-- ConfigurationError             (ValueError) bad settings, refused dev defaults
    +-- SecretNotFoundError            (KeyError, LookupError, ValueError) no source had it
    +-- KeyFormatError                 (ValueError) wrong length, undecodable key material
    +-- VaultError                     the server answered with a problem
    |   +-- VaultUnavailableError      unreachable, timed out, 5xx: fallbacks may apply
    |   |   +-- VaultSealedError       the server is sealed
    |   +-- WriteOutcomeUnknownError   the link broke mid-write: it may have landed
    |   +-- VersionConflictError       another writer made a new version first (CAS)
    |   +-- PermissionDeniedError      403: the policy forbids it; never masked
    |   +-- AuthenticationError        the token is invalid, expired or revoked
    +-- UnsupportedOperationError      the source cannot do that (e.g. write to env)
    +-- InvalidCiphertextError         decryption failed; deliberately opaque
        +-- KeyVersionUnavailableError (also SecretNotFoundError) the managed key's
                                       version a message names is deleted or destroyed

    SecurityWarning (UserWarning)      an insecure setting is in use (dev defaults)

Every message names the secret and the source involved, never a secret value or a
token, so errors are safe to log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "InvalidCiphertextError",
    "KeyFormatError",
    "KeyManagementError",
    "KeyVersionUnavailableError",
    "PermissionDeniedError",
    "SecretNotFoundError",
    "SecurityWarning",
    "UnsupportedOperationError",
    "VaultError",
    "VaultSealedError",
    "VaultUnavailableError",
    "VersionConflictError",
    "WriteOutcomeUnknownError",
]


_E = TypeVar("_E", bound="KeyManagementError")


class KeyManagementError(Exception):
    """Base class of every error :mod:`secureml.key_management` raises on purpose.

    Attributes:
        cli_message: The same message in the command line's words (its options, commands
            and variables instead of Python arguments), where they differ; ``None``
            where the message serves both.
    """

    cli_message: str | None = None

    def in_cli_words(self: _E, text: str) -> _E:
        """Set :attr:`cli_message` to ``text``; returns the error, so a raise site reads
        ``raise SomeError(message).in_cli_words(cli_message)``."""
        self.cli_message = text
        return self


class ConfigurationError(KeyManagementError, ValueError):
    """The manager's settings are wrong or unsafe; the message says how to fix them."""


class SecretNotFoundError(KeyManagementError, KeyError, ValueError):
    """No configured source holds the secret (or the version of it that was asked for).

    Attributes:
        name: The secret that was asked for.
        sources_tried: The sources consulted, in order (e.g. ``vault:secret/secureml/x``).
        detail: What the source said about it (e.g. ``version 2 was destroyed``), or
            ``None``.
    """

    def __init__(self, name: str, sources_tried: Sequence[str], detail: str | None = None) -> None:
        self.name = name
        self.sources_tried = tuple(sources_tried)
        self.detail = detail
        tried = ", ".join(self.sources_tried) if self.sources_tried else "no source enabled"
        message = f"secret {name!r} not found (tried: {tried})"
        super().__init__(f"{message}: {detail}" if detail else message)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, wrapping it in quotes.
        return str(self.args[0])

    def __reduce__(
        self,
    ) -> tuple[type[SecretNotFoundError], tuple[str, tuple[str, ...], str | None], dict[str, Any]]:
        # Rebuild from the fields, so the error survives pickling (multiprocessing) and
        # copies; the state keeps what was set on it since (its cli_message).
        return (type(self), (self.name, self.sources_tried, self.detail), dict(vars(self)))


class KeyFormatError(KeyManagementError, ValueError):
    """Key material has the wrong length or cannot be decoded.

    Attributes:
        stored_bytes: The length of the material as stored, when it decoded but had
            another length than was asked for (so a caller, such as the command line,
            can read it at the length it has); else ``None``.
    """

    def __init__(self, message: str, *, stored_bytes: int | None = None) -> None:
        super().__init__(message)
        self.stored_bytes = stored_bytes


class VaultError(KeyManagementError):
    """Vault (or OpenBao) answered with an error or could not be asked."""


class VaultUnavailableError(VaultError):
    """Vault could not be reached, timed out, or answered 5xx.

    Reads fall through to the next source on this error; writes raise it.
    """


class VaultSealedError(VaultUnavailableError):
    """Vault is sealed and serves nothing until an operator unseals it."""


class WriteOutcomeUnknownError(VaultError):
    """A write (or login) may or may not have happened: the connection broke after it
    was sent, or a gateway answered 500/502/504.

    It is not retried automatically, since a replay could overwrite a newer value (or
    spend a single-use secret ID). Read the secret back to see whether it landed before
    writing again. Deliberately not a :class:`VaultUnavailableError`, which means the
    request was not carried out and retrying it is safe.
    """


class VersionConflictError(VaultError):
    """A check-and-set write lost a race: another writer made a new version first.

    Raised by :meth:`~secureml.key_management.KeyManager.rotate_key` when two rotations
    of one key run at once: one wins, the other gets this error and nothing of its own
    is written. Read the key's versions to see what the winner did.
    """


class PermissionDeniedError(VaultError):
    """The token is valid but its policies forbid the operation.

    Never masked by a fallback: a policy mistake must be seen, not papered over.
    """


class AuthenticationError(VaultError):
    """Vault rejected the credentials: the token is invalid, expired or revoked."""


class UnsupportedOperationError(KeyManagementError):
    """The operation is not possible with the configured source (the message says why)."""


class InvalidCiphertextError(KeyManagementError):
    """Decryption failed.

    Its message deliberately says nothing about why (bad tag, truncation, wrong key), so
    failures give an attacker no oracle.

    Attributes:
        reason: What can be told without a key, from the bytes' shape alone (public to
            anyone holding them): ``not-secureml`` (they do not start as a secureml
            message does), ``truncated`` (they end inside the header), or
            ``unauthenticated`` (everything else: a wrong key or aad, altered or cut
            segments; never told apart).
    """

    reason: str = "unauthenticated"


class KeyVersionUnavailableError(InvalidCiphertextError, SecretNotFoundError):
    """The message names a managed key whose version is not readable: it never existed,
    or it was deleted or destroyed (crypto-shredding does this on purpose).

    An :class:`InvalidCiphertextError` (the message cannot be opened) and a
    :class:`SecretNotFoundError` (the key version is the problem, not the data). Its
    message does not say which of those states the version is in, nor what the latest
    version is: the header that asked is attacker input.
    """


class SecurityWarning(UserWarning):
    """An insecure setting is in use, such as a generated development default key."""
