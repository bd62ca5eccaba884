"""What a manager reports about itself: status, counters, and access events."""

from __future__ import annotations

from dataclasses import dataclass, field

from .backends.vault import VaultHealth

__all__ = ["AccessEvent", "KeyManagerStats", "KeyManagerStatus"]


@dataclass(frozen=True)
class KeyManagerStatus(VaultHealth):
    """A snapshot of a manager's sources, safe to log (it holds no secret or token).

    Vault fields are ``None`` when unknown: no Vault is configured, it could not be
    reached, or the question needs a token that could not be obtained (``error`` says
    why). The Vault fields are the backend's :class:`VaultHealth`; the manager adds its
    fallbacks.

    Attributes:
        vault_url: The Vault address, or ``None`` when no Vault is configured.
        reachable: Vault answered its health check.
        initialized: Vault has been initialized.
        sealed: Vault is sealed (it serves nothing until unsealed).
        server_version: The server's version, e.g. ``2.4.1``.
        auth_method: ``token``, ``approle``, ``userpass``, ``jwt``, ``kubernetes``...
        token_ttl: Seconds the current token has left; ``None`` if it never expires or
            is unknown.
        renewable: Whether the current token can be renewed.
        kv_mount: The KV engine's mount path.
        kv_version: 1 or 2.
        namespace: The Vault namespace requests are sent to.
        logins: Logins so far by an auth method that can log in again.
        renewals: Token renewals so far.
        env_fallback: ``SECUREML_<NAME>`` variables are read after Vault.
        default_fallback: Insecure development defaults are served as a last resort.
        error: Why some Vault field is unknown, or ``None``.
    """

    env_fallback: bool = False
    default_fallback: bool = False


@dataclass(frozen=True)
class KeyManagerStats:
    """Counters since the manager was built (:meth:`KeyManager.stats`).

    Attributes:
        hits: Reads answered from the cache.
        misses: Reads the cache could not answer.
        stale_serves: Reads answered from an expired cache entry because Vault was down.
        backend_reads: Reads sent to Vault (after single-flight: concurrent misses for
            one name count once).
        failovers: Requests that moved on to another Vault address.
        logins: Logins by an auth method that can log in again.
        renewals: Token renewals.
        errors: Errors raised to callers, by exception class name.
    """

    hits: int = 0
    misses: int = 0
    stale_serves: int = 0
    backend_reads: int = 0
    failovers: int = 0
    logins: int = 0
    renewals: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AccessEvent:
    """One access, as passed to ``audit_hook``. Never carries the value.

    One per call that uses a secret or key; a re-encryption emits two (``decrypt`` of
    the old version, then ``encrypt``).

    Attributes:
        operation: The method: ``get_secret``, ``set_secret``, ``get_encryption_key``,
            ``generate_key``, ``rotate_key``, ..., ``encrypt``, ``decrypt`` (also for
            the stream and file forms), ``transit.encrypt``, ...; for columns,
            ``column_cipher`` (a key version resolved: once per cipher and version),
            ``column_encrypt`` and ``column_decrypt`` (one per call, over all its values).
        name: The secret or key's name (``""`` for a ciphertext too malformed to name
            one).
        source: Where the value came from (``vault:secret/secureml/x``, ``env:...``,
            ``default=``, ``insecure dev default``), or the source written to; ``None``
            when nothing answered.
        version: The version asked for, used or made (``None``: the latest, or a
            source without versions).
        outcome: ``ok``, ``cached``, ``stale``, ``fresh`` (nothing was due),
            ``rejected`` (a ciphertext that does not authenticate) or ``error``.
        error: The exception class name when ``outcome`` is ``rejected`` or ``error``.
        duration: Seconds the call took.
    """

    operation: str
    name: str
    source: str | None
    version: int | None
    outcome: str
    error: str | None
    duration: float
