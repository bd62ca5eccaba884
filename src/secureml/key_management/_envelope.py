"""The secureml ciphertext format, version 1: one format for small blobs and huge files.

A message is a header, then one or more AES-256-GCM segments (the STREAM construction of
Tink's streaming AEAD); ``docs/FORMAT.md`` is the full specification::

    header    = "SMLE" | 0x01 | mode u8 | segment_bytes u32 | key_version u32
                | name_len u16 | key_name | wrapped_len u16 | wrapped_key
                | salt (32 bytes) | nonce_prefix (7 bytes)          (integers big-endian)
    K         = HKDF-SHA256(ikm = key, salt = salt, info = header)  (32 bytes)
    nonce_i   = nonce_prefix | i as u32 | 0x01 if segment i is the last else 0x00
    segment_i = AES-256-GCM(K, nonce_i, plaintext_i, aad)           (ciphertext | tag)

Every segment but the last holds exactly ``segment_bytes`` of plaintext; the last holds
0 to ``segment_bytes``. The header is authenticated through ``K``: change one bit of it
and no segment opens. Truncation, reordering, extension, a flipped flag or a wrong
``aad`` all fail authentication, and every failure is the same
:class:`~.errors.InvalidCiphertextError`.

This module is pure format: it never reads keys from anywhere. The manager resolves the
key a header names and hands it in.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._buffers import filled_bytes, in_parallel
from ._pipeline import drive, drive_threaded
from .errors import InvalidCiphertextError

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MODE_MANAGED_KEY",
    "MODE_TRANSIT",
    "OPAQUE",
    "Header",
    "SegmentCipher",
    "decrypt_bytes",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_stream",
    "open_segments",
    "parse_header",
    "read_header",
]

MAGIC = b"SMLE"
FORMAT_VERSION = 1
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
TAG_BYTES = 16
#: The segment counter is 32 bits: a message never has more segments than this.
MAX_SEGMENTS = 1 << 32

_FIXED = struct.Struct(">4sBBIIH")  # magic, version, mode, segment_bytes, key_version, name_len
_U16 = struct.Struct(">H")
_COUNTER = struct.Struct(">I")
_NONCE_LAST = b"\x01"
_NONCE_MORE = b"\x00"

OPAQUE = "the data is not a valid secureml ciphertext for this key and aad"


class Reader(Protocol):
    """A binary file-like object to read from."""

    def read(self, size: int = ..., /) -> bytes: ...


class Writer(Protocol):
    """A binary file-like object to write to."""

    def write(self, data: Any, /) -> int | None: ...


Progress = Callable[[int], object]


@dataclass(frozen=True)
class Header:
    """What a message says about itself; :meth:`encode` is authenticated data."""

    mode: int
    key_name: str
    key_version: int
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    wrapped_key: bytes = b""
    salt: bytes = field(default_factory=lambda: os.urandom(SALT_BYTES), repr=False)
    nonce_prefix: bytes = field(default_factory=lambda: os.urandom(PREFIX_BYTES), repr=False)

    def __post_init__(self) -> None:
        name = self.key_name.encode("utf-8")
        if self.mode not in (MODE_MANAGED_KEY, MODE_TRANSIT):
            raise ValueError(f"unknown mode {self.mode}")
        if not 0 < len(name) <= MAX_NAME_BYTES:
            raise ValueError(f"key name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
        if not 0 <= self.key_version < 1 << 32:
            raise ValueError("key version must fit in 32 bits")
        if not MIN_SEGMENT_BYTES <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}")
        if len(self.wrapped_key) > MAX_WRAPPED_BYTES or (
            bool(self.wrapped_key) != (self.mode == MODE_TRANSIT)
        ):
            raise ValueError("a wrapped key belongs in Transit mode only, up to 4096 bytes")
        if len(self.salt) != SALT_BYTES or len(self.nonce_prefix) != PREFIX_BYTES:
            raise ValueError("salt is 32 bytes and nonce_prefix 7")

    def encode(self) -> bytes:
        name = self.key_name.encode("utf-8")
        return b"".join(
            (
                _FIXED.pack(
                    MAGIC,
                    FORMAT_VERSION,
                    self.mode,
                    self.segment_bytes,
                    self.key_version,
                    len(name),
                ),
                name,
                _U16.pack(len(self.wrapped_key)),
                self.wrapped_key,
                self.salt,
                self.nonce_prefix,
            )
        )


def _invalid() -> InvalidCiphertextError:
    return InvalidCiphertextError(OPAQUE)


def _fixed_part(data: bytes) -> tuple[int, int, int, int]:
    """Check the fixed part; return mode, segment_bytes, key_version, name_len."""
    magic, version, mode, segment_bytes, key_version, name_len = _FIXED.unpack(data)
    if (
        magic != MAGIC
        or version != FORMAT_VERSION
        or mode not in (MODE_MANAGED_KEY, MODE_TRANSIT)
        or not MIN_SEGMENT_BYTES <= segment_bytes <= MAX_SEGMENT_BYTES
        or not 0 < name_len <= MAX_NAME_BYTES
    ):
        raise _invalid()
    return mode, segment_bytes, key_version, name_len


def _header_from(
    fixed: tuple[int, int, int, int], name: bytes, wrapped: bytes, tail: bytes
) -> Header:
    mode, segment_bytes, key_version, _ = fixed
    try:
        return Header(
            mode=mode,
            key_name=name.decode("utf-8"),
            key_version=key_version,
            segment_bytes=segment_bytes,
            wrapped_key=wrapped,
            salt=tail[:SALT_BYTES],
            nonce_prefix=tail[SALT_BYTES:],
        )
    except (UnicodeDecodeError, ValueError):
        raise _invalid() from None


def parse_header(data: bytes | memoryview) -> tuple[Header, int]:
    """The header at the start of ``data`` and its length. Every field is bounded, so a
    hostile header is refused here, before any key is looked up."""
    view = memoryview(data)
    if len(view) < _FIXED.size:
        raise _invalid()
    mode, segment_bytes, key_version, name_len = _fixed_part(bytes(view[: _FIXED.size]))
    at = _FIXED.size
    name = bytes(view[at : at + name_len])
    at += name_len
    if len(view) < at + _U16.size:
        raise _invalid()
    (wrapped_len,) = _U16.unpack(view[at : at + _U16.size])
    at += _U16.size
    if wrapped_len > MAX_WRAPPED_BYTES:
        raise _invalid()
    wrapped = bytes(view[at : at + wrapped_len])
    at += wrapped_len
    tail = bytes(view[at : at + SALT_BYTES + PREFIX_BYTES])
    at += SALT_BYTES + PREFIX_BYTES
    if len(view) < at:
        raise _invalid()
    return _header_from((mode, segment_bytes, key_version, name_len), name, wrapped, tail), at


def read_header(reader: Reader) -> tuple[Header, bytes]:
    """Read the header from a stream; return it and its exact bytes."""
    fixed = _read_exactly(reader, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise _invalid()
    fields = _fixed_part(fixed)
    name_len = fields[3]
    name = _read_exactly(reader, name_len)
    wrapped_len_raw = _read_exactly(reader, _U16.size)
    if len(name) < name_len or len(wrapped_len_raw) < _U16.size:
        raise _invalid()
    (wrapped_len,) = _U16.unpack(wrapped_len_raw)
    if wrapped_len > MAX_WRAPPED_BYTES:
        raise _invalid()
    wrapped = _read_exactly(reader, wrapped_len)
    tail = _read_exactly(reader, SALT_BYTES + PREFIX_BYTES)
    if len(wrapped) < wrapped_len or len(tail) < SALT_BYTES + PREFIX_BYTES:
        raise _invalid()
    header = _header_from(fields, name, wrapped, tail)
    raw = b"".join((fixed, name, wrapped_len_raw, wrapped, tail))
    return header, raw


class SegmentCipher:
    """The per-message key and the nonce schedule of one message.

    Args:
        key: The key the header names (a managed key, or a Transit data key).
        header: The message's header bytes, exactly as stored.
        aad: Associated data, authenticated with every segment.
    """

    def __init__(self, key: bytes, header: Header, header_bytes: bytes, aad: bytes) -> None:
        # Imported here: importing secureml.key_management must stay light.
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        self._invalid_tag = InvalidTag
        message_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=header.salt, info=header_bytes
        ).derive(key)
        self._aead = AESGCM(message_key)
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


def encrypt_bytes(key: bytes, header: Header, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """The whole message for ``plaintext``, written in place into the result; large
    messages are encrypted on several threads."""
    header_bytes = header.encode()
    cipher = SegmentCipher(key, header, header_bytes, aad)
    data = memoryview(plaintext)
    size = header.segment_bytes
    count = max(1, -(-len(data) // size))
    if count > MAX_SEGMENTS:
        cipher.seal(count - 1, b"", True)  # raises: the counter would wrap
    start = len(header_bytes)
    total = start + len(data) + count * TAG_BYTES

    def fill(out: memoryview) -> None:
        out[:start] = header_bytes

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
    """The plaintext of a message whose header was parsed; ``body`` is what follows it.
    Nothing is returned unless every segment authenticates."""
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


# -- streams ---------------------------------------------------------------------------


def _read_exactly(reader: Reader, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream (pipes return short reads)."""
    chunks: list[bytes] = []
    wanted = size
    while wanted > 0:
        chunk = reader.read(wanted)
        if not chunk:
            break
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
        if written >= len(view):
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
    size = header.segment_bytes
    write = _sink(writer)
    write(memoryview(header_bytes))

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

    Plaintext is written segment by segment as each authenticates; a caller that must
    not expose plaintext of a message that later fails (truncated at the end) writes to
    a temporary file and keeps it only if this returns.
    """
    cipher = SegmentCipher(key, header, header_bytes, aad)
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
    """The plaintext of each segment that follows a header, as each authenticates."""
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
