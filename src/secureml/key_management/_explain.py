"""``km.explain(name)``: where a secret's value comes from, without showing it.

Every source of the lookup chain is asked, in order, what it holds for the name: Vault
(path, KV version, the secret's version and when it was written), the environment
variable, ``default=``, the insecure dev default. The report says which one a read
would be served from, which lower sources it shadows (a ``SECUREML_X`` also set), and
what the cache holds. Instead of a value it gives a fingerprint: HMAC-SHA256 under a
fingerprint key, never a plain hash (a plain hash of a password is a brute-force
target). With a key shared between machines (``SECUREML_FINGERPRINT_KEY``, or the
``fingerprint_key`` argument) fingerprints can be compared across them; without one a
random per-process key is used, and only fingerprints from one process compare. For a
key (one ``generate_key`` made, or a declared one) a short key check value is given too.

Asking costs a read of the value and of its metadata from Vault, uncached.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ._devdefaults import dev_default_secret, development_environment
from ._encoding import key_from_material
from ._validate import validate_name
from .backends.env import EnvBackend
from .errors import (
    KeyFormatError,
    PermissionDeniedError,
    UnsupportedOperationError,
    VaultUnavailableError,
)

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["FINGERPRINT_KEY_VAR", "CacheReport", "Explanation", "SourceReport", "explain"]

#: A fingerprint key shared between machines (hex or base64, at least 16 bytes).
FINGERPRINT_KEY_VAR = "SECUREML_FINGERPRINT_KEY"
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class SourceReport:
    """What one source of the lookup chain holds for the name (never the value).

    Attributes:
        kind: ``vault``, ``env``, ``default`` or ``dev-default``.
        location: ``vault:secret/secureml/x``, ``env:SECUREML_X``, ``default=``,
            ``insecure dev default``.
        state: ``answers`` (it holds a value), ``absent``, ``deleted`` (Vault: the
            latest version is soft-deleted), ``unavailable`` (Vault could not be
            asked), ``denied``, ``off`` (turned off in the settings), ``refused`` (dev
            defaults outside development) or ``not-given`` (no ``default=``).
        detail: Why, for ``unavailable``, ``denied`` and ``refused``.
        version: The secret's current version (Vault KV v2).
        created_at: When that version was written (UTC, Vault KV v2).
        age_seconds: How long ago that was.
        kv_version: Vault's KV engine version (1 or 2).
        fingerprint: The keyed fingerprint of the value it holds, if it holds one.
        shadowed: It holds a value, but a source before it wins.
    """

    kind: str
    location: str
    state: str
    detail: str | None = None
    version: int | None = None
    created_at: datetime | None = None
    age_seconds: float | None = None
    kv_version: int | None = None
    fingerprint: str | None = None
    shadowed: bool = False


@dataclass(frozen=True)
class CacheReport:
    """What this manager's cache holds for the name.

    Attributes:
        state: ``fresh`` (served without asking Vault), ``stale`` (past its TTL: served
            only while Vault is down, up to ``max_stale``), ``expired`` or ``none``.
        age_seconds: How long ago it was read from Vault.
        seconds_left: How long it stays fresh (``fresh``) or servable stale (``stale``).
    """

    state: str
    age_seconds: float | None = None
    seconds_left: float | None = None


@dataclass(frozen=True)
class Explanation:
    """Where ``name``'s value comes from (``KeyManager.explain``). Holds no value, so
    it is safe to print and log.

    Attributes:
        name: The secret's name.
        served_from: The location a read would be served from, or ``None`` (a read
            would raise).
        sources: Every source in lookup order.
        cache: What the cache holds.
        fingerprint: The keyed fingerprint of the value a read would return.
        fingerprint_scope: ``shared`` (a fingerprint key was given: comparable across
            machines holding it) or ``process`` (a random key: comparable only within
            this process).
        key_check_value: For a key (``generate_key`` made it, or it is declared): six
            hex digits of HMAC-SHA256 under the key itself, to tell two keys apart.
    """

    name: str
    served_from: str | None
    sources: tuple[SourceReport, ...]
    cache: CacheReport
    fingerprint: str | None
    fingerprint_scope: str
    key_check_value: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (times in RFC 3339)."""

        def plain(value: Any) -> Any:
            return (
                value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
            )

        return {
            "name": self.name,
            "served_from": self.served_from,
            "fingerprint": self.fingerprint,
            "fingerprint_scope": self.fingerprint_scope,
            "key_check_value": self.key_check_value,
            "cache": vars(self.cache).copy(),
            "sources": [{k: plain(v) for k, v in vars(s).items()} for s in self.sources],
        }


def fingerprint_key(given: bytes | None = None) -> tuple[bytes, str]:
    """The fingerprint key and its scope: ``given``, else ``SECUREML_FINGERPRINT_KEY``,
    else this process's random key."""
    if given is not None:
        if len(given) < 16:
            raise ValueError("fingerprint_key must be at least 16 bytes")
        return given, "shared"
    text = os.environ.get(FINGERPRINT_KEY_VAR, "").strip()
    if text:
        key = key_from_material(text, described=f"env {FINGERPRINT_KEY_VAR}")
        if len(key) < 16:
            raise KeyFormatError(f"env {FINGERPRINT_KEY_VAR} must hold at least 16 bytes")
        return key, "shared"
    return _PROCESS_KEY, "process"


def fingerprint(key: bytes, value: Any) -> str:
    """``hmac-sha256:`` and 16 hex digits; a text, bytes and fields never collide."""
    if isinstance(value, bytes):
        data = b"b:" + value
    elif isinstance(value, dict):
        data = b"j:" + json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    else:
        data = b"s:" + str(value).encode()
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:16]


def key_check_value(key: bytes) -> str:
    """Six hex digits that tell keys apart and need the key to compute (as a KCV)."""
    return hmac.new(key, b"secureml key check value", hashlib.sha256).hexdigest()[:6]


def explain(
    core: Core, name: str, default: object = None, *, fingerprint_with: bytes | None = None
) -> Explanation:
    """See ``KeyManager.explain``."""
    validate_name(name, what="secret_name")
    fp_key, scope = fingerprint_key(fingerprint_with)
    found: list[tuple[SourceReport, Any]] = []
    if core.primary is not None:
        found.append(_vault(core, name, fp_key))
    if core.env is not None:
        found.append(_answered("env", core.env.locate(name), core.env.get(name), fp_key))
    else:  # where it would look, were the fallback on
        found.append((SourceReport("env", EnvBackend({}).locate(name), "off"), None))
    if default is not None:
        found.append(_answered("default", "default=", default, fp_key))
    else:
        found.append((SourceReport("default", "default=", "not-given"), None))
    found.append(_dev_default(core, name, fp_key))
    del default

    winner: int | None = None
    for index, (report, _) in enumerate(found):
        if report.state == "answers":
            winner = index
            break
        if report.state == "denied":  # never masked by a fallback
            break
    sources = tuple(
        _shadowed(report)
        if winner is not None and i > winner and report.state == "answers"
        else report
        for i, (report, _) in enumerate(found)
    )
    served_from = sources[winner].location if winner is not None else None
    served = found[winner][1] if winner is not None else None
    check = _key_check(core, name, served) if winner is not None else None
    result = Explanation(
        name=name,
        served_from=served_from,
        sources=sources,
        cache=_cache(core, name),
        fingerprint=sources[winner].fingerprint if winner is not None else None,
        fingerprint_scope=scope,
        key_check_value=check,
    )
    del found, served
    return result


def _answered(kind: str, location: str, value: Any, fp_key: bytes) -> tuple[SourceReport, Any]:
    if value is None:
        return SourceReport(kind, location, "absent"), None
    return SourceReport(kind, location, "answers", fingerprint=fingerprint(fp_key, value)), value


def _shadowed(report: SourceReport) -> SourceReport:
    return SourceReport(**{**vars(report), "shadowed": True})


def _vault(core: Core, name: str, fp_key: bytes) -> tuple[SourceReport, Any]:
    primary = core.primary
    assert primary is not None  # noqa: S101 - checked by the caller
    location = primary.locate(name)
    kv_version: int | None = None
    try:
        value = primary.get(name)
        if core.vault is not None:
            kv_version = core.vault.kv_version()  # known once the read is made
        metadata = None
        if core.versioned is not None:
            try:
                metadata = core.versioned.metadata(name)
            except (PermissionDeniedError, UnsupportedOperationError):
                metadata = None  # the value still says which source wins
    except VaultUnavailableError as exc:
        return SourceReport("vault", location, "unavailable", detail=_one_line(exc)), None
    except PermissionDeniedError as exc:
        return SourceReport("vault", location, "denied", detail=_one_line(exc)), None
    version = created = age = None
    state = "answers" if value is not None else "absent"
    if metadata is not None:
        current = next((v for v in metadata.versions if v.is_current), None)
        if current is not None:
            version, created = current.version, current.created_at
            age = max(0.0, (datetime.now(timezone.utc) - created).total_seconds())
            if value is None and (current.deleted or current.destroyed):
                state = "deleted"
    report = SourceReport(
        "vault",
        location,
        state,
        version=version,
        created_at=created,
        age_seconds=age,
        kv_version=kv_version,
        fingerprint=fingerprint(fp_key, value) if value is not None else None,
    )
    return report, value


def _dev_default(core: Core, name: str, fp_key: bytes) -> tuple[SourceReport, Any]:
    location = "insecure dev default"
    if not core.settings.use_default_fallback:
        return SourceReport("dev-default", location, "off"), None
    refused = development_environment()
    if refused is not None:
        return (
            SourceReport(
                "dev-default",
                location,
                "refused",
                detail=f"SECUREML_ENV={refused} is not development",
            ),
            None,
        )
    return _answered("dev-default", location, dev_default_secret(name), fp_key)


def _cache(core: Core, name: str) -> CacheReport:
    cache = core.cache
    key = (name, None)
    entry = cache.fresh(key)
    now = cache._clock()
    if entry is not None:
        return CacheReport("fresh", now - entry.fetched_at, max(0.0, entry.expires_at - now))
    entry = cache.stale(key)
    if entry is not None:
        left = entry.fetched_at + core.settings.max_stale - now
        return CacheReport("stale", now - entry.fetched_at, max(0.0, left))
    return CacheReport("none")


def _key_check(core: Core, name: str, value: Any) -> str | None:
    """A key check value, for a key only: one the library made, or one declared (a
    password's would be as brute-forceable as a plain hash)."""
    if not isinstance(value, (bytes, str)):
        return None
    is_key = name in core.settings.declared_keys
    if not is_key:
        try:
            is_key = bool(core.key_mark(name))
        except Exception:  # cannot tell: not assumed
            is_key = False
    if not is_key:
        return None
    try:
        key = key_from_material(value, described=f"key {name!r}")
    except KeyFormatError:
        return None
    return key_check_value(key) if len(key) >= 16 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
