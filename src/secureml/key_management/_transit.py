"""Vault Transit: encryption as a service, where key bytes never leave Vault.

Transit holds named keys and encrypts, decrypts, rewraps and rotates on request; a
ciphertext is ``vault:v<N>:<base64>``, naming the key version that made it, so old
ciphertext still decrypts after a rotation until ``min_decryption_version`` retires it.
Data keys (:meth:`TransitKeys.generate_data_key`) are for envelope encryption: encrypt
locally with the plaintext key, keep only the wrapped one, unwrap it with
:meth:`TransitKeys.decrypt` when needed.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._boundary import guarded_class
from ._core import Core, HasCore, core_of
from ._observe import Served
from ._validate import (
    check_bytes,
    check_sequence,
    check_transit_ciphertext,
    check_version,
    validate_name,
)
from .backends._vault_errors import vault_errors
from .errors import (
    ConfigurationError,
    InvalidCiphertextError,
    KeyManagementError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VaultError,
)

__all__ = ["AssociatedDataIgnoredError", "TransitKeyInfo", "TransitKeys"]


class AssociatedDataIgnoredError(UnsupportedOperationError):
    """The server answered but ignored ``associated_data``: nothing is bound to it."""


_T = TypeVar("_T")

#: Data key sizes Transit can generate (its ``bits``: 128, 256, 512).
DATA_KEY_BYTES = (16, 32, 64)

# Batches are split to fit the servers' default request limits: OpenBao refuses a JSON
# body of more than 1000 strings (keys count: 2 per field of an item), and Vault one of
# more than 32 MiB.
_BATCH_STRINGS = 990
_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TransitKeyInfo:
    """What Transit says about one of its keys (never the key itself).

    Attributes:
        name: The key's name.
        key_type: e.g. ``aes256-gcm96``, ``chacha20-poly1305``.
        latest_version: The version new ciphertext is made with.
        min_decryption_version: Ciphertext of older versions is refused.
        min_encryption_version: The oldest version encryption may be asked to use.
        derived: Each ``context`` gives its own key (so ``context=`` is required).
        exportable: The key may be exported from Vault.
        deletion_allowed: The key may be deleted.
    """

    name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    derived: bool
    exportable: bool
    deletion_allowed: bool


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@guarded_class
class TransitKeys:
    """The Transit engine at ``mount``, through a manager's Vault connection.

    Uses the manager's token, retries, deadlines and audit hook; needs a policy that
    allows the Transit paths used (``<mount>/encrypt/<name>``, ``<mount>/decrypt/<name>``
    ...). ``KeyManager.transit`` is one on the default mount.

    Note that Vault's encrypt creates a missing key when the policy allows ``create``
    on ``<mount>/encrypt/<name>``: create keys with :meth:`ensure_key` and grant only
    ``update`` to keep a typo from making a new key.

    Args:
        manager: A manager configured with Vault.
        mount: Where the Transit engine is mounted.

    Raises:
        UnsupportedOperationError: The manager has no Vault.

    Example:
        >>> transit = TransitKeys(km, mount="transit")
        >>> transit.ensure_key("features").latest_version
        1
        >>> token = transit.encrypt("features", b"row 42")
        >>> transit.decrypt("features", token)
        b'row 42'
    """

    def __init__(self, manager: HasCore | Core, *, mount: str = "transit") -> None:
        self._mount = validate_name(mount, what="mount")
        core = core_of(manager)
        self._backend = core.require_vault("use Transit")
        self._observe: Callable[..., Any] = core.observer.observed

    def _unobserved(self) -> TransitKeys:
        """The same engine emitting no events: for a call that emits its own (an
        encryption in Transit mode)."""
        quiet = copy.copy(self)
        quiet._observe = lambda _operation, _name, call: call().value
        return quiet

    @property
    def mount(self) -> str:
        """The Transit engine's mount path."""
        return self._mount

    # -- keys ------------------------------------------------------------------------

    def ensure_key(
        self, name: str, key_type: str = "aes256-gcm96", *, derived: bool = False
    ) -> TransitKeyInfo:
        """Create key ``name`` unless it exists; return what Transit says about it.

        Args:
            name: The key's name (letters, digits, ``_-.``).
            key_type: Transit's key type, e.g. ``aes256-gcm96`` or ``chacha20-poly1305``.
            derived: Derive a key per ``context`` (then every call needs ``context=``).

        Raises:
            ConfigurationError: The key exists with another type or derivation.
        """
        self._check_name(name)
        if not isinstance(key_type, str) or not key_type:
            raise TypeError("key_type must be a non-empty str such as 'aes256-gcm96'")
        if not isinstance(derived, bool):
            raise TypeError(f"derived must be True or False, not {type(derived).__name__}")

        def ensure() -> TransitKeyInfo:
            try:
                info = self._key_info(name)
            except SecretNotFoundError:
                self._api(
                    "POST",
                    f"keys/{name}",
                    name,
                    "create",
                    body={"type": key_type, "derived": derived},
                    replayable=True,  # creating a key that exists changes nothing
                )
                info = self._key_info(name)
            if info.key_type != key_type or info.derived != derived:
                raise ConfigurationError(
                    f"Transit key {name!r} on {self._mount!r} exists as {info.key_type} "
                    f"(derived={info.derived}), not {key_type} (derived={derived}); pick "
                    "another name or match its settings"
                )
            return info

        return self._observed("ensure_key", name, ensure)

    def key_info(self, name: str) -> TransitKeyInfo:
        """What Transit says about key ``name``.

        Raises:
            SecretNotFoundError: There is no such key.
        """
        self._check_name(name)
        return self._observed("key_info", name, lambda: self._key_info(name))

    def rotate(self, name: str) -> int:
        """Add a new version of key ``name``; new ciphertext uses it. Returns it."""
        self._check_name(name)

        def rotate() -> int:
            answer = self._api("POST", f"keys/{name}/rotate", name, "rotate", replayable=False)
            latest = self._data(answer).get("latest_version")
            if isinstance(latest, int):  # OpenBao answers with the key's new state
                return latest
            return self._key_info(name).latest_version

        return self._observed("rotate", name, rotate)

    def set_min_decryption_version(self, name: str, version: int) -> None:
        """Refuse to decrypt ciphertext made by versions older than ``version``."""
        self._check_name(name)
        number = check_version(version)
        self._observed(
            "set_min_decryption_version",
            name,
            lambda: self._api(
                "POST",
                f"keys/{name}/config",
                name,
                "configure",
                body={"min_decryption_version": number},
                replayable=True,  # setting a value twice is setting it once
            ),
        )

    # -- data ------------------------------------------------------------------------

    def encrypt(
        self,
        name: str,
        plaintext: bytes,
        *,
        context: bytes | None = None,
        associated_data: bytes | None = None,
    ) -> str:
        """Encrypt ``plaintext`` with the latest version of key ``name``.

        Args:
            context: For derived keys: which derived key (e.g. a tenant id).
            associated_data: Authenticated with the ciphertext, not stored in it:
                :meth:`decrypt` must be given the same (AEAD key types; Vault 1.13+,
                OpenBao 2.0+). Transit's ``rewrap`` ignores it, so such a ciphertext is
                moved to a new key version by decrypting and encrypting again.

        Returns:
            Transit ciphertext, ``vault:v<N>:...``.

        Raises:
            UnsupportedOperationError: The server ignored ``associated_data``.
        """
        self._check_name(name)
        body = {
            "plaintext": _b64(check_bytes(plaintext, "plaintext")),
            **_context(context),
            **_associated(associated_data),
        }

        def encrypt() -> str:
            answer = self._api_data("encrypt", name, body)
            self._require_bound(answer, name, associated_data)
            return _field(self._data(answer), "ciphertext")

        return self._observed("encrypt", name, encrypt)

    def decrypt(
        self,
        name: str,
        ciphertext: str,
        *,
        context: bytes | None = None,
        associated_data: bytes | None = None,
    ) -> bytes:
        """Decrypt Transit ciphertext (also a wrapped data key) made by key ``name``.

        Args:
            context: The context it was encrypted with (derived keys).
            associated_data: The associated data it was encrypted with, if any.

        Raises:
            InvalidCiphertextError: It is not ciphertext of this key, context and
                associated data, was altered, or its version is below
                ``min_decryption_version``.
            UnsupportedOperationError: The server ignored ``associated_data``.
        """
        self._check_name(name)
        body = {
            "ciphertext": check_transit_ciphertext(ciphertext),
            **_context(context),
            **_associated(associated_data),
        }

        def decrypt() -> bytes:
            answer = self._api_data("decrypt", name, body)
            self._require_bound(answer, name, associated_data)
            return _unb64(_field(self._data(answer), "plaintext"))

        return self._observed("decrypt", name, decrypt)

    def _require_bound(
        self, answer: dict[str, Any], name: str, associated_data: bytes | None
    ) -> None:
        """A server that does not know ``associated_data`` ignores it with a warning:
        that must not pass for a binding."""
        if not associated_data:
            return
        warnings = answer.get("warnings") or []
        if any("associated_data" in str(warning) for warning in warnings):
            raise AssociatedDataIgnoredError(
                f"Transit at {self._where(name)} ignored associated_data (Vault 1.13+ and "
                "OpenBao 2.0+ take it on encrypt and decrypt, OpenBao 2.5+ on datakey)"
            )

    def rewrap(self, name: str, ciphertext: str, *, context: bytes | None = None) -> str:
        """Re-encrypt ciphertext with the latest key version, inside Vault (the plaintext
        never leaves it). Use after :meth:`rotate`, before raising
        ``min_decryption_version``."""
        self._check_name(name)
        body = {"ciphertext": check_transit_ciphertext(ciphertext), **_context(context)}
        return self._observed(
            "rewrap",
            name,
            lambda: _field(self._data(self._api_data("rewrap", name, body)), "ciphertext"),
        )

    def generate_data_key(
        self,
        name: str,
        key_bytes: int = 32,
        *,
        context: bytes | None = None,
        associated_data: bytes | None = None,
    ) -> tuple[bytes, str]:
        """A fresh random data key, and the same key wrapped by key ``name``.

        Encrypt with the plaintext key, store only the wrapped one, and get the key back
        later with :meth:`decrypt`. Unlike :meth:`encrypt`, this never creates a missing
        key.

        Args:
            key_bytes: 16, 32 or 64.
            context: For derived keys.
            associated_data: Bind the wrapped key to it (:meth:`decrypt` must be given
                the same): OpenBao 2.5+; other servers ignore it, which raises.

        Returns:
            ``(plaintext_key, wrapped_key)``.

        Raises:
            UnsupportedOperationError: The server ignored ``associated_data``.
        """
        self._check_name(name)
        if isinstance(key_bytes, bool) or key_bytes not in DATA_KEY_BYTES:
            raise ValueError(f"key_bytes must be one of {DATA_KEY_BYTES}; got {key_bytes!r}")
        body = {"bits": key_bytes * 8, **_context(context), **_associated(associated_data)}

        def generate() -> tuple[bytes, str]:
            answer = self._api(
                "POST",
                f"datakey/plaintext/{name}",
                name,
                "generate a data key with",
                body=body,
                replayable=True,  # a repeat makes another key; nothing is stored
                refused=lambda exc: self._refusal(
                    "generate a data key with", name, vault_errors(exc), None
                ),
            )
            self._require_bound(answer, name, associated_data)
            data = self._data(answer)
            return _unb64(_field(data, "plaintext")), _field(data, "ciphertext")

        return self._observed("generate_data_key", name, generate)

    def encrypt_batch(
        self,
        name: str,
        plaintexts: Sequence[bytes],
        *,
        context: bytes | Sequence[bytes] | None = None,
    ) -> list[str]:
        """:meth:`encrypt` for many items, in as few requests as Vault's limits allow.

        Args:
            context: One context for every item, or one per item.
        """
        self._check_name(name)
        items = [check_bytes(p, "each plaintext") for p in check_sequence(plaintexts, "plaintexts")]
        contexts = _contexts(context, len(items))
        inputs = [
            {"plaintext": _b64(p), **_context(c)} for p, c in zip(items, contexts, strict=True)
        ]
        return self._observed(
            "encrypt_batch",
            name,
            lambda: [_field(r, "ciphertext") for r in self._batch("encrypt", name, inputs)],
        )

    def decrypt_batch(
        self,
        name: str,
        ciphertexts: Sequence[str],
        *,
        context: bytes | Sequence[bytes] | None = None,
    ) -> list[bytes]:
        """:meth:`decrypt` for many items; if any fails, the whole call raises
        :class:`InvalidCiphertextError` naming the first bad item's index."""
        self._check_name(name)
        items = [check_transit_ciphertext(c) for c in check_sequence(ciphertexts, "ciphertexts")]
        contexts = _contexts(context, len(items))
        inputs = [{"ciphertext": c, **_context(x)} for c, x in zip(items, contexts, strict=True)]
        return self._observed(
            "decrypt_batch",
            name,
            lambda: [_unb64(_field(r, "plaintext")) for r in self._batch("decrypt", name, inputs)],
        )

    # -- plumbing --------------------------------------------------------------------

    def _key_info(self, name: str) -> TransitKeyInfo:
        data = self._data(self._api("GET", f"keys/{name}", name, "read"))
        return TransitKeyInfo(
            name=str(data.get("name") or name),
            key_type=str(data.get("type")),
            latest_version=int(data.get("latest_version") or 0),
            min_decryption_version=int(data.get("min_decryption_version") or 0),
            min_encryption_version=int(data.get("min_encryption_version") or 0),
            derived=bool(data.get("derived")),
            exportable=bool(data.get("exportable")),
            deletion_allowed=bool(data.get("deletion_allowed")),
        )

    def _batch(self, operation: str, name: str, inputs: list[dict[str, str]]) -> list[Any]:
        results: list[Any] = []
        if not inputs:
            return results
        for start, chunk in _chunks(inputs):
            answer = self._api_data(operation, name, {"batch_input": chunk}, first_index=start)
            found = self._data(answer).get("batch_results") or []
            if not isinstance(found, list) or len(found) != len(chunk):
                raise VaultError(
                    f"Transit at {self._where(name)} answered a batch of {len(chunk)} "
                    "with something else than one result per item"
                )
            for offset, result in enumerate(found):
                if not isinstance(result, dict):
                    raise VaultError(f"Transit at {self._where(name)} answered a malformed batch")
                if result.get("error"):
                    raise self._refusal(operation, name, str(result["error"]), start + offset)
            results.extend(found)
        return results

    def _api_data(
        self, operation: str, name: str, body: dict[str, Any], *, first_index: int = 0
    ) -> dict[str, Any]:
        """encrypt / decrypt / rewrap: POSTs that change nothing, so safe to repeat."""

        def refused(exc: Exception) -> KeyManagementError | None:
            for offset, result in enumerate(_batch_results(exc)):
                if result.get("error"):
                    return self._refusal(
                        operation, name, str(result["error"]), first_index + offset
                    )
            return self._refusal(operation, name, vault_errors(exc), None)

        return self._api(
            "POST",
            f"{operation}/{name}",
            name,
            f"{operation} with",
            body=body,
            replayable=True,
            refused=refused,
        )

    def _refusal(
        self, operation: str, name: str, detail: str, index: int | None
    ) -> KeyManagementError:
        lower = detail.lower()
        item = "" if index is None else f" (item {index} of the batch)"
        if "key not found" in lower or "no existing key" in lower:
            return SecretNotFoundError(
                name, [self._where(name)], detail="no such Transit key; create it with ensure_key()"
            )
        if "context" in lower and "missing" in lower:
            return ConfigurationError(
                f"Transit key {name!r} at {self._where(name)} derives a key per context: "
                f"pass context=<bytes>{item}"
            )
        if operation in ("decrypt", "rewrap"):
            if "too old" in lower or "disallowed by policy" in lower:
                return InvalidCiphertextError(
                    f"Transit key {name!r} refuses this ciphertext{item}: the key version that "
                    "made it is below the key's min_decryption_version"
                )
            return InvalidCiphertextError(
                f"Transit key {name!r} could not {operation} the ciphertext{item}: it was "
                "made by another key or context, or altered"
            )
        return VaultError(f"Transit at {self._where(name)} refused to {operation}{item}: {detail}")

    def _api(
        self,
        method: str,
        path: str,
        name: str,
        action: str,
        *,
        body: dict[str, Any] | None = None,
        replayable: bool | None = None,
        refused: Callable[[Exception], KeyManagementError | None] | None = None,
    ) -> dict[str, Any]:
        where = self._where(name)

        def mapped(exc: Exception) -> KeyManagementError | None:
            import hvac.exceptions as hx

            if "no handler for route" in vault_errors(exc):
                return ConfigurationError(
                    f"nothing is mounted at {self._mount!r} to {action} {where}: enable "
                    f"Transit there (bao secrets enable -path={self._mount} transit) or pass "
                    "the mount it is at"
                )
            found = refused(exc) if refused is not None else None
            if found is None and isinstance(exc, hx.InvalidPath):
                return SecretNotFoundError(
                    name, [where], detail="no such Transit key; create it with ensure_key()"
                )
            return found

        return self._backend.api(
            method,
            f"{self._mount}/{path}",
            action=action,
            where=where,
            body=body,
            replayable=replayable,
            refused=mapped,
        )

    def _data(self, answer: dict[str, Any]) -> dict[str, Any]:
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    def _where(self, name: str) -> str:
        return f"vault:{self._mount}/keys/{name}"

    def _check_name(self, name: object) -> None:
        validate_name(name, what="Transit key name")
        if "/" in str(name):
            raise ValueError(f"Transit key name {name!r} must not contain '/'")

    def _observed(self, operation: str, name: str, call: Callable[[], _T]) -> _T:
        where = self._where(name)

        def run() -> Served:
            return Served(call(), where)

        result: _T = self._observe(f"transit.{operation}", name, run)
        return result

    def __repr__(self) -> str:
        return f"TransitKeys(mount={self._mount!r})"


def _associated(associated_data: object) -> dict[str, str]:
    if associated_data is None:
        return {}
    return {"associated_data": _b64(check_bytes(associated_data, "associated_data"))}


def _context(context: object) -> dict[str, str]:
    if context is None:
        return {}
    return {"context": _b64(check_bytes(context, "context"))}


def _contexts(context: object, count: int) -> list[bytes | None]:
    if context is None or isinstance(context, (bytes, bytearray, memoryview)):
        return [None if context is None else bytes(context)] * count
    if not isinstance(context, Sequence) or isinstance(context, str):
        raise TypeError("context must be bytes, a sequence of bytes (one per item), or None")
    if len(context) != count:
        raise ValueError(f"got {len(context)} contexts for {count} items; pass one per item")
    return [check_bytes(c, "each context") for c in context]


def _chunks(inputs: list[dict[str, str]]) -> list[tuple[int, list[dict[str, str]]]]:
    chunks: list[tuple[int, list[dict[str, str]]]] = []
    current: list[dict[str, str]] = []
    start, size, strings = 0, 0, 0
    for index, item in enumerate(inputs):
        weight = sum(len(v) for v in item.values())
        if current and (strings + 2 * len(item) > _BATCH_STRINGS or size + weight > _BATCH_BYTES):
            chunks.append((start, current))
            start, size, strings, current = index, 0, 0, []
        current.append(item)
        size += weight
        strings += 2 * len(item)
    if current:
        chunks.append((start, current))
    return chunks


def _batch_results(exc: Exception) -> list[dict[str, Any]]:
    answer = getattr(exc, "json", None)
    data = answer.get("data") if isinstance(answer, dict) else None
    found = data.get("batch_results") if isinstance(data, dict) else None
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


def _field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise VaultError(f"Transit answered without a {name!r} field")
    return value


def _unb64(text: object) -> bytes:
    try:
        return base64.b64decode(str(text or ""), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError("Transit answered with plaintext that is not base64") from None
