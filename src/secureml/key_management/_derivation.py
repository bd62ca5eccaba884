"""HKDF-SHA256 (RFC 5869) key derivation: one base key, many purpose-separated keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._encoding import MAX_KEY_BYTES
from ._validate import check_length

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _as_bytes(value: object, *, what: str, allow_str: bool) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        if allow_str:
            return value.encode("utf-8")
        raise TypeError(
            f"{what} must be bytes, not str; ask get_encryption_key(..., encoding='bytes') "
            "or decode the hex/base64 text first"
        )
    kinds = "bytes or str" if allow_str else "bytes"
    raise TypeError(f"{what} must be {kinds}, not {type(value).__name__}")


def hkdf_sha256(
    base_key: object, purpose: object, key_bytes: object = 32, salt: object = None
) -> bytes:
    """Derive ``key_bytes`` bytes from ``base_key`` for ``purpose`` with HKDF-SHA256.

    IKM is ``base_key``, ``info`` is ``purpose`` (UTF-8 when a ``str``) and ``salt`` is
    optional, exactly as RFC 5869 defines them, so its SHA-256 test vectors apply.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``base_key`` or ``purpose`` is empty, or ``key_bytes`` is outside
            1..8160 (HKDF-SHA256's limit).
    """
    hkdf, sha256 = _HKDF or _load_primitives()
    if (
        type(base_key) is bytes
        and type(purpose) is str
        and key_bytes == 32
        and type(key_bytes) is int
        and salt is None
        and base_key
        and purpose
    ):
        # The common call, checked the cheap way: derive_key(key, "purpose").
        return hkdf(sha256, 32, None, purpose.encode()).derive(base_key)
    ikm = _as_bytes(base_key, what="base_key", allow_str=False)
    info = _as_bytes(purpose, what="purpose", allow_str=True)
    length = check_length(key_bytes, what="key_bytes", low=1, high=MAX_KEY_BYTES)
    salt_bytes = None if salt is None else _as_bytes(salt, what="salt", allow_str=False)
    if not ikm:
        raise ValueError("base_key must not be empty")
    if not info:
        raise ValueError("purpose must not be empty: it is what keeps derived keys apart")
    return hkdf(sha256, length, salt_bytes, info).derive(ikm)


def hkdf_sha256_unchecked(ikm: bytes, info: bytes, key_bytes: int, salt: bytes | None) -> bytes:
    """:func:`hkdf_sha256` for arguments the caller has already checked (the per-message
    keys of the ciphertext format: no validation on the hot path)."""
    hkdf, sha256 = _HKDF or _load_primitives()
    return hkdf(sha256, key_bytes, salt, info).derive(ikm)


_HKDF: tuple[type[HKDF], SHA256] | None = None


def _load_primitives() -> tuple[type[HKDF], SHA256]:
    """Import cryptography on first use (so `import secureml.key_management` stays light);
    one SHA256 instance serves every call, as hash algorithm objects are immutable."""
    global _HKDF  # noqa: PLW0603 - a lazily filled module constant
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    _HKDF = (HKDF, SHA256())
    return _HKDF
