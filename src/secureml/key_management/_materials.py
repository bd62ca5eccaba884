"""Which key seals new data, and which key a ciphertext may open: one seam.

As Tink's KMS envelope AEAD and the AWS Encryption SDK's materials managers do it, key
choice is separate from the cipher: :meth:`KeyMaterials.for_encryption` gives the key,
the header naming it, where it came from and its version; :meth:`KeyMaterials.for_header`
does the same for a message being opened. A managed key (Vault KV, or the environment
when no Vault is configured) and a Vault Transit data key are its two kinds.

Policy:
- New data is sealed under the current version of a managed key, or a fresh Transit
  data key. Dev defaults never seal anything (they are public), and an outage never
  switches new data to an environment key while Vault is configured.
- A header is attacker input: its name is checked before any I/O (the one thing done
  with it before, a lookup of a cached key version, only finds names that were
  checked), dev defaults are never used to open, and material that is not a key is
  refused as opaquely as a bad tag (no length is reported).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from . import _envelope as envelope
from ._core import Core
from ._counters import HITS
from ._encoding import MIN_KEY_BYTES, encryption_key
from ._observe import Served
from ._transit import TransitKeys
from ._validate import validate_name, validate_secret_name
from .errors import (
    InvalidCiphertextError,
    KeyFormatError,
    SecretNotFoundError,
    UnsupportedOperationError,
)

__all__ = ["DEFAULT_KEY", "KeyMaterials", "Materials"]

#: The managed key new data is encrypted with when no key is named.
DEFAULT_KEY = "master_key"
_TRANSIT_VERSION = re.compile(r"vault:v(\d+):")


class Materials(NamedTuple):
    """A key and what an audit event says about it.

    Attributes:
        key: The key bytes (a managed key, or a Transit data key).
        key_name: The name the header records.
        key_version: The version the header records (0: an unversioned source).
        source: Where the key came from.
        outcome: How it was served (``ok``, ``cached``, ``stale``).
        header: The fresh header new data is sealed under, when the key choice made
            one (a Transit data key's, with its wrapped key); ``None`` otherwise, and
            always ``None`` for a key found to open a message: a parsed header must
            never seal anything (its salt and nonce prefix would be used twice).
    """

    key: bytes
    key_name: str
    key_version: int
    source: str
    outcome: str
    header: envelope.Header | None = None

    def __repr__(self) -> str:
        # Never the key: a repr ends up in logs and error trackers.
        return f"Materials(key_name={self.key_name!r}, key_version={self.key_version})"

    @property
    def version(self) -> int | None:
        """The version an audit event names (``None``: unversioned)."""
        return self.key_version or None

    def sealing_header(self) -> envelope.Header:
        """The header of a new message under this key (fresh salt and nonce prefix)."""
        if self.header is not None:
            return self.header
        return envelope.Header(envelope.MODE_MANAGED_KEY, self.key_name, self.key_version)


class KeyMaterials:
    """Key choice for encryption, over a :class:`~._core.Core`.

    Args:
        core: The manager's core.
    """

    def __init__(self, core: Core) -> None:
        self._core = core
        self._fresh = core.cache.fresh
        self._counts = core.observer.counts
        self._versioned = core.versioned
        self._transit_keys: TransitKeys | None = None

    def _transit(self) -> TransitKeys:
        """Transit on its default mount, emitting no events of its own (the encryption
        call emits one); made on first use, as it needs Vault."""
        transit = self._transit_keys
        if transit is None:
            transit = self._transit_keys = TransitKeys(self._core)._unobserved()
        return transit

    def for_encryption(self, key_name: str, transit_key: str | None) -> Materials:
        """The key new data is sealed under, and the header that names it."""
        if transit_key is not None:
            return self._data_key(transit_key)
        current: Served | None
        try:
            entry = self._fresh((key_name, 0))
        except TypeError:  # unhashable: let validation say what is wrong with it
            entry = None
        if entry is not None and type(entry.value) is tuple and self._versioned is not None:
            # The hot path: the current version is cached (so the name was validated).
            self._counts.mine()[HITS] += 1
            number, material = entry.value
            current = Served(material, self._versioned.locate(key_name), "cached", number)
        else:
            validate_secret_name(key_name, what="key_name")
            current = self._core.read_current(key_name)
        if current is None:
            current = self._unversioned(key_name)
        material, where, outcome, version = current
        if type(material) is bytes and len(material) >= MIN_KEY_BYTES:
            key = material
        else:
            key = encryption_key(material, described=f"key {key_name!r} from {where}")
        return Materials(key, key_name, version or 0, where or "", outcome)

    def _unversioned(self, key_name: str) -> Served:
        """A key no versioned store has. With a primary source (Vault), only that source
        may hold it (a KV v1 mount, a custom backend): a missing or deleted key is an
        error, never a reason to seal new data under an environment key. Without one,
        the environment. Never a dev default, never while the primary is unreachable."""
        primary = self._core.primary
        if primary is None:
            return self._core.lookup(key_name, outage_falls_through=False)._replace(version=0)
        found = self._core.read_unversioned(key_name)
        if found is None:
            fix = (
                "create it with generate_key() (secureml keys generate NAME) or restore "
                "its latest version"
                if self._versioned is not None
                else f"store it in the {primary.source} source"
            )
            raise SecretNotFoundError(
                key_name,
                [primary.locate(key_name)],
                detail=f"it is missing, or its latest version is deleted; {fix}. New data is "
                f"never sealed under an environment key while {primary.source} is configured",
            )
        return found._replace(version=0)

    def _data_key(self, transit_key: str) -> Materials:
        transit = self._transit()
        where = f"vault:{transit.mount}/keys/{transit_key}"
        data_key, wrapped = transit.generate_data_key(transit_key)
        key = encryption_key(data_key, described=f"a data key of Transit key {transit_key!r}")
        match = _TRANSIT_VERSION.match(wrapped)
        version = int(match.group(1)) if match else 0
        header = envelope.Header(
            mode=envelope.MODE_TRANSIT,
            key_name=transit_key,
            key_version=version,
            wrapped_key=wrapped.encode("ascii"),
        )
        return Materials(key, transit_key, version, where, "ok", header)

    def for_header(self, header: envelope.Header) -> Materials:
        """The key a message's header names, if this manager may open it with one."""
        name = header.key_name
        version = header.key_version or None
        if version is not None and header.mode == envelope.MODE_MANAGED_KEY:
            entry = self._fresh((name, version))
            if entry is not None and self._versioned is not None:
                key = entry.value
                if type(key) is bytes and len(key) >= MIN_KEY_BYTES:
                    # The hot path: that version is cached (so the name was validated).
                    self._counts.mine()[HITS] += 1
                    where = self._versioned.locate(name)
                    return Materials(key, name, version, where, "cached")
        try:
            if version is None and header.mode == envelope.MODE_MANAGED_KEY:
                validate_secret_name(name)  # looked up by name: never a setting
            else:
                validate_name(name)  # a version in Vault, or a Transit key
        except ValueError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        try:
            if header.mode == envelope.MODE_TRANSIT:
                if "/" in name:
                    raise InvalidCiphertextError(envelope.OPAQUE)
                transit = self._transit()
                material: Any = transit.decrypt(
                    name, header.wrapped_key.decode("ascii", errors="replace")
                )
                where, outcome = f"vault:{transit.mount}/keys/{name}", "ok"
            elif version is None:
                found = self._core.lookup(name, outage_falls_through=False)
                material, where, outcome = found.value, found.source or "", found.outcome
            else:
                found = self._core.read_version(name, version)
                material, where, outcome = found.value, found.source or "", found.outcome
        except UnsupportedOperationError:
            # A version, or Transit, that this manager's sources cannot hold.
            kind = "Transit" if header.mode == envelope.MODE_TRANSIT else "versioned"
            raise SecretNotFoundError(
                name, [], detail=f"the message needs a {kind} key this manager has no store for"
            ) from None
        try:
            key = encryption_key(material, described=f"key {name!r} from {where}")
        except KeyFormatError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        return Materials(key, name, header.key_version, where, outcome)
