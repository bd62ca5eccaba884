"""Key material <-> bytes / hex / base64, and the length rules.

Text key material (environment variables, or Vault values stored as text) is read as
``hex:...`` or ``base64:...``, or unprefixed: as hex when it is made of hex digits only,
else as base64. Nothing is ever hashed, padded or cut to fit: a wrong length is an error.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal, TypeAlias

from ._boundary import guarded
from .errors import KeyFormatError

Encoding: TypeAlias = Literal["bytes", "hex", "base64", "base64url"]
ENCODINGS: tuple[str, ...] = ("bytes", "hex", "base64", "base64url")

# HKDF-SHA256 can expand to at most 255 hash blocks (RFC 5869, section 2.3).
MAX_KEY_BYTES = 255 * 32
MIN_KEY_BYTES = 16

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64URL = re.compile(r"[A-Za-z0-9_\-]*={0,2}")


@guarded  # public: the key is an argument
def encode_key(key: bytes, encoding: Encoding) -> bytes | str:
    """Render raw key bytes in ``encoding``: ``bytes`` as they are, text encodings
    (``hex``, ``base64``, ``base64url``) as ``str``.

    Raises:
        TypeError: ``key`` is not bytes.
        ValueError: An unknown ``encoding``.
    """
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if encoding == "bytes":
        return key
    if encoding == "hex":
        return key.hex()
    if encoding == "base64":
        return base64.b64encode(key).decode("ascii")
    if encoding == "base64url":
        return base64.urlsafe_b64encode(key).decode("ascii")
    raise ValueError(f"encoding must be bytes, hex, base64 or base64url; got {encoding!r}")


def _b64decode(text: str) -> bytes | None:
    """Decode standard or URL-safe base64, padding optional; ``None`` if it is neither."""
    for alphabet, decode in ((_B64, base64.b64decode), (_B64URL, base64.urlsafe_b64decode)):
        if alphabet.fullmatch(text):
            padded = text.rstrip("=")
            padded += "=" * (-len(padded) % 4)
            try:
                return decode(padded)
            except (binascii.Error, ValueError):
                return None
    return None


def _hexdecode(text: str) -> bytes | None:
    return bytes.fromhex(text) if _HEX.fullmatch(text) else None


def decode_key_text(text: str, key_bytes: int, *, described: str) -> bytes:
    """Decode text key material to exactly ``key_bytes`` bytes.

    Args:
        text: ``hex:<hex>``, ``base64:<base64>``, or unprefixed hex or base64. Unprefixed
            text made only of hex digits is read as hex (rare base64 such as ``AAAA``
            needs its ``base64:`` prefix).
        key_bytes: The length the caller needs.
        described: How to name the material in errors (``key 'k' from env SECUREML_K``);
            the material itself never appears in a message.

    Raises:
        KeyFormatError: The text does not decode, or decodes to another length.
    """
    key = decode_key_material(text, described=described, wanted=key_bytes)
    prefix, sep, _ = text.strip().partition(":")
    # Only text marked as key material says its length: a password that happens to be
    # base64 must not be offered (say, by the command line) as a key of another length.
    marked = bool(sep) and prefix.lower() in ("hex", "base64")
    return check_key_bytes(key, key_bytes, described=described, tell_length=marked)


def decode_key_material(text: str, *, described: str, wanted: int | None = None) -> bytes:
    """Decode text key material (see :func:`decode_key_text`) at whatever length it has.

    Args:
        wanted: The length the caller needs, only to make the error message precise.
    """
    stripped = text.strip()
    prefix, sep, body = stripped.partition(":")
    if sep and prefix.lower() in ("hex", "base64"):
        decoded = _hexdecode(body) if prefix.lower() == "hex" else _b64decode(body)
        if decoded is None:
            raise KeyFormatError(f"{described} is marked {prefix.lower()}: but does not decode")
        return decoded
    # Text made only of hex digits is hex, never reinterpreted as base64 to make a
    # length fit: a 64-digit hex key asked for as 48 bytes is an error, not another key.
    decoded = _hexdecode(stripped)
    if decoded is None:
        decoded = _b64decode(stripped)
    if decoded is not None:
        return decoded
    of = f" of {wanted} bytes" if wanted is not None else ""
    raise KeyFormatError(
        f"{described} is not hex or base64{of} ({len(stripped)} characters); store raw "
        "bytes, or text prefixed 'hex:' or 'base64:'"
    )


def check_key_bytes(
    key: bytes, key_bytes: int, *, described: str, tell_length: bool = True
) -> bytes:
    """Return ``key`` if it is exactly ``key_bytes`` long, else raise :class:`KeyFormatError`
    (with the length it has as ``stored_bytes`` if ``tell_length``)."""
    if len(key) != key_bytes:
        raise KeyFormatError(
            f"{described} is {len(key)} bytes long; {key_bytes} were requested",
            stored_bytes=len(key) if tell_length else None,
        )
    return key


def key_from_material(material: object, *, described: str) -> bytes:
    """Key bytes from stored material at whatever length it has (bytes, or hex/base64
    text as :func:`decode_key_text` reads it)."""
    if isinstance(material, (bytes, bytearray)):
        return bytes(material)
    if isinstance(material, str):
        return decode_key_material(material, described=described)
    raise KeyFormatError(
        f"{described} is a {type(material).__name__}, not key material; store it in the "
        "field 'value'"
    )


def key_of_length(material: object, key_bytes: int, *, described: str) -> bytes:
    """Exactly ``key_bytes`` bytes of key from stored material (text is decoded as
    :func:`decode_key_text` says); any other length is an error, never cut or padded."""
    if isinstance(material, (bytes, bytearray)):
        return check_key_bytes(bytes(material), key_bytes, described=described)
    if isinstance(material, str):
        return decode_key_text(material, key_bytes, described=described)
    return key_from_material(material, described=described)  # raises: not key material


def encryption_key(material: object, *, described: str) -> bytes:
    """Key bytes fit to encrypt with: any length of at least :data:`MIN_KEY_BYTES`."""
    key = key_from_material(material, described=described)
    if len(key) < MIN_KEY_BYTES:
        raise KeyFormatError(
            f"{described} is {len(key)} bytes long; encryption needs at least "
            f"{MIN_KEY_BYTES} (32 recommended)"
        )
    return key
