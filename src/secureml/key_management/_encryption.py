"""The encryption half of :class:`KeyManager`: data and files of any size, with keys the
manager manages (or data keys from Vault Transit), surviving rotations.

Policy only: which key encrypts (the current version of a managed key, or a fresh
Transit data key), which key a header asks for, and where plaintext may land. The
format is :mod:`._envelope`'s.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from . import _envelope as envelope
from ._cache import ABSENT
from ._counters import BACKEND_READS, HITS, MISSES
from ._encoding import MIN_KEY_BYTES
from ._lifecycle import key_from_material
from ._names import validate_name
from .backends.base import VersionedSecretBackend
from .errors import (
    InvalidCiphertextError,
    KeyFormatError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VaultUnavailableError,
)

if TYPE_CHECKING:
    from ._cache import SecretCache
    from ._counters import Counters
    from ._transit import TransitKeys
    from .backends.base import SecretBackend

__all__ = ["Encryption", "replacing"]

_T = TypeVar("_T")

#: The managed key new data is encrypted with when no key is named.
DEFAULT_KEY = "master_key"
_TRANSIT_VERSION = re.compile(r"vault:v(\d+):")

PathLike = str | os.PathLike[str]
Progress = Callable[[int], object]


def _check_data(value: object, what: str) -> bytes | memoryview:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        view = memoryview(value)
        if not view.contiguous:
            raise TypeError(f"{what} must be contiguous bytes")
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _check_aad(aad: object) -> bytes:
    if not isinstance(aad, (bytes, bytearray, memoryview)):
        raise TypeError(f"aad must be bytes, not {type(aad).__name__}")
    return bytes(aad)


def _check_progress(progress: object) -> Progress | None:
    if progress is not None and not callable(progress):
        raise TypeError("progress must be a callable taking the number of bytes done")
    return progress


@contextlib.contextmanager
def replacing(dst: PathLike, *, durable: bool) -> Iterator[IO[bytes]]:
    """A temporary file beside ``dst`` (mode 0600) that becomes ``dst`` only if the block
    succeeds: a failure never leaves partial output at ``dst``. ``durable`` flushes it
    to disk before the rename, and the rename after it."""
    target = Path(dst)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            yield out
            if durable:
                os.fsync(out.fileno())
        os.replace(temporary, target)
        if durable:
            _sync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


class _Plaintext:
    """A reader of the plaintext of a message, decrypted segment by segment as it is
    read: :meth:`Encryption.reencrypt_stream` pipes it straight into encryption."""

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


class Encryption:
    """Encryption methods, mixed into :class:`~secureml.key_management.KeyManager`."""

    if TYPE_CHECKING:
        _primary: SecretBackend | None
        _cache: SecretCache
        _counts: Counters

        @property
        def transit(self) -> TransitKeys: ...

        def _observed(
            self,
            operation: str,
            name: str,
            call: Callable[[], tuple[_T, str | None, str]],
            *,
            version: int | None = None,
            returns_version: bool = False,
        ) -> _T: ...

        def _read_version(self, name: str, version: int) -> tuple[Any, str, str]: ...

        def _lookup(
            self,
            name: str,
            default: object,
            dev_default: Callable[[], object] | None,
            *,
            outage_falls_through: bool = True,
        ) -> tuple[Any, str, str]: ...

        def _serve_stale(self, name: str, outage: VaultUnavailableError, entry: Any) -> None: ...

    # -- bytes -----------------------------------------------------------------------

    def encrypt(
        self,
        data: bytes,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        transit_key: str | None = None,
    ) -> bytes:
        """Encrypt ``data`` with the current version of key ``key_name``.

        The result names the key and its version, so :meth:`decrypt` needs no key name
        and still works after the key is rotated. AES-256-GCM with a key derived per
        message; the format is ``docs/FORMAT.md``.

        Args:
            data: The plaintext.
            key_name: A managed key (Vault KV, or the environment / dev default chain).
            aad: Associated data: authenticated, not encrypted; :meth:`decrypt` must be
                given the same.
            transit_key: Encrypt with a fresh data key from this Vault Transit key
                instead of ``key_name``; only the wrapped data key is kept, in the result.

        Raises:
            SecretNotFoundError: No source has the key.
            KeyFormatError: The key is shorter than 16 bytes or not key material.
        """
        plaintext = _check_data(data, "data")
        extra = _check_aad(aad)

        def run() -> tuple[bytes, str, str]:
            key, header, where = self._sealing(key_name, transit_key)
            return envelope.encrypt_bytes(key, header, plaintext, extra), where, "ok"

        return self._observed("encrypt", transit_key or key_name, run)

    def decrypt(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        """Decrypt what :meth:`encrypt` (or :meth:`encrypt_file`) made, with the key and
        version its header names.

        Raises:
            InvalidCiphertextError: The blob is altered, truncated, extended, not ours, or
                ``aad`` differs. Deliberately says nothing more.
            SecretNotFoundError: The key version it names is gone (deleted, destroyed).
        """
        message = _check_data(blob, "blob")
        extra = _check_aad(aad)
        header, length = envelope.parse_header(message)
        header_bytes = bytes(memoryview(message)[:length])

        def run() -> tuple[bytes, str, str]:
            key, where = self._opening(header)
            body = memoryview(message)[length:]
            return envelope.decrypt_bytes(key, header, header_bytes, body, extra), where, "ok"

        return self._observed("decrypt", header.key_name, run, version=header.key_version or None)

    def reencrypt(
        self,
        blob: bytes,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        transit_key: str | None = None,
    ) -> bytes:
        """Decrypt ``blob`` and encrypt it again with the current version of ``key_name``
        (default: the key it names, or its Transit key): what to run after a rotation,
        before retiring the old version.
        """
        message = _check_data(blob, "blob")
        header, _ = envelope.parse_header(message)
        plaintext = self.decrypt(blob, aad=aad)
        target, transit = self._target(header, key_name, transit_key)
        return self.encrypt(plaintext, target, aad=aad, transit_key=transit)

    # -- streams and files -------------------------------------------------------------

    def encrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
    ) -> int:
        """Encrypt a binary stream of any length, in bounded memory (three 1 MiB buffers).

        Args:
            reader: Anything with ``read(n)`` returning bytes (files, pipes, sockets).
            writer: Anything with ``write(b)``.
            progress: Called with the plaintext bytes done, after each segment.

        Returns:
            The plaintext bytes encrypted.
        """
        extra = _check_aad(aad)
        report = _check_progress(progress)

        def run() -> tuple[int, str, str]:
            key, header, where = self._sealing(key_name, transit_key)
            done = envelope.encrypt_stream(key, header, reader, writer, aad=extra, progress=report)
            return done, where, "ok"

        return self._observed("encrypt", transit_key or key_name, run)

    def decrypt_stream(
        self, reader: Any, writer: Any, *, aad: bytes = b"", progress: Progress | None = None
    ) -> int:
        """Decrypt a stream made by :meth:`encrypt_stream` or :meth:`encrypt_file`.

        Plaintext is written as each segment authenticates. If the stream turns out to be
        truncated or altered further on, :class:`InvalidCiphertextError` is raised after
        the earlier segments were written: to keep all-or-nothing, decrypt into a
        temporary place (as :meth:`decrypt_file` does).

        Returns:
            The plaintext bytes written.
        """
        extra = _check_aad(aad)
        report = _check_progress(progress)
        header, header_bytes = envelope.read_header(reader)

        def run() -> tuple[int, str, str]:
            key, where = self._opening(header)
            done = envelope.decrypt_stream(
                key,
                header,
                header_bytes,
                reader,
                writer,
                aad=extra,
                progress=report,
            )
            return done, where, "ok"

        return self._observed("decrypt", header.key_name, run, version=header.key_version or None)

    def reencrypt_stream(
        self,
        reader: Any,
        writer: Any,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
    ) -> int:
        """:meth:`reencrypt` for streams: decrypts and encrypts segment by segment, so
        plaintext never rests anywhere. Returns the plaintext bytes moved."""
        extra = _check_aad(aad)
        header, header_bytes = envelope.read_header(reader)
        key, _ = self._opening(header)
        cipher = envelope.SegmentCipher(key, header, header_bytes, extra)
        plaintext = _Plaintext(envelope.open_segments(cipher, header, reader))
        target, transit = self._target(header, key_name, transit_key)
        return self.encrypt_stream(
            plaintext, writer, target, aad=extra, progress=progress, transit_key=transit
        )

    def encrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str = DEFAULT_KEY,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
        durable: bool = False,
    ) -> int:
        """Encrypt file ``src`` to ``dst`` (replaced only once complete). Returns the
        plaintext bytes.

        Args:
            durable: fsync ``dst`` (and its folder) before returning, as a crash could
                otherwise lose it: pass ``True`` when ``src`` will be deleted next.
        """
        with open(src, "rb", buffering=0) as reader, replacing(dst, durable=durable) as writer:
            return self.encrypt_stream(
                reader, writer, key_name, aad=aad, progress=progress, transit_key=transit_key
            )

    def decrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        durable: bool = False,
    ) -> int:
        """Decrypt file ``src`` to ``dst``, all or nothing.

        Plaintext goes to a temporary file beside ``dst`` (mode 0600) that becomes
        ``dst`` only after the last segment authenticates: a tampered or truncated file
        never leaves partial plaintext at ``dst``. Returns the plaintext bytes.
        ``durable`` fsyncs ``dst`` before returning.
        """
        with open(src, "rb", buffering=0) as reader, replacing(dst, durable=durable) as writer:
            return self.decrypt_stream(reader, writer, aad=aad, progress=progress)

    def reencrypt_file(
        self,
        src: PathLike,
        dst: PathLike,
        key_name: str | None = None,
        *,
        aad: bytes = b"",
        progress: Progress | None = None,
        transit_key: str | None = None,
    ) -> int:
        """:meth:`reencrypt_stream` from file ``src`` to ``dst`` (may be the same path),
        replaced only once the whole file authenticated and was encrypted again. Always
        fsynced before the rename: after a re-encryption the old key version tends to
        be destroyed, and a crash must not leave ``dst`` empty."""
        with open(src, "rb", buffering=0) as reader, replacing(dst, durable=True) as writer:
            return self.reencrypt_stream(
                reader, writer, key_name, aad=aad, progress=progress, transit_key=transit_key
            )

    # -- which key ---------------------------------------------------------------------

    def _sealing(
        self, key_name: str, transit_key: str | None
    ) -> tuple[bytes, envelope.Header, str]:
        """The key to encrypt with, the header naming it, and where it came from."""
        if transit_key is not None:
            data_key, wrapped = self.transit.generate_data_key(transit_key)
            data_key = _key(data_key, transit_key, f"vault:{self.transit.mount}")
            match = _TRANSIT_VERSION.match(wrapped)
            header = envelope.Header(
                mode=envelope.MODE_TRANSIT,
                key_name=transit_key,
                key_version=int(match.group(1)) if match else 0,
                wrapped_key=wrapped.encode("ascii"),
            )
            return data_key, header, f"vault:{self.transit.mount}/keys/{transit_key}"
        validate_name(key_name, what="key_name")
        version, key, where = self._current_key(key_name)
        header = envelope.Header(
            mode=envelope.MODE_MANAGED_KEY, key_name=key_name, key_version=version
        )
        return key, header, where

    def _current_key(self, name: str) -> tuple[int, bytes, str]:
        """The current version of managed key ``name`` and its bytes; version 0 when the
        key comes from a source without versions (environment, dev default, KV v1)."""
        primary = self._primary
        if isinstance(primary, VersionedSecretBackend):
            where = primary.locate(name)
            found = self._latest_versioned(primary, name)
            if found is not None:
                version, material = found
                return version, _key(material, name, where), where
        # Dev defaults are public: nothing encrypted with one would be protected. And an
        # unreachable Vault must not make new data go under an environment key.
        material, where, _ = self._lookup(name, None, None, outage_falls_through=False)
        return 0, _key(material, name, where), where

    def _latest_versioned(
        self, primary: VersionedSecretBackend, name: str
    ) -> tuple[int, Any] | None:
        """``(version, material)`` of the latest version, cached under ``(name, 0)``;
        ``None`` if the primary has no version of it (or keeps none)."""
        key = (name, 0)
        entry = self._cache.fresh(key)
        counts = self._counts.mine()
        if entry is not None:
            counts[HITS] += 1
            return None if entry.value is ABSENT else entry.value
        counts[MISSES] += 1

        def load() -> object:
            self._counts.mine()[BACKEND_READS] += 1
            found = primary.get_latest(name)
            return ABSENT if found is None else (found[1], found[0])

        try:
            value, _ = self._cache.load(key, load)
        except UnsupportedOperationError:
            return None  # a KV v1 mount: the key has no versions
        except VaultUnavailableError as exc:
            # Never fall back to another source's key for new data: a stale copy of the
            # current version is still the right key; an environment key may not be.
            stale = self._cache.stale(key)
            if stale is None or stale.value is ABSENT:
                raise
            self._serve_stale(name, exc, stale)
            return stale.value  # type: ignore[no-any-return]
        return None if value is ABSENT else value

    def _opening(self, header: envelope.Header) -> tuple[bytes, str]:
        """The key a header names, and where it came from. A header is untrusted input:
        its name is checked before any lookup, dev defaults are never used, and material
        that is not a key is refused as opaquely as a bad tag (no length is reported)."""
        name = header.key_name
        try:
            validate_name(name)
        except ValueError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None
        try:
            if header.mode == envelope.MODE_TRANSIT:
                if "/" in name:
                    raise InvalidCiphertextError(envelope.OPAQUE)
                wrapped = header.wrapped_key.decode("ascii", errors="replace")
                material: Any = self.transit.decrypt(name, wrapped)
                where = f"vault:{self.transit.mount}/keys/{name}"
            elif header.key_version == 0:
                material, where, _ = self._lookup(name, None, None, outage_falls_through=False)
            else:
                material, where, _ = self._read_version(name, header.key_version)
        except UnsupportedOperationError:
            # A version, or Transit, that this manager's sources cannot hold.
            kind = "Transit" if header.mode == envelope.MODE_TRANSIT else "versioned"
            raise SecretNotFoundError(
                name, [], detail=f"the message needs a {kind} key this manager has no store for"
            ) from None
        try:
            return _key(material, name, where), where
        except KeyFormatError:
            raise InvalidCiphertextError(envelope.OPAQUE) from None

    @staticmethod
    def _target(
        header: envelope.Header, key_name: str | None, transit_key: str | None
    ) -> tuple[str, str | None]:
        """The key a re-encryption uses: the one asked for, else the message's own."""
        if key_name is not None or transit_key is not None:
            return key_name or DEFAULT_KEY, transit_key
        if header.mode == envelope.MODE_TRANSIT:
            return DEFAULT_KEY, header.key_name
        return header.key_name, None


def _key(material: object, name: str, where: str) -> bytes:
    described = f"key {name!r} from {where}"
    key = key_from_material(material, described=described)
    if len(key) < MIN_KEY_BYTES:
        raise KeyFormatError(
            f"{described} is {len(key)} bytes long; encryption needs at least "
            f"{MIN_KEY_BYTES} (32 recommended)"
        )
    return key
