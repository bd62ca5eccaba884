"""The core every facade shares: sources, the one read policy, the lookup chain.

A :class:`Core` is built once per manager from its :class:`~._settings.ManagerSettings`
and handed to the services (secrets, lifecycle, key materials, Transit); the facade only
delegates. What a source can do is decided here, once, at construction: no call pays
for a runtime Protocol check.

The read policy, in one place (:meth:`Core.through_cache`): a fresh cache entry is
served; a miss is loaded once for every concurrent caller (a waiting caller waits no
longer than its own deadline); a permission error drops the name's entries and an
authentication error drops them all, so nothing that identity may no longer read is
ever served again, not even stale; only an outage (unreachable, sealed, 5xx) may serve
an entry past its TTL, up to ``max_stale``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, Protocol, TypeVar

from ._cache import ABSENT, CacheKey, SecretCache, WaitExpiredError, caller_copy
from ._counters import BACKEND_READS, HITS, MISSES, STALE
from ._observe import Observer, Served
from ._settings import ManagerSettings
from ._status import KeyManagerStats, KeyManagerStatus
from .backends.base import SecretBackend, SecretMetadata, VersionedSecretBackend
from .backends.env import EnvBackend
from .backends.vault import VaultBackend
from .errors import (
    AuthenticationError,
    KeyManagementError,
    KeyVersionUnavailableError,
    PermissionDeniedError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VaultUnavailableError,
)

__all__ = [
    "MANAGED_KEY_LABEL",
    "Core",
    "HasCore",
    "core_of",
    "first_key_version",
    "is_managed",
    "label_covers",
]

_T = TypeVar("_T")

#: The custom-metadata label that marks a secret as a key made by ``generate_key`` or
#: ``rotate_key``: only those open messages and rotate without being declared or forced.
MANAGED_KEY_LABEL = "secureml-key"
#: The cache slot of a name's label (versions are 1 and up; 0 is the current version).
_MARK = -1


class HasCore(Protocol):
    """What services are built on: a manager (any facade) with its core."""

    @property
    def _core(self) -> Core: ...


class Core:
    """Sources, cache, lookup chain and observer of one manager. Thread- and fork-safe
    (each process-bound part resets itself in a forked child).

    Args:
        settings: The manager's checked settings.
    """

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        primary: SecretBackend | None = settings.backend
        if settings.vault is not None:
            primary = VaultBackend(
                settings.vault,
                mount=settings.vault_mount,
                path=settings.vault_path,
                kv_version=settings.vault_kv_version,
            )
        self.primary = primary
        self.env = EnvBackend() if settings.use_env_fallback else None
        # Capabilities, decided once.
        self.versioned: VersionedSecretBackend | None = (
            primary if isinstance(primary, VersionedSecretBackend) else None
        )
        self.vault: VaultBackend | None = primary if isinstance(primary, VaultBackend) else None
        self.cache = SecretCache(
            ttl=settings.cache_ttl, size=settings.cache_size, max_stale=settings.max_stale
        )
        self.observer = Observer(settings.audit_hook, on_refused=self._forget_refused)

    # -- what a source can do ----------------------------------------------------------

    def require_vault(self, action: str) -> VaultBackend:
        """The Vault backend, for features only Vault has (Transit)."""
        if self.vault is None:
            raise UnsupportedOperationError(
                f"cannot {action}: this manager has no Vault (configure vault_url= and credentials)"
            )
        return self.vault

    def require_versioned(self, action: str, name: str) -> VersionedSecretBackend:
        """The primary source, if it keeps versions; else say why the call cannot work."""
        if self.versioned is not None:
            return self.versioned
        if self.primary is None:
            raise UnsupportedOperationError(
                f"cannot {action} {name!r}: no Vault is configured, and environment "
                "variables and dev defaults keep no versions; configure a Vault KV v2 mount"
            )
        raise UnsupportedOperationError(
            f"cannot {action} {name!r}: the {self.primary.source} backend keeps no "
            "versions (it does not implement VersionedSecretBackend)"
        )

    # -- the read policy -----------------------------------------------------------------

    def through_cache(
        self, key: CacheKey, load: Callable[..., object], *args: Any
    ) -> tuple[Any, str]:
        """``key``'s value (``ABSENT``: the primary has none), loaded by ``load(*args)``
        on a miss, and how it was served (``cached``, ``ok``, ``stale``): the one
        read-through (module docstring).

        Raises:
            VaultUnavailableError: An outage, and no entry young enough to serve stale.
            PermissionDeniedError, AuthenticationError: Never masked, never stale.
        """
        counts = self.observer.counts.mine()
        entry = self.cache.fresh(key)
        if entry is not None:
            counts[HITS] += 1
            return entry.value, "cached"
        counts[MISSES] += 1
        try:
            value, _ = self.cache.load(key, self._counted, load, *args, wait=self._wait())
        except WaitExpiredError:
            where = self._locate(key[0])
            outage = VaultUnavailableError(
                f"gave up waiting for another caller's read of {where} within this call's deadline"
            )
            return self._stale_or_raise(key, outage)
        except PermissionDeniedError:
            # Never again serve what this identity may no longer read, not even stale.
            self.cache.invalidate(lambda cached: cached[0] == key[0])
            raise
        except AuthenticationError:
            self.cache.invalidate()  # the credentials are gone: so is what they read
            raise
        except VaultUnavailableError as exc:
            return self._stale_or_raise(key, exc)
        self.observer.recovered()
        return value, "ok"

    def _forget_refused(self, refusal: Exception, name: str) -> None:
        """Whatever call Vault refused (a read, a write, a listing, Transit): a 401
        means the credentials are gone, and everything they read goes; a 403 drops the
        name the call was about. So no later outage can serve any of it stale."""
        if isinstance(refusal, AuthenticationError):
            self.cache.invalidate()
        elif isinstance(name, str):
            self.cache.invalidate(lambda cached: cached[0] == name)

    def _counted(self, load: Callable[..., object], *args: Any) -> object:
        # A method, not a closure: a read holds it across its wait (see Secrets).
        self.observer.counts.mine()[BACKEND_READS] += 1
        return load(*args)

    def _wait(self) -> float | None:
        """How long a caller may wait for another's load: its own call's budget."""
        return None if self.vault is None else self.vault.call_budget()

    def _stale_or_raise(self, key: CacheKey, outage: VaultUnavailableError) -> tuple[Any, str]:
        stale = self.cache.stale(key)
        if stale is None or stale.value is ABSENT:
            raise outage
        self.observer.counts.mine()[STALE] += 1
        self.observer.log_once(
            ("stale", key[0]),
            "%s; serving %r from a cached value %.0f s old (max_stale allows %.0f s)",
            outage,
            key[0],
            time.monotonic() - stale.fetched_at,
            self.cache.max_stale,
        )
        return stale.value, "stale"

    def _locate(self, name: str) -> str:
        return self.primary.locate(name) if self.primary is not None else name

    # -- reads -------------------------------------------------------------------------

    def lookup(
        self,
        name: str,
        default: object = None,
        dev_default: Callable[[str], object] | None = None,
        *,
        outage_falls_through: bool = True,
    ) -> Served:
        """Walk the chain: primary, environment, ``default``, dev default.

        Args:
            dev_default: Makes ``name``'s dev default, when those are allowed (``None``:
                never, as for anything that encrypts).
            outage_falls_through: An outage moves on to the next source (reads), or
                raises (what picks the key for new data must not switch sources).
        """
        tried: list[str] = []
        outage: VaultUnavailableError | None = None
        primary = self.primary
        if primary is not None:
            try:
                found = self.read_unversioned(name)
            except VaultUnavailableError as exc:
                if not outage_falls_through:
                    raise
                outage = exc
                self.observer.log_once(
                    ("outage", primary.source),
                    "%s; falling back to the next source until it answers again",
                    exc,
                )
            else:
                if found is not None:
                    return found
            tried.append(primary.locate(name))  # only now: a hit needs no list
        if self.env is not None:
            where = self.env.locate(name)
            tried.append(where)
            value = self.env.get(name)
            if value is not None:
                self._note_fallback(name, tried, outage)
                return Served(value, where)
        if default is not None:
            self._note_fallback(name, tried, outage)
            return Served(default, "default=")
        if self.settings.use_default_fallback and dev_default is not None:
            self.observer.warn_dev_default(name)
            return Served(dev_default(name), "insecure dev default")
        if outage is not None:
            _raise_outage(outage, name, tried)
        raise SecretNotFoundError(name, tried)

    def read_version(self, name: str, version: int, *, explain: bool = True) -> Served:
        """Version ``version`` of ``name`` from the primary source (no fallback: no other
        source has versions); a version that cannot be read is an error that says why
        (``explain``), or only that it cannot be read (for versions a ciphertext asks
        for: neither a version oracle nor another request)."""
        backend = self.require_versioned("read version", name)
        where = backend.locate(name)
        key = (name, version)
        # A version never changes: a stale copy is as true as a fresh one.
        value, outcome = self.through_cache(key, _loaded, backend, name, version)
        if value is ABSENT:
            self.cache.invalidate(lambda cached: cached == key)  # it may yet be written
            if not explain:
                raise KeyVersionUnavailableError(
                    name,
                    [where],
                    detail=f"the message needs version {version}, which cannot be read (it "
                    "does not exist, or was deleted or destroyed)",
                )
            raise SecretNotFoundError(name, [where], detail=_why_unreadable(backend, name, version))
        return Served(caller_copy(value), where, outcome, version)

    def key_mark(self, name: str) -> int | None:
        """The first version of ``name`` that is a managed key (its
        :data:`MANAGED_KEY_LABEL` label), read from its metadata, never its value, and
        cached like a value; ``0``: not a managed key (also without a versioned primary,
        or on a KV v1 mount: neither keeps labels); ``None``: no such secret.

        Raises:
            PermissionDeniedError: The token may not read the metadata (the message says
                what to grant, or to declare the key instead).
        """
        backend = self.versioned
        if backend is None:
            return 0

        def load() -> object:
            metadata = backend.metadata(name)
            return ABSENT if metadata is None else first_key_version(metadata)

        try:
            value, _ = self.through_cache((name, _MARK), load)
        except UnsupportedOperationError:
            return 0
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(
                f"{exc}; encrypt and decrypt read a key's metadata to check it is a managed "
                "key: grant read on it, or declare the key (KeyManager(declared_keys=[...]))"
            ).in_cli_words(
                f"{exc}; encrypt and decrypt read a key's metadata to check it is a managed "
                f"key: grant read on it, or declare the key (--declared-key {name})"
            ) from None
        return None if value is ABSENT else int(value)

    def marked_now(self, name: str, version: int) -> bool:
        """Whether a fresh cache entry says version ``version`` of ``name`` is a managed
        key's (no I/O)."""
        entry = self.cache.fresh((name, _MARK))
        return entry is not None and label_covers(entry.value, version)

    def read_unversioned(self, name: str) -> Served | None:
        """The latest value of ``name`` in the primary source alone (no fallback), through
        the cache; ``None`` when it has none. An outage raises unless served stale."""
        primary = self.primary
        if primary is None:
            return None
        value, outcome = self.through_cache((name, None), _loaded, primary, name)
        if value is ABSENT:
            return None
        return Served(caller_copy(value), primary.locate(name), outcome)

    def read_current(self, name: str) -> Served | None:
        """The current version of ``name`` with its number, in one read, cached under
        ``(name, 0)``; ``None`` when the primary keeps no version of it."""
        backend = self.versioned
        if backend is None:
            return None

        def load() -> object:
            found = backend.get_latest(name)
            return ABSENT if found is None else (found[1], found[0])

        try:
            value, outcome = self.through_cache((name, 0), load)
        except UnsupportedOperationError:
            return None  # a KV v1 mount: the key has no versions
        if value is ABSENT:
            return None
        number, material = value
        return Served(material, backend.locate(name), outcome, number)

    # -- writes ------------------------------------------------------------------------

    def write(self, name: str, write: Callable[[], _T], *, latest_only: bool = False) -> _T:
        """Run ``write`` with ``name``'s cached entries dropped before (a read in flight
        must not cache what it finds) and after (a write of unknown outcome may have
        changed the value too). ``latest_only`` keeps numbered versions, which a new
        version does not change."""

        def doomed(cached: CacheKey) -> bool:
            numbered = cached[1] is not None and cached[1] > 0  # a version, not the label
            return cached[0] == name and (not latest_only or not numbered)

        self.cache.invalidate(doomed)
        try:
            return write()
        finally:
            self.cache.invalidate(doomed)

    # -- reports -----------------------------------------------------------------------

    def status(self) -> KeyManagerStatus:
        """Where secrets come from, and how Vault is doing (see ``KeyManager.status``)."""
        health = asdict(self.vault.health()) if self.vault is not None else {}
        return KeyManagerStatus(
            **health,
            env_fallback=self.settings.use_env_fallback,
            default_fallback=self.settings.use_default_fallback,
        )

    def stats(self) -> KeyManagerStats:
        """Counters since the manager was built (or this process forked)."""
        (hits, misses, stale, reads), errors = self.observer.counts.totals()
        # Any primary may report these (custom backends too), as Vault's does.
        session = getattr(self.primary, "session", None)
        return KeyManagerStats(
            hits=hits,
            misses=misses,
            stale_serves=stale,
            backend_reads=reads,
            failovers=int(getattr(self.primary, "failovers", 0)),
            logins=int(getattr(session, "logins", 0)),
            renewals=int(getattr(session, "renewals", 0)),
            errors=errors,
        )

    def _note_fallback(
        self, name: str, tried: list[str], outage: VaultUnavailableError | None
    ) -> None:
        """Say once per name that the primary did not have what a fallback served."""
        if self.primary is not None and outage is None:
            self.observer.log_once(
                ("absent", name),
                "secret %r is not in %s; using a fallback (%s)",
                name,
                tried[0],
                ", ".join(tried[1:]) or "default=",
            )


def is_managed(metadata: SecretMetadata) -> bool:
    """Whether a secret's metadata carries the managed-key label."""
    return metadata.custom_metadata.get(MANAGED_KEY_LABEL) is not None


def label_covers(since: object, version: int) -> bool:
    """Whether a managed-key label (its first key version, as :meth:`Core.key_mark`
    gives or caches it: ``0``/``None``/``ABSENT`` for none) covers ``version``."""
    return type(since) is int and 0 < since <= version


def first_key_version(metadata: SecretMetadata) -> int:
    """The first version the managed-key label covers (its value: the label belongs to
    the secret, and the versions before a forced rotation are not keys); ``0``: none."""
    label = metadata.custom_metadata.get(MANAGED_KEY_LABEL)
    if label is None or not label.isdigit() or not 0 < len(label) < 11:
        return 0  # absent, or not written by secureml: no version is a key
    return int(label)


def core_of(owner: object) -> Core:
    """The core of a manager (or the core itself): what services are built on.

    Raises:
        TypeError: ``owner`` is neither.
    """
    if isinstance(owner, Core):
        return owner
    core = getattr(owner, "_core", None)
    if not isinstance(core, Core):
        raise TypeError(f"expected a KeyManager, not {type(owner).__name__}")
    return core


def _loaded(backend: SecretBackend, name: str, version: int | None = None) -> object:
    value = backend.get(name, version)
    return ABSENT if value is None else value


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


def _raise_outage(outage: VaultUnavailableError, name: str, tried: list[str]) -> NoReturn:
    """Vault was down and nothing after it had the secret: say both, keep the type."""
    raise type(outage)(
        f"{outage}; no fallback had {name!r} either (tried: {', '.join(tried)})"
    ) from outage
