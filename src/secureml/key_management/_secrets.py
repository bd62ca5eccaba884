"""Reading and writing secrets and keys by name: the core's policy, per call.

:class:`Secrets` is what ``get_secret``, ``set_secret``, ``get_encryption_key`` and
``invalidate`` do; the facade's methods carry the user docs and delegate here. A cached
read takes a fast path: no validation (a cached name was validated when it was first
read), no closure, no event when nobody listens.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import monotonic
from typing import Any

from ._cache import ABSENT, caller_copy
from ._core import Core
from ._counters import HITS
from ._devdefaults import dev_default_key, dev_default_secret
from ._encoding import MIN_KEY_BYTES, Encoding, encode_key, key_of_length
from ._observe import Served
from ._validate import (
    check_encoding,
    check_length,
    check_secret_value,
    check_version,
    validate_name,
    validate_secret_name,
)
from .errors import ConfigurationError, PermissionDeniedError

__all__ = ["MISS", "Secrets"]


#: What :meth:`Secrets.cached` returns when the cache cannot answer alone.
MISS: Any = object()


class Secrets:
    """Secrets and keys by name, over a :class:`~._core.Core`."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._observer = core.observer
        self._fresh = core.cache.fresh
        self._counts = core.observer.counts
        self._silent = core.observer.audit_hook is None  # fixed for the manager's life

    def cached(self, name: str, default: Any, version: int | None, margin: float = 0.0) -> Any:
        """The hot path: the value of a fresh cache hit that needs nothing else (no audit
        hook to call, no fallback to walk), copied as a read's would be, or :data:`MISS`.
        ``margin``: seconds the entry must stay fresh still (the async face's, which
        must never find it gone a moment later and read on the event loop)."""
        # Only well-formed calls may take the fast path (1.0 and True hash like 1).
        if self._silent and (
            version is None or (type(version) is int and version > 0 and default is None)
        ):
            try:
                entry = self._fresh((name, version))
            except TypeError:  # unhashable: let validation say what is wrong with it
                return MISS
            if entry is not None and (not margin or entry.expires_at - monotonic() > margin):
                value = entry.value
                if value is not ABSENT:
                    self._counts.mine()[HITS] += 1  # no lock, no validation
                    # (The type checked here too: text, the usual hit, skips a call.)
                    return caller_copy(value) if type(value) is dict else value
        return MISS

    def get_secret(self, name: str, default: Any, version: int | None) -> Any:
        """See ``KeyManager.get_secret`` (positional: this is the hot path)."""
        value = self.cached(name, default, version)
        if value is not MISS:
            return value
        return self.read(name, default, version)

    def read(self, name: str, default: Any, version: int | None) -> Any:
        """:meth:`get_secret` past the lock-free hit (a miss, or a hit with more to do,
        such as an audit event): what the async face runs once its own check missed."""
        known = version if type(version) is int else None
        # A method and its arguments, not a closure: the read holds them across its
        # wait for Vault, and a closure is three objects more for the collector to walk.
        return self._observer.observed(
            "get_secret", name, self._read_secret, name, default, version, version=known
        )

    def _read_secret(self, name: str, default: Any, version: int | None) -> Served:
        if version is None:
            validate_secret_name(name)  # the environment is asked: never a setting
            return self._core.lookup(name, default, dev_default_secret)
        validate_name(name)  # only Vault keeps versions: reserved names may be read
        if default is not None:
            raise ValueError(
                "get_secret: default= cannot stand in for a specific version; pass one or the other"
            )
        return self._core.read_version(name, check_version(version))

    def set_secret(self, name: str, value: str | bytes | Mapping[str, Any]) -> bool:
        """See ``KeyManager.set_secret``."""
        validate_secret_name(name)
        checked = check_secret_value(value, name)
        primary = self._core.primary
        if primary is None:
            raise ConfigurationError(
                f"cannot store {name!r}: no Vault is configured (pass vault_url= and "
                "vault_token=, or set SECUREML_VAULT_URL and SECUREML_VAULT_TOKEN)"
            ).in_cli_words(
                f"cannot store {name!r}: no Vault is configured; set BAO_ADDR and BAO_TOKEN "
                "(or pass --vault-url)"
            )

        def write() -> Served:
            if type(checked) is not str:  # text is never a managed key's version: no check
                self._refuse_managed_key(name)
            self._core.write(name, lambda: primary.put(name, checked))
            return Served(True, primary.locate(name))

        result: bool = self._observer.observed("set_secret", name, write)
        return result

    def _refuse_managed_key(self, name: str) -> None:
        """A managed key's versions are made by generate_key and rotate_key only: bytes
        (or fields read back as bytes) written under its name would become its current
        key; text never does."""
        try:
            mark = self._core.key_mark(name)
        except PermissionDeniedError:
            return  # a writer that may not read labels: Vault's policy is the judge
        if mark:
            raise ConfigurationError(
                f"{name!r} is a managed key: set_secret would make the value its current "
                "key. Make new versions with rotate_key (secureml keys rotate), or store "
                "the secret under another name"
            )

    def get_encryption_key(
        self, key_name: str, key_bytes: int, encoding: Encoding, version: int | None
    ) -> bytes | str:
        """See ``KeyManager.get_encryption_key`` (positional: this is the hot path)."""
        if (
            self._silent
            and encoding == "bytes"
            and type(key_bytes) is int
            and key_bytes >= MIN_KEY_BYTES
            and (version is None or (type(version) is int and version > 0))
        ):
            try:
                entry = self._fresh((key_name, version))
            except TypeError:  # unhashable: let validation say what is wrong with it
                entry = None
            if entry is not None and type(entry.value) is bytes and len(entry.value) == key_bytes:
                self._counts.mine()[HITS] += 1  # raw key bytes, cached: nothing to decode
                return entry.value
        if version is None:
            validate_secret_name(key_name, what="key_name")  # the environment is asked
        else:
            validate_name(key_name, what="key_name")  # Vault only
        length = check_length(key_bytes, what="key_bytes", low=MIN_KEY_BYTES)
        checked_encoding = check_encoding(encoding)

        def read() -> Served:
            if version is None:
                found = self._core.lookup(
                    key_name, None, lambda name: dev_default_key(name, length)
                )
            else:
                found = self._core.read_version(key_name, check_version(version))
            key = key_of_length(
                found.value, length, described=f"key {key_name!r} from {found.source}"
            )
            return found._replace(value=encode_key(key, checked_encoding))

        known = version if type(version) is int else None
        key: bytes | str = self._observer.observed(
            "get_encryption_key", key_name, read, version=known
        )
        return key

    def invalidate(self, name: str | None) -> int:
        """See ``KeyManager.invalidate``."""
        if name is None:
            return self._core.cache.invalidate()
        validate_name(name)
        return self._core.cache.invalidate(lambda key: key[0] == name)
