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

from ._cache import ABSENT
from ._devdefaults import dev_default_secret, development_environment
from ._encoding import key_from_material
from ._observe import Served
from ._process import reset_after_fork
from ._validate import validate_secret_name
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


class _ProcessKey:
    """This process's random fingerprint key; a forked child draws its own, so the
    ``process`` scope means what it says."""

    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)
        reset_after_fork(self)

    def after_fork(self) -> None:
        self.key = secrets.token_bytes(32)


_PROCESS_KEY = _ProcessKey()


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
    return _PROCESS_KEY.key, "process"


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
    validate_secret_name(name)  # the names get_secret takes, reserved ones refused
    fp_key, scope = fingerprint_key(fingerprint_with)
    found: Explanation = core.observer.observed(
        "explain", name, _explained, core, name, default, fp_key, scope
    )
    return found


def _explained(core: Core, name: str, default: object, fp_key: bytes, scope: str) -> Served:
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
    check = None
    if winner is not None:
        # A key check value only for a key: one Vault labels as made by generate_key
        # (served from Vault), or a declared name. Never for a password, which a KCV
        # would expose to guessing as a plain hash does.
        from_vault = sources[winner].kind == "vault"
        if name in core.settings.declared_keys or (from_vault and _labelled_key(core, name)):
            check = _key_check(found[winner][1])
    result = Explanation(
        name=name,
        served_from=sources[winner].location if winner is not None else None,
        sources=sources,
        cache=_cache(core, name),
        fingerprint=sources[winner].fingerprint if winner is not None else None,
        fingerprint_scope=scope,
        key_check_value=check,
    )
    del found
    return Served(result, result.served_from)


def _answered(kind: str, location: str, value: Any, fp_key: bytes) -> tuple[SourceReport, Any]:
    if value is None:
        return SourceReport(kind, location, "absent"), None
    return SourceReport(kind, location, "answers", fingerprint=fingerprint(fp_key, value)), value


def _shadowed(report: SourceReport) -> SourceReport:
    return SourceReport(**{**vars(report), "shadowed": True})


def _vault(core: Core, name: str, fp_key: bytes) -> tuple[SourceReport, Any]:
    """What Vault holds for ``name``, as a read would see it: the cache's entry while it
    is fresh (or, Vault down, stale within ``max_stale``), else Vault's answer now."""
    primary = core.primary
    assert primary is not None  # noqa: S101 - checked by the caller
    location = primary.locate(name)
    kv_version: int | None = None
    try:
        live = primary.get(name)
        if core.vault is not None:
            kv_version = core.vault.kv_version()  # known once the read is made
    except VaultUnavailableError as exc:
        stale = core.cache.stale((name, None))
        if stale is not None and stale.value is not ABSENT:  # a read serves this
            return (
                SourceReport(
                    "vault",
                    location,
                    "answers",
                    detail=f"from the cache (stale: {_one_line(exc)})",
                    fingerprint=fingerprint(fp_key, stale.value),
                ),
                stale.value,
            )
        return SourceReport("vault", location, "unavailable", detail=_one_line(exc)), None
    except PermissionDeniedError as exc:
        return SourceReport("vault", location, "denied", detail=_one_line(exc)), None
    value, detail = live, None
    fresh = core.cache.fresh((name, None))
    if fresh is not None:  # what a read returns until it expires
        value = None if fresh.value is ABSENT else fresh.value
        same = (value is None) == (live is None) and (
            value is None or fingerprint(fp_key, value) == fingerprint(fp_key, live)
        )
        detail = "from the cache" + ("" if same else "; Vault holds another value now")
    version = created = age = None
    state = "answers" if value is not None else "absent"
    metadata = _metadata(core, name)
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
        detail=detail,
        version=version,
        created_at=created,
        age_seconds=age,
        kv_version=kv_version,
        fingerprint=fingerprint(fp_key, value) if value is not None else None,
    )
    return report, value


def _metadata(core: Core, name: str) -> Any:
    """The secret's metadata, or None where it cannot be had (KV v1, no right to read
    it, an outage after the value came): the value alone still says who wins."""
    if core.versioned is None:
        return None
    try:
        return core.versioned.metadata(name)
    except (PermissionDeniedError, UnsupportedOperationError, VaultUnavailableError):
        return None


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


def _labelled_key(core: Core, name: str) -> bool:
    try:
        return bool(core.key_mark(name))
    except Exception:  # cannot tell: not assumed
        return False


def _key_check(value: Any) -> str | None:
    if not isinstance(value, (bytes, str)):
        return None
    try:
        key = key_from_material(value, described="the key")
    except KeyFormatError:
        return None
    return key_check_value(key) if len(key) >= 16 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
