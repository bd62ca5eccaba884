"""Encryption of bytes, streams and files under the keys :mod:`._materials` picks.

The format is :mod:`._envelope`'s (``docs/FORMAT.md``); which key seals and which key
opens is :class:`~._materials.KeyMaterials`'; where plaintext may land is
:func:`~._files.atomic_output`'s. Every call emits one audit event (``encrypt`` or
``decrypt``) naming the key and version the header records; a re-encryption emits the
decrypt side (the old version) and then the encrypt side (the new one). A ciphertext
that does not authenticate, or is not a ciphertext at all, is an event too (outcome
``rejected``). The user docs are on ``KeyManager``'s methods, which delegate here.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

from . import _envelope as envelope
from ._files import PathLike, atomic_output
from ._materials import DEFAULT_KEY, KeyMaterials
from ._observe import Observer, Served
from ._seekable import EncryptedReader, EncryptingWriter
from ._validate import (
    DEFAULT_CHOSEN_SEGMENT_BYTES,
    MAX_CHOSEN_SEGMENT_BYTES,
    MIN_CHOSEN_SEGMENT_BYTES,
    Progress,
    check_aad,
    check_data,
    check_progress,
    check_segment_size,
)
from .errors import InvalidCiphertextError

__all__ = ["Encryptor"]

_T = TypeVar("_T")


class _Plaintext:
    """A reader of the plaintext of a message, decrypted segment by segment as it is
    read: a re-encryption pipes it straight into encryption."""

    def __init__(self, open_segments: Iterator[bytes]) -> None:
        self._segments = open_segments
        self._pending = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._segments, None)
            if chunk is None:
                return b""
            self._pending = memoryview(chunk)
        if size < 0:
            size = len(self._pending)
        taken, self._pending = self._pending[:size], self._pending[size:]
        return taken.tobytes()


class Encryptor:
    """Bytes, streams and files, sealed and opened with :class:`KeyMaterials`.

    Args:
        materials: Key choice.
        observer: Where events go.
    """

    def __init__(self, materials: KeyMaterials, observer: Observer) -> None:
        self._materials = materials
        self._observer = observer

    # -- bytes -----------------------------------------------------------------------

    def encrypt(self, data: bytes, key_name: str, *, aad: bytes, transit_key: str | None) -> bytes:
        """See ``KeyManager.encrypt``."""
        plaintext = check_data(data, "data")
        extra = check_aad(aad)
        materials = self._materials

        def run() -> Served:
            m = materials.for_encryption(key_name, transit_key)
            if m.header is None:  # a managed key: the format makes the header itself
                blob = envelope.encrypt_managed(m.key, m.key_name, m.key_version, plaintext, extra)
            else:
                blob = envelope.encrypt_bytes(m.key, m.header, plaintext, extra)
            return Served(blob, m.source, m.outcome, m.version)

        blob: bytes = self._observer.observed("encrypt", transit_key or key_name, run)
        return blob

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        """See ``KeyManager.decrypt``."""
        message = check_data(blob, "blob")
        extra = check_aad(aad)
        header, length = self._header(lambda: envelope.parse_header(message))
        materials = self._materials

        def run() -> Served:
            m = materials.for_header(header)
            body = memoryview(message)[length:]
            plaintext = envelope.decrypt_bytes(m.key, header, header.encode(), body, extra)
            return Served(plaintext, m.source, m.outcome, m.version)

        plaintext: bytes = self._observer.observed(
            "decrypt", _named(header), run, version=header.key_version or None
        )
        return plaintext

    def reencrypt(
        self, blob: bytes, key_name: str | None, *, aad: bytes, transit_key: str | None
    ) -> bytes:
        """See ``KeyManager.reencrypt``."""
        message = check_data(blob, "blob")
        header, _ = self._header(lambda: envelope.parse_header(message))
        plaintext = self.decrypt(blob, aad=aad)
        target, transit = _target(header, key_name, transit_key)
        return self.encrypt(plaintext, target, aad=aad, transit_key=transit)

    # -- streams -----------------------------------------------------------------------

    def encrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str,
        *,
        aad: bytes,
        progress: Progress | None,
        transit_key: str | None,
        segment_size: int | None = None,
    ) -> int:
        """See ``KeyManager.encrypt_stream``."""
        extra = check_aad(aad)
        report = check_progress(progress)
        segment_bytes = check_segment_size(segment_size)
        materials = self._materials

        def run() -> Served:
            m = materials.for_encryption(key_name, transit_key)
            header = m.sealing_header(segment_bytes)
            done = envelope.encrypt_stream(
                m.key, header, reader, writer, aad=extra, progress=report
            )
            return Served(done, m.source, m.outcome, m.version)

        done: int = self._observer.observed("encrypt", transit_key or key_name, run)
        return done

    def decrypt_stream(
        self, reader: Any, writer: Any, *, aad: bytes, progress: Progress | None
    ) -> int:
        """See ``KeyManager.decrypt_stream``."""
        extra = check_aad(aad)
        report = check_progress(progress)
        header, header_bytes = self._header(lambda: envelope.read_header(reader))
        materials = self._materials

        def run() -> Served:
            m = materials.for_header(header)
            done = envelope.decrypt_stream(
                m.key, header, header_bytes, reader, writer, aad=extra, progress=report
            )
            return Served(done, m.source, m.outcome, m.version)

        done: int = self._observer.observed(
            "decrypt", _named(header), run, version=header.key_version or None
        )
        return done

    def reencrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str | None,
        *,
        aad: bytes,
        progress: Progress | None,
        transit_key: str | None,
    ) -> int:
        """See ``KeyManager.reencrypt_stream``.

        The decrypt event records the old key and version when that key was found and
        matches the message's key commitment (a mismatch is its ``rejected`` outcome);
        segments are authenticated as the encryption reads them, so a tampered segment
        shows as the encrypt event's ``rejected`` outcome.
        """
        extra = check_aad(aad)
        header, header_bytes = self._header(lambda: envelope.read_header(reader))
        materials = self._materials

        def find_key() -> Served:
            m = materials.for_header(header)
            # Checks the commitment; the key lives on in the cipher only.
            cipher = envelope.SegmentCipher(m.key, header, header_bytes, extra)
            return Served(cipher, m.source, m.outcome, m.version)

        cipher: envelope.SegmentCipher = self._observer.observed(
            "decrypt", _named(header), find_key, version=header.key_version or None
        )
        plaintext = _Plaintext(envelope.open_segments(cipher, header, reader))
        target, transit = _target(header, key_name, transit_key)
        return self.encrypt_stream(
            plaintext,
            writer,
            target,
            aad=extra,
            progress=progress,
            transit_key=transit,
            segment_size=_kept_segment_size(header),
        )

    # -- files -------------------------------------------------------------------------

    def encrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str,
        *,
        aad: bytes,
        progress: Progress | None,
        transit_key: str | None,
        durable: bool,
        segment_size: int | None = None,
    ) -> int:
        """See ``KeyManager.encrypt_file``."""
        check_segment_size(segment_size)  # before dst is touched
        with open(src, "rb", buffering=0) as reader, atomic_output(dst, durable=durable) as out:
            return self.encrypt_stream(
                reader,
                out,
                key_name,
                aad=aad,
                progress=progress,
                transit_key=transit_key,
                segment_size=segment_size,
            )

    def decrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        *,
        aad: bytes,
        progress: Progress | None,
        durable: bool,
    ) -> int:
        """See ``KeyManager.decrypt_file``."""
        with open(src, "rb", buffering=0) as reader, atomic_output(dst, durable=durable) as out:
            return self.decrypt_stream(reader, out, aad=aad, progress=progress)

    def reencrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str | None,
        *,
        aad: bytes,
        progress: Progress | None,
        transit_key: str | None,
    ) -> int:
        """See ``KeyManager.reencrypt_file`` (always durable: the old key version tends
        to be destroyed next)."""
        with open(src, "rb", buffering=0) as reader, atomic_output(dst, durable=True) as out:
            return self.reencrypt_stream(
                reader, out, key_name, aad=aad, progress=progress, transit_key=transit_key
            )

    # -- random access -----------------------------------------------------------------

    def open_encrypted(self, src: PathLike | BinaryIO, *, aad: bytes) -> BinaryIO:
        """See ``KeyManager.open_encrypted``."""
        extra = check_aad(aad)
        if isinstance(src, io.TextIOBase):
            raise TypeError("open_encrypted reads bytes: open the file in binary mode ('rb')")
        owns = isinstance(src, (str, bytes, os.PathLike))
        if not owns and not hasattr(src, "seekable"):
            raise TypeError(
                f"open_encrypted takes a path or a binary file object, not {type(src).__name__}"
            )
        raw: BinaryIO = (
            # Unbuffered: the reader reads whole segments into its own buffer, so a
            # buffer between would only add a copy and a seek's worth of work.
            open(src, "rb", buffering=0)  # noqa: SIM115 - closed with the reader (or on failure)
            if isinstance(src, (str, bytes, os.PathLike))
            else src
        )
        try:
            if not raw.seekable():
                raise ValueError(
                    "open_encrypted needs a seekable file; for a pipe or socket, use decrypt_stream"
                )
            # The message starts where the file stands (0 for a path): one embedded in
            # a larger file is read from its own start.
            header, header_bytes = self._header(lambda: envelope.read_header(raw))
            body_start = raw.tell()
            materials = self._materials

            def run() -> Served:
                m = materials.for_header(header)
                # Checks the commitment; the key lives on in the cipher only. The reader
                # opens the last segment: a wrong aad or a file cut short fails here.
                cipher = envelope.SegmentCipher(m.key, header, header_bytes, extra)
                reader = EncryptedReader(raw, cipher, header, body_start, owns_raw=owns)
                return Served(reader, m.source, m.outcome, m.version)

            name, version = _named(header), header.key_version or None
            opened: EncryptedReader = self._observer.observed("decrypt", name, run, version=version)
        except BaseException:
            if owns:
                raw.close()
            raise
        observer = self._observer

        def rejected(exc: InvalidCiphertextError) -> None:  # a segment read later
            observer.failed("decrypt", name, exc, version=version)

        opened.on_rejected = rejected
        return opened  # type: ignore[return-value]  # a binary file object, read-only

    def open_encrypting(
        self,
        dst: PathLike | BinaryIO,
        key_name: str,
        *,
        aad: bytes,
        segment_size: int | None = None,
    ) -> BinaryIO:
        """See ``KeyManager.open_encrypting``."""
        extra = check_aad(aad)
        segment_bytes = check_segment_size(segment_size)
        materials = self._materials
        out, finish = _output(dst)

        def run() -> Served:
            m = materials.for_encryption(key_name, None)
            header = m.sealing_header(segment_bytes)
            header_bytes = header.encode()
            cipher = envelope.SegmentCipher(m.key, header, header_bytes, extra)
            writer = EncryptingWriter(
                out, finish, cipher, header_bytes + cipher.commitment, header.segment_bytes
            )
            return Served(writer, m.source, m.outcome, m.version)

        try:
            opened: EncryptingWriter = self._observer.observed("encrypt", key_name, run)
        except BaseException as exc:
            finish(exc)
            raise
        observer = self._observer

        def failed(exc: BaseException) -> None:  # the ok event said it opened; this, that
            observer.failed("encrypt", key_name, exc)  # its output never appeared

        opened.on_failed = failed
        return opened  # type: ignore[return-value]  # a binary file object, write-only

    # -- helpers -----------------------------------------------------------------------

    def _header(self, parse: Callable[[], _T]) -> _T:
        """Parse a message's header; one that is not a header is a rejected decrypt."""
        try:
            return parse()
        except InvalidCiphertextError as exc:
            self._observer.failed("decrypt", "", exc)
            raise


def _output(
    dst: PathLike | BinaryIO,
) -> tuple[Any, Callable[[BaseException | None], None]]:
    """Where an :class:`EncryptingWriter` writes, and how its end is made final: a path
    through :func:`atomic_output` (it appears on success only); a file object as it is
    (flushed on success, left open either way: what becomes of it is its owner's)."""
    if isinstance(dst, (str, bytes, os.PathLike)):
        stack = contextlib.ExitStack()
        out = stack.enter_context(atomic_output(os.fsdecode(dst)))

        def finish(failure: BaseException | None) -> None:
            if failure is None:
                stack.close()  # the destination appears
            else:
                stack.__exit__(type(failure), failure, failure.__traceback__)

        return out, finish
    if isinstance(dst, io.TextIOBase):
        raise TypeError("open_encrypting writes bytes: open the file in binary mode ('wb')")
    if not callable(getattr(dst, "write", None)):
        raise TypeError(
            f"open_encrypting takes a path or a writable binary file object, "
            f"not {type(dst).__name__}"
        )

    def flush(failure: BaseException | None) -> None:
        if failure is None and callable(getattr(dst, "flush", None)):
            dst.flush()

    return dst, flush


def _kept_segment_size(header: envelope.Header) -> int:
    """A re-encryption keeps the message's segment size (a file cut small for random
    access stays so), when it is one a writer may choose."""
    size = header.segment_bytes
    if MIN_CHOSEN_SEGMENT_BYTES <= size <= MAX_CHOSEN_SEGMENT_BYTES:
        return size
    return DEFAULT_CHOSEN_SEGMENT_BYTES


def _named(header: envelope.Header) -> str:
    """The key name an event may carry: the header's, unless it holds characters that
    could forge lines in a log (it is attacker input, checked only later)."""
    name = header.key_name
    return name if name.isprintable() else ""


def _target(
    header: envelope.Header, key_name: str | None, transit_key: str | None
) -> tuple[str, str | None]:
    """The key a re-encryption uses: the one asked for, else the message's own."""
    if key_name is not None or transit_key is not None:
        return key_name or DEFAULT_KEY, transit_key
    if header.mode == envelope.MODE_TRANSIT:
        return DEFAULT_KEY, header.key_name
    return header.key_name, None
