"""Random access to an encrypted file: a read-only, seekable file object that decrypts
only the segments a read touches (``KeyManager.open_encrypted``).

The format makes this possible: segment *i* is ``segment_bytes`` of plaintext sealed
with a nonce made from *i* and whether it is the last, at a fixed offset after the
header. So any segment can be found and authenticated alone, and the one sealed as last
proves where the message ends. That one is opened when the reader is made: the size it
reports, every ``SEEK_END`` and the aad are checked before anything is read, and a file
cut at a segment boundary (with or without bytes added after) is refused at once. Every
byte returned has been authenticated; a segment in between is trusted only once read. A
few decrypted segments are kept, so reads that walk forward (or back and forth within a
segment) do not open one twice. A failure is reported (``on_rejected``) and raised with
the frames it passed through cleared (they held plaintext).
"""

from __future__ import annotations

import collections
import contextlib
import io
import operator
import os
import stat
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO, NoReturn

from . import _envelope as envelope
from ._boundary import guarded
from .errors import InvalidCiphertextError

__all__ = ["CACHED_SEGMENTS", "EncryptedReader", "EncryptingWriter"]

#: Decrypted segments kept per reader (1 MiB each by default).
CACHED_SEGMENTS = 4


class EncryptedReader(io.RawIOBase):
    """A seekable reader of the plaintext of one encrypted file (see the module).

    Args:
        raw: The encrypted file, seekable, positioned anywhere.
        cipher: The message's cipher (its commitment already checked).
        header: The message's parsed header.
        body_start: Where the first segment starts in ``raw``.
        owns_raw: Close ``raw`` with this reader.

    Raises:
        InvalidCiphertextError: The message is cut short, or its last segment does not
            authenticate (a wrong key or aad, or altered).
    """

    def __init__(
        self,
        raw: BinaryIO,
        cipher: envelope.SegmentCipher,
        header: envelope.Header,
        body_start: int,
        *,
        owns_raw: bool,
    ) -> None:
        super().__init__()
        #: Told of a segment read later that does not authenticate (its audit event;
        #: one that fails while the reader is made fails the open, which has its own).
        self.on_rejected: Callable[[InvalidCiphertextError], None] = _ignored
        self._raw = raw
        self._owns_raw = owns_raw
        self._segment_bytes = header.segment_bytes
        self._step = header.segment_bytes + envelope.TAG_BYTES
        self._body_start = body_start
        body = raw.seek(0, os.SEEK_END) - body_start
        self._count = max(1, -(-body // self._step))
        last = body - (self._count - 1) * self._step
        if last < envelope.TAG_BYTES or self._count > envelope.MAX_SEGMENTS:
            refused = InvalidCiphertextError(envelope.OPAQUE)
            refused.reason = "truncated" if last < envelope.TAG_BYTES else "unauthenticated"
            raise refused
        self._size = body - self._count * envelope.TAG_BYTES
        self._position = 0
        # Decrypted segments, each in a buffer of its own that is reused when it is
        # evicted (no allocation per segment) and wiped when the reader closes.
        self._cache: collections.OrderedDict[int, memoryview] = collections.OrderedDict()
        # One reader, one position: threads sharing it take turns (pyarrow may read
        # from several), so a seek and its read are never split by another's.
        self._lock = threading.Lock()
        self._lock_owner = os.getpid()
        # One sealed segment at a time is read into this (under the lock), not a new
        # bytes each time.
        self._sealed = memoryview(bytearray(self._step))
        # A regular file is read with pread: no seek, and no file offset shared with a
        # process forked while it is open (a DataLoader's workers) to move under a read.
        self._fd = _pread_fd(raw)
        self._cipher_or_none: envelope.SegmentCipher | None = cipher
        #: Segments decrypted so far, the last one's at open included (a cached one
        #: read again is not counted): what a ``segment_size`` choice is tuned by.
        self.segments_decrypted = 0
        self._segment(self._count - 1)  # the end, proven before anything is said

    # -- io ----------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def write(self, data: Any) -> NoReturn:
        raise io.UnsupportedOperation("an encrypted file opened for reading cannot be written")

    def __copy__(self) -> NoReturn:
        raise TypeError("an open encrypted file cannot be copied; open it again")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("an open encrypted file cannot be copied; open it again")

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        offset = operator.index(offset)  # 1.5 is no position
        with self._locked():
            return self._seek(offset, whence)

    def _seek(self, offset: int, whence: int) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._position + offset
        elif whence == os.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, not {whence!r}")
        if target < 0:  # as io.BytesIO: an error from the start, clamped from elsewhere
            if whence == os.SEEK_SET:
                raise ValueError(f"negative seek position {target}")
            target = 0
        self._position = target
        return target

    @guarded  # a failure's frames held plaintext: cleared on the way out
    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position (fewer bytes only at the end)."""
        with self._locked():
            return self._readinto(buffer)

    def _readinto(self, buffer: Any) -> int:
        self._check_open()
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):
            if self._position >= self._size:
                break  # the end was authenticated when the reader was made
            index, offset = divmod(self._position, self._segment_bytes)
            whole = min(self._segment_bytes, self._size - index * self._segment_bytes)
            if offset == 0 and len(out) - done >= whole and index not in self._cache:
                # A whole segment wanted, not kept: decrypted straight into the caller's
                # buffer (sequential reads, a tensor's bytes), no copy and no cache entry.
                self._open_into(index, out[done : done + whole])
                take = whole
            else:
                plain = self._segment(index)
                take = min(len(out) - done, len(plain) - offset)
                out[done : done + take] = plain[offset : offset + take]
            done += take
            self._position += take
        return done

    @guarded  # a failure's frames held plaintext: cleared on the way out
    def read(self, size: int | None = -1) -> bytes:
        with self._locked():
            return self._read(size)

    def _read(self, size: int | None) -> bytes:
        self._check_open()
        left = max(0, self._size - self._position)
        wanted = left if size is None or size < 0 else min(size, left)
        if not wanted:
            return b""  # the end was authenticated when the reader was made
        index, offset = divmod(self._position, self._segment_bytes)
        if offset + wanted <= self._segment_bytes:  # within one segment: one copy
            found = bytes(self._segment(index)[offset : offset + wanted])
            self._position += len(found)
            return found
        buffer = bytearray(wanted)
        got = self._readinto(buffer)
        del buffer[got:]
        return bytes(buffer)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        with self._locked():  # not while another thread reads (it would keep a segment)
            self._close()
        super().close()

    def _close(self) -> None:
        if not self.closed:
            self._fd = None
            for plain in self._cache.values():
                slot = plain.obj
                if isinstance(slot, bytearray):  # always: the reader's own buffers
                    slot[:] = bytes(len(slot))
            self._cache.clear()
            self._cipher_or_none = None  # the message key goes with it
            if self._owns_raw:
                self._raw.close()

    @property
    def size(self) -> int:
        """The plaintext's length in bytes."""
        return self._size

    # -- segments ----------------------------------------------------------------------

    def _segment(self, index: int) -> memoryview:
        """Segment ``index``'s plaintext, authenticated (as the last one if it is), kept
        among the few cached."""
        found = self._cache.get(index)
        if found is not None:
            self._cache.move_to_end(index)
            return found
        if len(self._cache) >= CACHED_SEGMENTS:
            slot: bytearray = self._cache.popitem(last=False)[1].obj  # type: ignore[assignment]
        else:
            slot = bytearray(self._segment_bytes)
        length = min(self._segment_bytes, self._size - index * self._segment_bytes)
        plain = memoryview(slot)[:length]
        self._open_into(index, plain)
        self._cache[index] = plain
        return plain

    def _open_into(self, index: int, out: memoryview) -> None:
        """Segment ``index``'s plaintext, authenticated, into ``out`` (its exact size)."""
        cipher = self._cipher_or_none
        if cipher is None:
            raise ValueError("I/O operation on closed file")
        sealed = self._fetch(index)
        try:
            cipher.open_into(index, sealed, index == self._count - 1, out)
        except InvalidCiphertextError:
            # AES-GCM writes the plaintext before it checks the tag: none of it may stay.
            out[:] = bytes(len(out))
            self._refuse(index)
        self.segments_decrypted += 1

    def _fetch(self, index: int) -> memoryview:
        """Sealed segment ``index``, read into the reader's own buffer."""
        start = self._body_start + index * self._step
        view, got = self._sealed, 0
        fd = self._fd
        readinto = getattr(self._raw, "readinto", None)
        if fd is None:
            self._raw.seek(start)
        while got < len(view):
            if fd is not None:
                n = os.preadv(fd, [view[got:]], start + got)
            elif readinto is not None:
                n = readinto(view[got:])
            else:  # a file object with read only
                chunk = self._raw.read(len(view) - got)
                n = len(chunk)
                view[got : got + n] = chunk
            if not n:
                break  # the file ends: a segment cut short fails to authenticate
            if type(n) is not int or not 0 < n <= len(view) - got:
                raise ValueError(f"the file's readinto returned {n!r:.40}")
            got += n
        return view[:got]

    def _refuse(self, index: int) -> NoReturn:
        refused = InvalidCiphertextError(
            f"{envelope.OPAQUE} (segment {index} of {self._count} does not authenticate)"
        )
        refused.reason = "unauthenticated"
        self.on_rejected(refused)
        raise refused from None

    def _locked(self) -> threading.Lock:
        """The reader's lock. A process forked while another thread held it (a
        DataLoader worker) would wait for it forever: a child makes its own, as the
        only thread there, and reads on with what the parent had (the file is read with
        pread, so nothing else is shared)."""
        if os.getpid() != self._lock_owner:
            self._lock, self._lock_owner = threading.Lock(), os.getpid()
        return self._lock

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


def _pread_fd(raw: Any) -> int | None:
    """The descriptor to pread segments from: a regular file's, read through an object
    that holds no unwritten bytes of it (an unbuffered file, or a read-only buffered
    one); None for anything else, which is sought and read."""
    if not isinstance(raw, (io.FileIO, io.BufferedReader)) or not hasattr(os, "preadv"):
        return None
    try:
        fd = raw.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError):
        return None


def _ignored(_: BaseException) -> None:
    pass


class EncryptingWriter(io.RawIOBase):
    """A write-only file object that encrypts as it is written
    (``KeyManager.open_encrypting``): the same bytes ``encrypt_file`` would write for
    the same data and random draw, segment by segment, one segment held back until the
    next byte (or ``close``) says whether it is the last. A path destination appears
    only when :meth:`close` ends a clean write; an error inside its ``with`` block, or
    the object dropped unclosed, leaves no file.

    A failure is final: a write or close that fails (a full disk, an interrupt) ends the
    writer and drops its output, so a retried write can never seal a second segment
    under a nonce already used, nor publish a file with a hole. A forked child may not
    use its parent's writer at all (its close would write into the parent's file).

    Args:
        out: Where the message goes (an :func:`~._files.atomic_output` file, or the
            caller's file object).
        finish: How to end ``out``: called once, with ``None`` after a clean close, or
            with the failure (the output is then dropped, where it can be).
        cipher: The new message's cipher.
        header_bytes: The header (and commitment) to write first.
        segment_bytes: The segment size the header records.
    """

    def __init__(
        self,
        out: IO[bytes],
        finish: Callable[[BaseException | None], None],
        cipher: envelope.SegmentCipher,
        header_bytes: bytes,
        segment_bytes: int,
    ) -> None:
        super().__init__()
        #: Told of a write that ends in failure (its audit event: the output is gone).
        self.on_failed: Callable[[BaseException], None] = _ignored
        self._out: IO[bytes] = out
        self._finish: Callable[[BaseException | None], None] | None = finish
        self._cipher: envelope.SegmentCipher | None = cipher
        self._segment_bytes = segment_bytes
        self._pending = bytearray()
        self._index = 0
        self._written = 0
        self._failure: str | None = None
        self._owner = os.getpid()
        self._lock = threading.Lock()
        envelope._write_all(out, header_bytes)  # a raw file may take part of a write

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        self._check_usable()
        return self._written

    @guarded  # a failure's frames held the caller's plaintext: cleared on the way out
    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B") if view.nbytes else memoryview(b"")
        self._check_usable()
        with self._lock:
            self._check_usable()
            try:
                return self._write(view)
            except BaseException as exc:
                self._fail(exc)  # nothing more may be sealed: its index may be spent
                raise

    def _write(self, view: memoryview) -> int:
        written = len(view)
        size = self._segment_bytes
        if self._pending:  # top up the segment held back
            taken = view[: size - len(self._pending)]
            self._pending += taken
            view = view[len(taken) :]
            if not view:
                self._written += written
                return written  # no byte after it yet: it may still be the last
            self._seal(memoryview(self._pending), last=False)
            self._pending.clear()
        while len(view) > size:  # more follows: sealed from the caller's buffer
            self._seal(view[:size], last=False)
            view = view[size:]
        self._pending += view  # at most a segment, held back
        self._written += written
        return written

    @guarded  # a failure's frames held plaintext (the last segment)
    def close(self) -> None:
        """Seal the last segment and make the destination appear."""
        if self._foreign():
            self._drop()
            raise RuntimeError(_FORKED)
        with self._lock:
            if self._failure is not None:
                raise ValueError(f"{_FAILED} ({self._failure}): nothing was written")
            if self._finish is not None:
                try:
                    self._seal(memoryview(self._pending), last=True)
                except BaseException as exc:
                    self._fail(exc)
                    raise
                finish, self._finish = self._finish, None
                self._pending.clear()
                self._cipher = None
                try:
                    finish(None)
                except BaseException as exc:  # publishing failed: the output is gone
                    self._failure = type(exc).__name__
                    super().close()
                    self.on_failed(exc)
                    raise
        super().close()

    def abort(self, reason: BaseException | None = None) -> None:
        """Drop what was written: the destination does not appear (or stays as it was)."""
        if self._foreign():
            self._drop()
            return
        with self._lock:
            if self._finish is not None:
                self._fail(reason or RuntimeError("abandoned unclosed"))
        super().close()

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is not None:
            self.abort(error)  # a failed write never becomes the destination
        else:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_finish", None) is not None:
            self.abort()  # dropped unclosed: not a clean close

    def _seal(self, plaintext: memoryview, *, last: bool) -> None:
        cipher = self._cipher
        assert cipher is not None  # noqa: S101 - checked by the callers
        index = self._index
        self._index += 1  # spent before anything is written: never sealed twice
        envelope._write_all(self._out, cipher.seal(index, plaintext, last))

    def _fail(self, exc: BaseException) -> None:
        """End the writer after ``exc``: drop the output and say so (once)."""
        self._pending = bytearray()  # not cleared: a failed seal's view may still hold it
        self._cipher = None
        self._failure = self._failure or type(exc).__name__
        finish, self._finish = self._finish, None
        if finish is not None:
            try:
                finish(exc)
            finally:
                self.on_failed(exc)
        super().close()

    def _check_usable(self) -> None:
        if self._foreign():
            raise RuntimeError(_FORKED)
        if self._failure is not None:
            raise ValueError(f"{_FAILED} ({self._failure}): open a new one")
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _foreign(self) -> bool:
        return os.getpid() != self._owner

    def _drop(self) -> None:
        """A forked child's copy: let go of everything, touching neither the lock (it
        may have been held at the fork) nor the file (it is the parent's)."""
        self._finish = None
        self._cipher = None
        self._pending = bytearray()
        with contextlib.suppress(Exception):
            super().close()


_FORKED = (
    "this encrypting writer was opened by another process (this one is a fork of it): "
    "only that process may write or close it; open a new one here"
)
_FAILED = "this encrypting writer failed earlier and dropped its output"
