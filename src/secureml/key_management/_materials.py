"""Which key seals new data, and which key a ciphertext may open: one seam.

As Tink's KMS envelope AEAD and the AWS Encryption SDK's materials managers do it, key
choice is separate from the cipher: :meth:`KeyMaterials.for_encryption` gives the key,
the header naming it, where it came from and its version; :meth:`KeyMaterials.for_header`
does the same for a message being opened. A managed key (Vault KV, or the environment
when no Vault is configured) and a Vault Transit data key are its two kinds.

Policy:
- Only keys serve as keys: a managed key (labelled ``secureml-key`` in its metadata by
  ``generate_key``/``rotate_key``) or a name the application declared
  (``declared_keys=``). A plain secret, a configuration variable or an undeclared
  environment variable never seals nor opens anything.
- New data is sealed under the current version of such a key, or a fresh Transit data
  key. Dev defaults never seal anything (they are public), and an outage never switches
  new data to an environment key while Vault is configured.
- A header is attacker input: its name is checked before any I/O (the one thing done
  with it before, a lookup of a cached key version, only finds names that were
  checked), then whether it may be opened at all, from the label in the metadata
  (cached, so repeated junk costs no requests) and never from the value; dev defaults
  are never used to open; a version that cannot be read is not explained (no version
  oracle), and material that is not a key is refused as opaquely as a bad tag.
- Transit data keys of format 2 are wrapped with Transit's associated data set to
  :data:`DATA_KEY_LABEL`, so Transit opens them only as secureml data keys: an ordinary
  Transit ciphertext cannot stand in for one. Format-1 data keys carry no such binding
  and open only under declared Transit keys.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, NamedTuple

from . import _envelope as envelope
from ._core import Core, label_covers
from ._counters import HITS
from ._encoding import MIN_KEY_BYTES, encryption_key
from ._observe import Served
from ._transit import AssociatedDataIgnoredError, TransitKeys
from ._validate import validate_name, validate_secret_name
from .errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyFormatError,
    KeyManagementError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VaultUnavailableError,
)

__all__ = ["DATA_KEY_LABEL", "DEFAULT_KEY", "KeyMaterials", "Materials"]

#: The managed key new data is encrypted with when no key is named.
DEFAULT_KEY = "master_key"
#: Transit's associated data for the data keys of format-2 messages: what makes Transit
#: refuse to unwrap any other ciphertext of the key as one.
DATA_KEY_LABEL = b"secureml data key v2"
_DATA_KEY_BYTES = 32
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

    def sealing_header(
        self, segment_bytes: int = envelope.DEFAULT_SEGMENT_BYTES
    ) -> envelope.Header:
        """The header of a new message under this key (fresh salt and nonce prefix),
        cut into segments of ``segment_bytes``."""
        made = self.header
        if made is None:
            return envelope.Header(
                envelope.MODE_MANAGED_KEY, self.key_name, self.key_version, segment_bytes
            )
        # A Transit data key's: its wrapped key, with a salt and nonce prefix drawn now,
        # so even a second call on these materials never seals under the same nonces.
        return envelope.Header(
            made.mode, made.key_name, made.key_version, segment_bytes, made.wrapped_key
        )


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
        self._declared = core.settings.declared_keys
        self._declared_transit = core.settings.declared_transit_keys
        self._commitment_required = core.settings.require_commitment
        self._transit_keys: TransitKeys | None = None

    def _may_be_text(self, name: str) -> bool:
        """Whether ``name``'s key material may be text (hex or base64): only a declared
        key's. A managed key's versions are bytes, as generate_key and rotate_key write
        them; a text version of its name (``set_secret(name, "...")``) is not a key."""
        return name in self._declared

    def _trusted_now(self, name: str, version: int) -> bool:
        """Whether version ``version`` of ``name`` is known, without I/O, to be a key:
        declared, or a managed key's by a fresh cached label."""
        return name in self._declared or self._core.marked_now(name, version)

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
        if (
            entry is not None
            and type(entry.value) is tuple
            and self._versioned is not None
            and self._trusted_now(key_name, entry.value[0])
        ):
            # The hot path: the current version is cached (so the name was validated).
            self._counts.mine()[HITS] += 1
            number, material = entry.value
            current = Served(material, self._versioned.locate(key_name), "cached", number)
        else:
            validate_secret_name(key_name, what="key_name")
            since = self._require_key(key_name)
            current = self._core.read_current(key_name)
            if current is not None and (current.version or 0) < since:
                raise ConfigurationError(
                    f"the current version of {key_name!r} ({current.version}) predates its "
                    f"managed-key label (a key from version {since} on): rotate it with "
                    "rotate_key, or restore a later version"
                )
        if current is None:
            current = self._unversioned(key_name)
        material, where, outcome, version = current
        if type(material) is not bytes and not self._may_be_text(key_name):
            raise ConfigurationError(
                f"the current version of {key_name!r} at {where} is text, not key bytes "
                "(generate_key and rotate_key write bytes; set_secret of a str writes text, "
                "such as a password): rotate it with rotate_key, or declare it if its text "
                f"is key material: KeyManager(declared_keys=[{key_name!r}])"
            )
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
            raise self._missing(key_name)
        return found._replace(version=0)

    def _missing(self, key_name: str) -> SecretNotFoundError:
        primary = self._core.primary
        assert primary is not None  # noqa: S101 - only asked with a primary source
        fix = (
            "create it with generate_key() (secureml keys generate NAME) or restore "
            "its latest version"
            if self._versioned is not None
            else f"store it in the {primary.source} source"
        )
        cli_fix = (
            f"create it with secureml keys generate {key_name}, or restore its latest "
            f"version with secureml undelete {key_name}"
            if self._versioned is not None
            else fix
        )
        missing = SecretNotFoundError(
            key_name,
            [primary.locate(key_name)],
            detail=f"it is missing, or its latest version is deleted; {fix}. New data is "
            f"never sealed under an environment key while {primary.source} is configured",
        )
        return missing.in_cli_words(str(missing).replace(fix, cli_fix))

    def _require_key(self, key_name: str) -> int:
        """Refuse to seal under ``key_name`` unless it is a key: declared, or labelled as
        a managed key (read from its metadata, cached). Return the first version that is
        a key (0: any, for a declared name)."""
        if key_name in self._declared:
            return 0
        mark = self._core.key_mark(key_name)
        if mark:
            return mark
        if mark is None:
            raise self._missing(key_name)
        source = self._core.primary or self._core.env
        where = source.locate(key_name) if source is not None else "no source"
        how = (
            "rotate it once with rotate_key(name, force=True) (secureml keys rotate --force), "
            "which labels it and writes a version of key bytes, or declare it"
            if self._versioned is not None
            else "declare it"
        )
        raise ConfigurationError(
            f"{key_name!r} at {where} is not a managed key (generate_key and rotate_key "
            f"label theirs), so it seals nothing: it may be a password or a token. If it "
            f"is a key, {how}: KeyManager(declared_keys=[{key_name!r}])"
        )

    def _data_key(self, transit_key: str) -> Materials:
        transit = self._transit()
        where = f"vault:{transit.mount}/keys/{transit_key}"
        try:
            data_key, wrapped = transit.generate_data_key(
                transit_key, _DATA_KEY_BYTES, associated_data=DATA_KEY_LABEL
            )
        except AssociatedDataIgnoredError:
            # Vault, OpenBao before 2.5: datakey binds nothing. Its answer proved the key
            # exists (encrypt would create a missing one), so wrap a key made here with
            # encrypt, which binds it (Vault 1.13+, OpenBao 2.0+).
            data_key = secrets.token_bytes(_DATA_KEY_BYTES)
            wrapped = transit.encrypt(transit_key, data_key, associated_data=DATA_KEY_LABEL)
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
        cached = self._cached_version(header)
        if cached is not None:
            return cached
        name = header.key_name
        try:
            if header.mode == envelope.MODE_MANAGED_KEY and not header.key_version:
                validate_secret_name(name)  # looked up by name: never a setting
            else:
                validate_name(name)  # a version in Vault, or a Transit key
            if header.mode == envelope.MODE_TRANSIT and "/" in name:
                raise ValueError("a Transit key name has no '/'")
        except ValueError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        self._require_openable(header)
        material, where, outcome = self._material_of(header)
        text = type(material) is not bytes  # e.g. a password set_secret wrote: no key
        if text and header.mode == envelope.MODE_MANAGED_KEY and not self._may_be_text(name):
            raise InvalidCiphertextError(envelope.OPAQUE)
        try:
            key = encryption_key(material, described=f"key {name!r} from {where}")
        except KeyFormatError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        return Materials(key, name, header.key_version, where, outcome)

    def for_version(self, key_name: str, version: int) -> Materials:
        """Version ``version`` of managed key ``key_name``, for data that names it
        without a message header (column cells): the checks :meth:`for_header` makes
        for a managed-key header naming it, as both are attacker input (``0``: an
        unversioned key, which only a declared name opens)."""
        try:
            header = envelope.Header(envelope.MODE_MANAGED_KEY, key_name, version)
        except (TypeError, ValueError):
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        return self.for_header(header)

    def _cached_version(self, header: envelope.Header) -> Materials | None:
        """The hot path: a managed key's version, cached, under a name known to be a key
        (so it was validated when it was first read)."""
        name, version = header.key_name, header.key_version
        if not version or header.mode != envelope.MODE_MANAGED_KEY or self._versioned is None:
            return None
        if self._commitment_required and header.format_version < 2:
            return None  # the slow path refuses it
        entry = self._fresh((name, version))
        if entry is None or not self._trusted_now(name, version):
            return None
        key = entry.value
        if type(key) is not bytes or len(key) < MIN_KEY_BYTES:
            return None
        self._counts.mine()[HITS] += 1
        return Materials(key, name, version, self._versioned.locate(name), "cached")

    def _material_of(self, header: envelope.Header) -> tuple[Any, str, str]:
        """What the header's key is stored as, where, and how it was served."""
        name = header.key_name
        if header.mode == envelope.MODE_TRANSIT:
            return self._unwrapped(header)
        try:
            if not header.key_version:
                found = self._core.lookup(name, outage_falls_through=False)
            else:
                found = self._core.read_version(name, header.key_version, explain=False)
            return found.value, found.source or "", found.outcome
        except UnsupportedOperationError:  # a version this manager has no store for
            raise InvalidCiphertextError(envelope.OPAQUE) from None

    def _unwrapped(self, header: envelope.Header) -> tuple[Any, str, str]:
        """The data key of a Transit-mode message, unwrapped by the Transit key it names
        (with the data-key label as associated data in format 2)."""
        name = header.key_name
        try:
            transit = self._transit()
            material = transit.decrypt(
                name,
                header.wrapped_key.decode("ascii", errors="replace"),
                associated_data=DATA_KEY_LABEL if header.format_version >= 2 else None,
            )
        except (AuthenticationError, VaultUnavailableError):
            raise  # this manager's credentials, or an outage: not the message's doing
        except KeyManagementError:
            # Whatever Transit says about a key the sender picked (no such key, a derived
            # one, denied, not a secureml data key) is no oracle, and no reason to drop
            # the cache of a KV key of the same name.
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        return material, f"vault:{transit.mount}/keys/{name}", "ok"

    def _covered_version(self, header: envelope.Header) -> bool:
        """Whether the header names a version its key's managed-key label covers (only
        a declared name opens version 0)."""
        if not header.key_version:
            return False
        return label_covers(self._core.key_mark(header.key_name), header.key_version)

    def _require_openable(self, header: envelope.Header) -> None:
        """Refuse, before any value is read, a header naming what this manager may not
        open with: only declared names, managed keys (by their label) and format-2
        Transit data keys (bound to secureml by Transit's associated data) open."""
        name = header.key_name
        if header.format_version < 2 and self._commitment_required:
            raise InvalidCiphertextError(
                "the message is of format 1, which is not key-committing, and this manager "
                "requires commitment (require_commitment=True): re-encrypt it where format 1 "
                "is still accepted"
            )
        if header.mode == envelope.MODE_TRANSIT:
            if header.format_version >= 2 or name in self._declared_transit:
                return
            why = "a format-1 Transit data key (not bound to secureml), and not declared"
        elif name in self._declared or self._covered_version(header):
            return
        else:
            why = "not a managed key"
        raise InvalidCiphertextError(
            f"the message names {name!r}, which this manager does not open with: {why}. "
            "Messages open only under managed keys (made by generate_key or rotate_key) "
            "and keys declared with KeyManager(declared_keys=[...]) "
            "(Transit keys: declared_transit_keys=[...])"
        )
