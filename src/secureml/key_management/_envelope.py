"""The secureml ciphertext format, version 2 (key-committing): one format for small blobs
and huge files.

A message is a header, a key commitment, then one or more AES-256-GCM segments (the
STREAM construction of Tink's streaming AEAD); ``docs/FORMAT.md`` is the full
specification::

    header    = "SMLE" | 0x02 | mode u8 | segment_bytes u32 | key_version u32
                | name_len u16 | key_name | wrapped_len u16 | wrapped_key
                | salt (32 bytes) | nonce_prefix (7 bytes)          (integers big-endian)
    K | C     = HKDF-SHA256(ikm = key, salt = salt, info = header, length = 64)
                                              (K the first 32 bytes, C the last 32)
    message   = header | C | segment_0 | segment_1 | ...
    nonce_i   = nonce_prefix | i as u32 | 0x01 if segment i is the last else 0x00
    segment_i = AES-256-GCM(K, nonce_i, plaintext_i, aad)           (ciphertext | tag)

Every segment but the last holds exactly ``segment_bytes`` of plaintext; the last holds
0 to ``segment_bytes``. The header is authenticated through ``K``: change one bit of it
and no segment opens. The commitment ``C`` is recomputed from the key and compared (with
:func:`hmac.compare_digest`) before any segment is opened, so a message opens under one
key only: AES-GCM alone lets a crafted message authenticate under two keys. Truncation,
reordering, extension, a flipped flag, a wrong commitment or a wrong ``aad`` all fail,
and every failure is the same :class:`~.errors.InvalidCiphertextError`.

Format version 1 is the same without ``C`` (``K`` = the first 32 bytes alone, version
byte 0x01): it still decrypts, and is written only when a :class:`Header` asks for it
(``format_version=1``, for tests).

This module is pure format: it never reads keys from anywhere. The manager resolves the
key a header names and hands it in.
"""

from __future__ import annotations

import functools
import hmac
import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._buffers import filled_bytes, in_parallel
from ._derivation import hkdf_sha256_unchecked
from ._pipeline import drive, drive_threaded
from .errors import InvalidCiphertextError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "COMMITMENT_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "FORMAT_VERSION",
    "MODE_MANAGED_KEY",
    "MODE_TRANSIT",
    "OPAQUE",
    "Header",
    "SegmentCipher",
    "decrypt_bytes",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_managed",
    "encrypt_stream",
    "open_segments",
    "parse_header",
    "read_header",
]

MAGIC = b"SMLE"
#: What every writer produces. Version 1 (no key commitment) is still read.
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
MODE_MANAGED_KEY = 1  # the key is a secret the manager reads (KV, env, dev default)
MODE_TRANSIT = 2  # the key is a data key wrapped by Vault Transit, kept in the header

DEFAULT_SEGMENT_BYTES = 1 << 20
MIN_SEGMENT_BYTES = 16
#: A hostile header may ask for this much buffer before anything authenticates: keep it
#: small (secureml writes 1 MiB segments).
MAX_SEGMENT_BYTES = 4 << 20
MAX_NAME_BYTES = 512
MAX_WRAPPED_BYTES = 4096
SALT_BYTES = 32
PREFIX_BYTES = 7
#: Format v2's key commitment, stored right after the header.
COMMITMENT_BYTES = 32
TAG_BYTES = 16
#: The segment counter is 32 bits: a message never has more segments than this.
MAX_SEGMENTS = 1 << 32

_FIXED = struct.Struct(">4sBBIIH")  # magic, version, mode, segment_bytes, key_version, name_len
_U16 = struct.Struct(">H")
_COUNTER = struct.Struct(">I")
_NONCE_LAST = b"\x01"
_NONCE_MORE = b"\x00"
#: The nonce's last five bytes when a message is one segment: counter 0, last.
_ONLY_SEGMENT = _COUNTER.pack(0) + _NONCE_LAST
_compare_digest = hmac.compare_digest  # constant time; bound once for the hot paths
#: Messages up to this size are sealed and opened in one call, then copied once: below
#: it a copy is cheaper than the in-place buffer (a ctypes call, page faults beyond).
INLINE_BYTES = 32 << 10

OPAQUE = "the data is not a valid secureml ciphertext for this key and aad"


class Reader(Protocol):
    """A binary file-like object to read from."""

    def read(self, size: int = ..., /) -> bytes: ...


class Writer(Protocol):
    """A binary file-like object to write to."""

    def write(self, data: Any, /) -> int | None: ...


Progress = Callable[[int], object]


def _fixed_part_of(  # noqa: PLR0917 - the header's fields
    mode: int,
    key_name: str,
    key_version: int,
    segment_bytes: int,
    wrapped_key: bytes,
    format_version: int,
) -> bytes:
    """The header's bytes up to the salt, once every field is checked."""
    name = key_name.encode("utf-8")
    if type(format_version) is not int or format_version not in FORMAT_VERSIONS:
        raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}")
    if mode not in (MODE_MANAGED_KEY, MODE_TRANSIT):
        raise ValueError(f"unknown mode {mode}")
    if not 0 < len(name) <= MAX_NAME_BYTES:
        raise ValueError(f"key name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    if not 0 <= key_version < 1 << 32:
        raise ValueError("key version must fit in 32 bits")
    if not MIN_SEGMENT_BYTES <= segment_bytes <= MAX_SEGMENT_BYTES:
        raise ValueError(f"segment_bytes must be {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}")
    if len(wrapped_key) > MAX_WRAPPED_BYTES or (bool(wrapped_key) != (mode == MODE_TRANSIT)):
        raise ValueError("a wrapped key belongs in Transit mode only, up to 4096 bytes")
    fixed = _FIXED.pack(MAGIC, format_version, mode, segment_bytes, key_version, len(name))
    return b"".join((fixed, name, _U16.pack(len(wrapped_key)), wrapped_key))


#: Managed-key headers repeat (one per key version): checked and packed once. Transit
#: headers carry a fresh wrapped key each and skip it. ``typed``: ``1``, ``True`` and
#: ``1.0`` are checked apart, as they would be without the cache.
_cached_fixed_part = functools.lru_cache(maxsize=256, typed=True)(_fixed_part_of)


def _checked_fixed_part(  # noqa: PLR0917 - the header's fields
    mode: int,
    key_name: str,
    key_version: int,
    segment_bytes: int,
    wrapped_key: bytes,
    format_version: int,
) -> bytes:
    """:func:`_fixed_part_of`, from the cache when the header has no wrapped key."""
    of = _fixed_part_of if wrapped_key else _cached_fixed_part
    return of(mode, key_name, key_version, segment_bytes, wrapped_key, format_version)


@dataclass(frozen=True, init=False)
class Header:
    """What a message says about itself; :meth:`encode` is authenticated data.

    ``salt`` and ``nonce_prefix`` are drawn fresh (in one ``os.urandom`` call) unless
    given. Every field is checked, and the encoding made, when the header is made.
    ``format_version`` is 2 unless asked otherwise (1 builds the old, non-committing
    format, for tests). ``commitment`` is the key commitment a parsed v2 message carries
    after the header (:meth:`encode` does not include it: it is not HKDF info); it is
    ``b""`` for a header made here (the writer computes it, see
    :attr:`SegmentCipher.commitment`) and for a v1 message. It is a check value, not an
    identity: headers compare equal whatever their commitments.
    """

    mode: int
    key_name: str
    key_version: int
    segment_bytes: int
    wrapped_key: bytes
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    format_version: int = FORMAT_VERSION
    commitment: bytes = field(default=b"", init=False, repr=False, compare=False)
    _encoded: bytes = field(init=False, repr=False, compare=False)  # made from the rest

    def __init__(  # noqa: PLR0917 - the fields, in order, as the dataclass would take them
        self,
        mode: int,
        key_name: str,
        key_version: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        wrapped_key: bytes = b"",
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
        *,
        format_version: int = FORMAT_VERSION,
    ) -> None:
        wrapped_key = bytes(wrapped_key)  # a bytearray could change after it was checked
        fixed = _checked_fixed_part(
            mode, key_name, key_version, segment_bytes, wrapped_key, format_version
        )
        if salt is None and nonce_prefix is None:
            fresh = os.urandom(SALT_BYTES + PREFIX_BYTES)
            salt, nonce_prefix = fresh[:SALT_BYTES], fresh[SALT_BYTES:]
        else:
            salt = os.urandom(SALT_BYTES) if salt is None else bytes(salt)
            nonce_prefix = os.urandom(PREFIX_BYTES) if nonce_prefix is None else bytes(nonce_prefix)
            if len(salt) != SALT_BYTES or len(nonce_prefix) != PREFIX_BYTES:
                raise ValueError("salt is 32 bytes and nonce_prefix 7")
            fresh = salt + nonce_prefix
        # Frozen: fill the instance's dict as the dataclass's own __init__ would, in one
        # update rather than ten object.__setattr__ calls (see also parse_header).
        self.__dict__.update(
            mode=mode,
            key_name=key_name,
            key_version=key_version,
            segment_bytes=segment_bytes,
            wrapped_key=wrapped_key,
            salt=salt,
            nonce_prefix=nonce_prefix,
            format_version=format_version,
            commitment=b"",
            _encoded=fixed + fresh,
        )

    def encode(self) -> bytes:
        """The header's exact bytes, magic through nonce prefix: the HKDF info (made
        once: the header is immutable). A v2 message's commitment follows them."""
        return self._encoded


def _invalid(reason: str = "unauthenticated") -> InvalidCiphertextError:
    refused = InvalidCiphertextError(OPAQUE)
    refused.reason = reason
    return refused


def _short(data: bytes | memoryview) -> InvalidCiphertextError:
    """Too few bytes for a header: cut short if they begin as one does, else not ours."""
    start = bytes(data[: len(MAGIC)])
    return _invalid("truncated" if MAGIC.startswith(start) and start else "not-secureml")


def _fixed_part(data: bytes | memoryview) -> tuple[int, int, int, int, int]:
    """Check the fixed part at the start of ``data`` (16 bytes or more); return format
    version, mode, segment_bytes, key_version, name_len."""
    magic, version, mode, segment_bytes, key_version, name_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise _invalid("not-secureml")
    if (
        version not in FORMAT_VERSIONS
        or mode not in (MODE_MANAGED_KEY, MODE_TRANSIT)
        or not MIN_SEGMENT_BYTES <= segment_bytes <= MAX_SEGMENT_BYTES
        or not 0 < name_len <= MAX_NAME_BYTES
    ):
        raise _invalid()
    return version, mode, segment_bytes, key_version, name_len


def parse_header(data: bytes | memoryview) -> tuple[Header, int]:
    """The header at the start of ``data``, and the length of header and commitment
    (``data[length:]`` is the first segment); ``header.encode()`` is the header's exact
    bytes and ``header.commitment`` the v2 commitment. Every field is bounded, so a
    hostile header is refused here, before any key is looked up."""
    size = len(data)
    if size < _FIXED.size:
        raise _short(data)
    version, mode, segment_bytes, key_version, name_len = _fixed_part(data)
    name_end = _FIXED.size + name_len
    if size < name_end + _U16.size:
        raise _invalid("truncated")
    (wrapped_len,) = _U16.unpack_from(data, name_end)
    if wrapped_len > MAX_WRAPPED_BYTES:
        raise _invalid()
    salt_at = name_end + _U16.size + wrapped_len
    end = salt_at + SALT_BYTES + PREFIX_BYTES
    total = end if version == 1 else end + COMMITMENT_BYTES
    if size < total:
        raise _invalid("truncated")  # cut inside the header or its commitment
    raw = bytes(data[:end])
    wrapped = raw[name_end + _U16.size : salt_at]
    try:
        name = raw[_FIXED.size : name_end].decode("utf-8")
        # Every check Header makes; uncached, so hostile headers neither evict what
        # encryption packed nor learn from its timing which keys were used lately.
        _fixed_part_of(mode, name, key_version, segment_bytes, wrapped, version)
    except (UnicodeDecodeError, ValueError):
        raise _invalid() from None
    header: Header = object.__new__(Header)
    header.__dict__.update(  # as Header.__init__ does, with the bytes as they came
        mode=mode,
        key_name=name,
        key_version=key_version,
        segment_bytes=segment_bytes,
        wrapped_key=wrapped,
        salt=raw[salt_at : salt_at + SALT_BYTES],
        nonce_prefix=raw[salt_at + SALT_BYTES : end],
        format_version=version,
        commitment=bytes(data[end:total]),
        _encoded=raw,
    )
    return header, total


def read_header(reader: Reader) -> tuple[Header, bytes]:
    """Read the header, and a v2 message's commitment, from a stream; return the header
    and its exact bytes (without the commitment, which ``header.commitment`` holds). The
    stream is left at the first segment."""
    fixed = _read_exactly(reader, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise _short(fixed)
    version, _, _, _, name_len = _fixed_part(fixed)  # bounds first: then parse_header
    name = _read_exactly(reader, name_len)
    wrapped_len_raw = _read_exactly(reader, _U16.size)
    if len(name) < name_len or len(wrapped_len_raw) < _U16.size:
        raise _invalid("truncated")
    (wrapped_len,) = _U16.unpack(wrapped_len_raw)
    if wrapped_len > MAX_WRAPPED_BYTES:
        raise _invalid()
    wrapped = _read_exactly(reader, wrapped_len)
    tail_bytes = SALT_BYTES + PREFIX_BYTES + (0 if version == 1 else COMMITMENT_BYTES)
    tail = _read_exactly(reader, tail_bytes)
    if len(wrapped) < wrapped_len or len(tail) < tail_bytes:
        raise _invalid("truncated")
    header, _ = parse_header(b"".join((fixed, name, wrapped_len_raw, wrapped, tail)))
    return header, header.encode()


# -- keys ------------------------------------------------------------------------------


def _message_key(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``ikm`` with ``salt`` and ``info``, 32 bytes: the
    per-message key *K* of format v1 (docs/FORMAT.md), from cryptography's audited HKDF
    (a hand-written HMAC over hashlib would save about 1.5 µs a message, and was not
    worth giving that up)."""
    return hkdf_sha256_unchecked(ikm, info, 32, salt)


def _keys(ikm: bytes, salt: bytes, info: bytes, version: int) -> tuple[bytes, bytes]:
    """The message key *K* and the key commitment *C* of docs/FORMAT.md.

    v2: one HKDF-SHA256 call of 64 bytes, *K* the first 32 and *C* the last 32. That is
    one HMAC more than v1's 32 bytes (about 1 µs); an extract and two labelled expands,
    as the AWS Encryption SDK does it, measured about 5 µs more again. *C* = T(2) =
    HMAC(PRK, T(1) | info | 0x02) with T(1) = *K*: a collision-resistant function of
    *K* itself. v1: *K* alone, and no commitment (``b""``)."""
    if version == 1:
        return hkdf_sha256_unchecked(ikm, info, 32, salt), b""
    okm = hkdf_sha256_unchecked(ikm, info, 64, salt)
    return okm[:32], okm[32:]


_aead: tuple[type[AESGCM], type[Exception]] | None = None


def _load_aead() -> tuple[type[AESGCM], type[Exception]]:
    """cryptography's AESGCM and InvalidTag, imported on first use: importing
    secureml.key_management must stay light."""
    global _aead  # noqa: PLW0603 - a lazily filled module constant
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _aead = (AESGCM, InvalidTag)
    return _aead


class SegmentCipher:
    """The per-message key and the nonce schedule of one message.

    When ``header.commitment`` is set (a parsed v2 message) it is checked here, before
    any segment can be opened: a mismatch raises :class:`~.errors.InvalidCiphertextError`.
    For sealing, :attr:`commitment` is what the writer puts after the header (``b""``
    for format v1).

    Args:
        key: The key the header names (a managed key, or a Transit data key).
        header: The message's header.
        header_bytes: Its bytes, exactly as stored (``header.encode()``).
        aad: Associated data, authenticated with every segment.
    """

    commitment: bytes

    def __init__(self, key: bytes, header: Header, header_bytes: bytes, aad: bytes) -> None:
        aesgcm, self._invalid_tag = _aead or _load_aead()
        message_key, self.commitment = _keys(key, header.salt, header_bytes, header.format_version)
        if header.commitment and not _compare_digest(self.commitment, header.commitment):
            raise _invalid()
        self._aead = aesgcm(message_key)
        self._into = hasattr(self._aead, "encrypt_into")
        self._prefix = header.nonce_prefix
        self._aad = aad or None

    def _nonce(self, index: int, last: bool) -> bytes:
        if index >= MAX_SEGMENTS:
            # The counter is 32 bits: a wrapped counter would reuse a nonce.
            raise ValueError("a message holds at most 2**32 segments; split the data")
        return self._prefix + _COUNTER.pack(index) + (_NONCE_LAST if last else _NONCE_MORE)

    def seal(self, index: int, plaintext: bytes | memoryview, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, self._aad)

    def seal_into(
        self, index: int, plaintext: bytes | memoryview, last: bool, out: memoryview
    ) -> None:
        nonce = self._nonce(index, last)
        if self._into:
            self._aead.encrypt_into(nonce, plaintext, self._aad, out)
        else:  # cryptography before encrypt_into: one copy more
            out[:] = self._aead.encrypt(nonce, plaintext, self._aad)

    def open(self, index: int, segment: bytes | memoryview, last: bool) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(index, last), segment, self._aad)
        except ValueError:
            raise _invalid() from None  # past 2**32 segments: no such message was written
        except self._invalid_tag:
            raise _invalid() from None

    def open_into(
        self, index: int, segment: bytes | memoryview, last: bool, out: memoryview
    ) -> None:
        try:
            nonce = self._nonce(index, last)
            if self._into:
                self._aead.decrypt_into(nonce, segment, self._aad, out)
            else:  # cryptography before decrypt_into
                out[:] = self._aead.decrypt(nonce, segment, self._aad)
        except ValueError:
            raise _invalid() from None  # past 2**32 segments: no such message was written
        except self._invalid_tag:
            raise _invalid() from None


# -- in memory -----------------------------------------------------------------------


def _sealed_whole(  # noqa: PLR0917 - the message's parts
    key: bytes,
    header_bytes: bytes,
    salt: bytes,
    nonce_prefix: bytes,
    plaintext: bytes | memoryview,
    aad: bytes,
    version: int,
) -> bytes:
    """A message of one segment, sealed in one call (no threads, no in-place buffer)."""
    aesgcm, _ = _aead or _load_aead()
    nonce = nonce_prefix + _ONLY_SEGMENT
    if version == 1:
        aead = aesgcm(hkdf_sha256_unchecked(key, header_bytes, 32, salt))
        return header_bytes + aead.encrypt(nonce, plaintext, aad or None)
    okm = hkdf_sha256_unchecked(key, header_bytes, 64, salt)  # K | C, as _keys makes them
    return header_bytes + okm[32:] + aesgcm(okm[:32]).encrypt(nonce, plaintext, aad or None)


def encrypt_managed(
    key: bytes,
    key_name: str,
    key_version: int,
    plaintext: bytes | memoryview,
    aad: bytes,
    *,
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """``encrypt_bytes(key, Header(MODE_MANAGED_KEY, key_name, key_version,
    format_version=format_version), plaintext, aad)``, the same bytes for the same random
    draw, without making a :class:`Header` when the message is small: that object costs
    as much as the AES-GCM itself. (``format_version=1`` is for tests and benchmarks.)"""
    if len(plaintext) > INLINE_BYTES:
        header = Header(MODE_MANAGED_KEY, key_name, key_version, format_version=format_version)
        return encrypt_bytes(key, header, plaintext, aad)
    fresh = os.urandom(SALT_BYTES + PREFIX_BYTES)
    fixed = _cached_fixed_part(
        MODE_MANAGED_KEY, key_name, key_version, DEFAULT_SEGMENT_BYTES, b"", format_version
    )
    salt, nonce_prefix = fresh[:SALT_BYTES], fresh[SALT_BYTES:]
    return _sealed_whole(key, fixed + fresh, salt, nonce_prefix, plaintext, aad, format_version)


def encrypt_bytes(key: bytes, header: Header, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """The whole message for ``plaintext``. A small one (one segment, at most
    :data:`INLINE_BYTES`) is sealed in one call; a larger one is written in place into
    the result, on several threads when it has many segments."""
    header_bytes = header.encode()
    if len(plaintext) <= INLINE_BYTES and len(plaintext) <= header.segment_bytes:
        return _sealed_whole(
            key,
            header_bytes,
            header.salt,
            header.nonce_prefix,
            plaintext,
            aad,
            header.format_version,
        )
    cipher = SegmentCipher(key, header, header_bytes, aad)
    commitment = cipher.commitment
    data = memoryview(plaintext)
    size = header.segment_bytes
    count = max(1, -(-len(data) // size))
    if count > MAX_SEGMENTS:
        cipher.seal(count - 1, b"", True)  # raises: the counter would wrap
    head = len(header_bytes)
    start = head + len(commitment)
    total = start + len(data) + count * TAG_BYTES

    def fill(out: memoryview) -> None:
        out[:head] = header_bytes
        out[head:start] = commitment

        def seal(first: int, stop: int) -> None:
            for i in range(first, stop):
                chunk = data[i * size : (i + 1) * size]
                at = start + i * (size + TAG_BYTES)
                cipher.seal_into(i, chunk, i == count - 1, out[at : at + len(chunk) + TAG_BYTES])

        in_parallel(count, seal)

    return filled_bytes(total, fill)


def decrypt_bytes(
    key: bytes, header: Header, header_bytes: bytes, body: bytes | memoryview, aad: bytes
) -> bytes:
    """The plaintext of a message whose header was parsed; ``body`` is what follows the
    header and its commitment (``data[length:]`` after :func:`parse_header`). The v2
    commitment is checked before any segment is opened, and nothing is returned unless
    every segment authenticates."""
    plain = len(body) - TAG_BYTES
    if 0 <= plain <= INLINE_BYTES and plain <= header.segment_bytes:
        # One small segment (the rule of encrypt_bytes): opened in one call.
        aesgcm, invalid_tag = _aead or _load_aead()
        if header.format_version == 1:
            aead = aesgcm(hkdf_sha256_unchecked(key, header_bytes, 32, header.salt))
        else:
            okm = hkdf_sha256_unchecked(key, header_bytes, 64, header.salt)  # K | C
            if not _compare_digest(okm[32:], header.commitment):
                raise _invalid()
            aead = aesgcm(okm[:32])
        try:
            return aead.decrypt(header.nonce_prefix + _ONLY_SEGMENT, body, aad or None)
        except invalid_tag:
            raise _invalid() from None
    if header.format_version != 1 and not header.commitment:
        raise _invalid()  # a made v2 header, not a parsed one: nothing to check against
    cipher = SegmentCipher(key, header, header_bytes, aad)
    data = memoryview(body)
    size = header.segment_bytes
    step = size + TAG_BYTES
    count = max(1, -(-len(data) // step))
    if len(data) - (count - 1) * step < TAG_BYTES or count > MAX_SEGMENTS:
        raise _invalid()  # no room for the last segment's tag: truncated or garbage

    def fill(out: memoryview) -> None:
        def open_(first: int, stop: int) -> None:
            for i in range(first, stop):
                segment = data[i * step : (i + 1) * step]
                at = i * size
                cipher.open_into(
                    i, segment, i == count - 1, out[at : at + len(segment) - TAG_BYTES]
                )

        in_parallel(count, open_)

    return filled_bytes(len(data) - count * TAG_BYTES, fill)


def _require_commitment(header: Header) -> None:
    """A v2 header that carries no commitment (made, not parsed) opens nothing: the
    :class:`SegmentCipher` would have nothing to check."""
    if header.format_version != 1 and len(header.commitment) != COMMITMENT_BYTES:
        raise _invalid()


def _opening_cipher(key: bytes, header: Header, header_bytes: bytes, aad: bytes) -> SegmentCipher:
    """A :class:`SegmentCipher` to open a message with, its commitment checked."""
    _require_commitment(header)
    return SegmentCipher(key, header, header_bytes, aad)


# -- streams ---------------------------------------------------------------------------


def _read_exactly(reader: Reader, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream (pipes return short reads)."""
    chunks: list[bytes] = []
    wanted = size
    while wanted > 0:
        chunk = reader.read(wanted)
        if not chunk:
            break
        if len(chunk) > wanted:
            raise ValueError(f"the reader's read({wanted}) returned {len(chunk)} bytes")
        chunks.append(chunk)
        wanted -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _filler(reader: Reader) -> Callable[[bytearray], int]:
    """A function that fills a buffer from ``reader`` (fewer bytes only at the end):
    ``readinto`` for the standard library's streams (no copy), else ``read``."""
    if isinstance(reader, (io.RawIOBase, io.BufferedIOBase)):
        readinto = reader.readinto

        def fill(buffer: bytearray) -> int:
            view = memoryview(buffer)
            got = 0
            while got < len(view):
                n = readinto(view[got:])
                if n is None:  # a non-blocking stream with nothing yet: not the end
                    raise BlockingIOError("the stream has no data yet; use a blocking stream")
                if not n:
                    break
                got += n
            return got

        return fill

    def fill_by_read(buffer: bytearray) -> int:
        data = _read_exactly(reader, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    return fill_by_read


def _sink(writer: Writer) -> Callable[[memoryview], None]:
    """A function that writes a whole buffer. The standard library's streams copy what
    they are given, so they get a view of our reused buffer; other writers get their
    own ``bytes``, since they might keep what they are handed."""
    safe = isinstance(writer, (io.RawIOBase, io.BufferedIOBase))

    def write(view: memoryview) -> None:
        _write_all(writer, view if safe else view.tobytes())

    return write


def _driver(reader: Reader, writer: Writer) -> Callable[..., int]:
    """:func:`._pipeline.drive_threaded` (reading and writing on helper threads) when the
    reader is a regular file, whose reads always complete so the helpers can always be
    joined, and the writer a standard library stream; :func:`._pipeline.drive` (this
    thread only) for anything else: pipes, sockets, a caller's own objects."""
    if not isinstance(writer, (io.RawIOBase, io.BufferedIOBase)):
        return drive
    try:
        regular = stat.S_ISREG(os.fstat(reader.fileno()).st_mode)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        regular = False
    return drive_threaded if regular else drive


def _write_all(writer: Writer, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = writer.write(view)
        if written is None and not isinstance(writer, io.RawIOBase):
            return  # writers that return nothing write everything
        if not written:
            raise BlockingIOError("the stream accepted no data; use a blocking stream")
        if type(written) is not int or not 0 < written <= len(view):
            # A count that is no count (True, -1, 1.5, more than it was given) would
            # write garbage or loop forever: the writer is broken, say so.
            raise ValueError(
                f"the writer's write() returned {written!r:.40} for {len(view)} bytes: "
                "it must return how many it took (or None for all)"
            )
        if written == len(view):
            return
        view = view[written:]


def encrypt_stream(
    key: bytes,
    header: Header,
    reader: Reader,
    writer: Writer,
    *,
    aad: bytes,
    progress: Progress | None = None,
) -> int:
    """Encrypt ``reader`` to ``writer`` segment by segment; return the plaintext bytes.

    Memory stays bounded whatever the stream's length: a few reused segment buffers.
    Reading, the cipher and writing overlap when that is safe (see :func:`_driver`).
    """
    header_bytes = header.encode()
    cipher = SegmentCipher(key, header, header_bytes, aad)
    del key  # it lives on in the cipher only: not in this frame while callbacks run
    size = header.segment_bytes
    write = _sink(writer)
    write(memoryview(header_bytes + cipher.commitment))

    def seal(index: int, segment: memoryview, last: bool, out: memoryview) -> tuple[int, int]:
        written = len(segment) + TAG_BYTES
        cipher.seal_into(index, segment, last, out[:written])
        return written, len(segment)

    return _driver(reader, writer)(
        _filler(reader), write, seal, in_size=size, out_size=size + TAG_BYTES, progress=progress
    )


def decrypt_stream(
    key: bytes,
    header: Header,
    header_bytes: bytes,
    reader: Reader,
    writer: Writer,
    *,
    aad: bytes,
    progress: Progress | None = None,
) -> int:
    """Decrypt the segments that follow a header read with :func:`read_header`.

    The v2 commitment is checked before anything more is read. Plaintext is written
    segment by segment as each authenticates; a caller that must not expose plaintext of
    a message that later fails (truncated at the end) writes to a temporary file and
    keeps it only if this returns.
    """
    cipher = _opening_cipher(key, header, header_bytes, aad)
    del key  # it lives on in the cipher only: not in this frame while callbacks run
    size = header.segment_bytes

    def open_(index: int, segment: memoryview, last: bool, out: memoryview) -> tuple[int, int]:
        if len(segment) < TAG_BYTES:
            raise _invalid()
        plain = len(segment) - TAG_BYTES
        cipher.open_into(index, segment, last, out[:plain])
        return plain, plain

    return _driver(reader, writer)(
        _filler(reader),
        _sink(writer),
        open_,
        in_size=size + TAG_BYTES,
        out_size=size,
        progress=progress,
    )


def open_segments(cipher: SegmentCipher, header: Header, reader: Reader) -> Iterator[bytes]:
    """The plaintext of each segment that follows a header, as each authenticates.
    ``cipher`` was made from the parsed ``header``, which checked its commitment."""
    _require_commitment(header)
    step = header.segment_bytes + TAG_BYTES
    current = _read_exactly(reader, step)
    index = 0
    while True:
        following = _read_exactly(reader, step) if len(current) == step else b""
        if len(current) < TAG_BYTES:
            raise _invalid()
        yield cipher.open(index, current, last=not following)
        if not following:
            return
        current = following
        index += 1
