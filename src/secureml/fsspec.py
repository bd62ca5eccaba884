"""An fsspec filesystem, protocol ``secureml``, that encrypts what is written through it
and decrypts what is read, chained over any other fsspec filesystem.

``secureml::`` goes in front of any fsspec URL (``secureml::file:///data/t.parquet``,
``secureml::memory://t.parquet``, ``secureml::s3://bucket/t.parquet`` where s3fs is
installed). Files are stored in the secureml format (``docs/FORMAT.md``): the target
only ever holds ciphertext. Reads decrypt only the segments they touch, so pyarrow and
pandas read one column of an encrypted Parquet file without reading the rest; listings
report the plaintext's size. fsspec finds the protocol through its entry point (no
import needed), so URLs work wherever fsspec takes them:

Example:
    >>> df.to_parquet(                                                 # doctest: +SKIP
    ...     "secureml::s3://bucket/users.parquet",
    ...     storage_options={"secureml": {"key_name": "datasets/key"}},
    ... )
    >>> pd.read_parquet("secureml::s3://bucket/users.parquet", columns=["age"])  # doctest: +SKIP

The key a file was written with is named in its header, so reading needs no
``key_name``; the manager is :func:`~secureml.key_management.get_default_key_manager`
unless one is given (``storage_options={"secureml": {"manager": km}}``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NoReturn, cast

try:
    from fsspec import filesystem as _filesystem  # type: ignore[import-untyped]
    from fsspec.implementations.chained import (  # type: ignore[import-untyped]
        ChainedFileSystem,
    )
    from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]
    from fsspec.implementations.memory import MemoryFileSystem  # type: ignore[import-untyped]
    from fsspec.spec import (  # type: ignore[import-untyped]
        AbstractBufferedFile,
        AbstractFileSystem,
    )
    from fsspec.utils import tokenize  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - the extra is missing, or fsspec is too old
    raise ImportError(
        "secureml.fsspec needs fsspec 2025.10 or later (its chained filesystems): "
        "pip install 'secureml[fsspec]'"
    ) from None

from .key_management import (
    ConfigurationError,
    KeyManager,
    KeyManagerSpec,
    get_default_key_manager,
)
from .key_management import _envelope as envelope
from .key_management._boundary import guarded
from .key_management._validate import check_aad, check_segment_size
from .key_management.errors import InvalidCiphertextError

__all__ = ["HEAD_BYTES", "SecureMLFileSystem", "plaintext_size"]

#: The most bytes a secureml header and its key commitment take (a Transit header with
#: the longest key name and wrapped key): a listing reads this much of each file, at
#: most, to learn the plaintext's size.
HEAD_BYTES = (
    envelope._FIXED.size
    + envelope.MAX_NAME_BYTES
    + envelope._U16.size
    + envelope.MAX_WRAPPED_BYTES
    + envelope.SALT_BYTES
    + envelope.PREFIX_BYTES
    + envelope.COMMITMENT_BYTES
)

#: The buffer of a file opened for reading: reads this small or smaller (Parquet's
#: footer, pickle's opcodes) are served from it, larger ones go to the decrypted
#: segments (the reader keeps a few) without a copy more.
_READ_BUFFER_BYTES = 64 << 10

#: The options :class:`fsspec.AbstractFileSystem` itself takes (its listings cache).
_BASE_OPTIONS = frozenset({"use_listings_cache", "listings_expiry_time", "max_paths"})


def plaintext_size(head: bytes, stored_size: int) -> int | None:
    """The plaintext's size of a secureml message of ``stored_size`` bytes whose first
    bytes are ``head`` (:data:`HEAD_BYTES` of them, or all of a shorter file); ``None``
    when they are not the start of a secureml message of that size (another file,
    garbage, or a message cut short).

    Nothing is authenticated here (no key is used): the size is what the header and the
    length say, which opening the file then proves. Never raises on hostile input.
    """
    try:
        header, start = envelope.parse_header(head)
    except InvalidCiphertextError:
        return None
    body = stored_size - start
    step = header.segment_bytes + envelope.TAG_BYTES
    count = max(1, -(-body // step))
    last = body - (count - 1) * step
    if last < envelope.TAG_BYTES or count > envelope.MAX_SEGMENTS:
        return None  # no room for the last segment's tag: cut short, or not ours
    return body - count * envelope.TAG_BYTES


class SecureMLFileSystem(ChainedFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """A filesystem that stores files encrypted on another fsspec filesystem (the
    *target*) and hands out their plaintext: ``secureml::`` in front of its URL.

    Paths are the target's. Files are opened ``"rb"`` or ``"wb"`` (and ``"r"``/``"w"``:
    fsspec puts text on top); appending or updating an encrypted file is refused.

    - **Reading** returns a seekable binary file that decrypts only the segments a read
      touches (see ``KeyManager.open_encrypted``): the key, the ``aad`` and the size are
      proven when it opens, so a file that is not secureml's, cut short, or written
      with another key or ``aad`` raises
      :class:`~secureml.key_management.errors.InvalidCiphertextError` there; a
      tampered segment raises it when it is read.
      Closing it closes the target's file.
    - **Writing** encrypts as it goes under ``key_name`` and is all or nothing: the
      file appears only when it is closed after a clean write. An error in its ``with``
      block, a close while an exception raised since it was opened propagates (``with
      fsspec.open(...)`` closes its file whatever happened; so does pyarrow after a
      failed write), an earlier write that failed, or the file dropped unclosed, leaves
      no file (and an existing one as it was). On a local target the file is made
      beside the destination and renamed over it; on targets whose files stage their
      data (``autocommit=False``: fsspec's local files, and the ``AbstractBufferedFile``
      of s3fs, gcsfs, adlfs and most others) it is committed or discarded; in
      ``memory://`` it is kept aside until then. A target whose files do neither is
      written in place and the file removed after a failure. Inside the filesystem's
      ``transaction``, files are committed when it ends, as fsspec's are.
    - **Listings** (``ls``, ``info``, ``find``, ``glob``, ``walk``, and so ``size``,
      ``du``) are the target's, with each file's ``size`` its plaintext's, read from
      the first bytes of the file (one ranged read each, at most :data:`HEAD_BYTES`;
      concurrent where the target is asynchronous). Each file's entry also says
      ``"encrypted"``: ``True`` for a file that begins as a secureml message and whose
      length fits one (``"stored_size"`` then holds its stored size), ``False`` for a
      file that does not (another file, garbage, one cut inside its header: it keeps
      its stored size), ``None`` when its first bytes could not be read. The size is
      what the header and the length say, not authenticated (no key is used): opening
      the file proves it, and refuses a file cut short, extended or altered, and one
      that is not a secureml message, with ``InvalidCiphertextError``. Nothing else is
      read: a listing never shows plaintext.
    - ``exists``, ``isfile``, ``isdir``, ``rm``, ``mkdir``, ``makedirs``, ``rmdir``,
      ``mv``, ``copy`` and ``cp_file`` are the target's: a copy is the ciphertext as it
      is, which opens with the same key and ``aad`` (no path is bound into a file).

    It pickles (Dask, Ray and Spark send filesystems to their workers): a
    :class:`~secureml.key_management.KeyManager` given as ``manager`` goes as its
    :meth:`~secureml.key_management.KeyManager.spec`, and each worker uses that spec's
    manager; no token or key is in the pickle. Instances are not shared between calls
    (fsspec's instance cache is off: its key is made of the options' ``repr``, which
    two managers with different credentials can share).

    Args:
        manager: The manager whose keys encrypt and decrypt: a
            :class:`~secureml.key_management.KeyManager`, a
            :class:`~secureml.key_management.KeyManagerSpec` (its process's manager is
            used), or ``None`` for
            :func:`~secureml.key_management.get_default_key_manager`, looked up when a
            file is first opened (so a URL alone works).
        key_name: The managed key files are written with (reading needs none: each file
            names its key). Writing without it is refused.
        aad: Associated data bound into every file written, and required to read them.
        segment_size: Plaintext bytes per segment of the files written, 64 KiB to 4 MiB
            (``None``: 1 MiB). Smaller segments make small random reads (one Parquet
            column of a few pages) decrypt less, at a little more space and time.
        target_protocol: The target filesystem's protocol (a chained URL sets it).
        target_options: The target filesystem's options (a chained URL sets them: in
            ``storage_options``, under the target's protocol, e.g. ``{"s3": {...}}``).
        fs: The target filesystem itself, instead of ``target_protocol``.
        fo: The path a chained URL passes along; unused (paths are given to each call).
        **kwargs: fsspec's own options (``use_listings_cache`` and the like); any
            other name is refused, so that a misspelt ``aad`` cannot go unnoticed.

    Raises:
        ValueError: Neither or both of ``target_protocol`` and ``fs`` are given.
        TypeError: An option of a wrong type, or an unknown option.

    Example:
        >>> fs = SecureMLFileSystem(                                   # doctest: +SKIP
        ...     target_protocol="file", key_name="datasets/key", manager=km
        ... )
        >>> with fs.open("/data/t.bin", "wb") as f:                    # doctest: +SKIP
        ...     f.write(b"plaintext")
        >>> fs.cat_file("/data/t.bin")                                 # doctest: +SKIP
        b'plaintext'
    """

    protocol = "secureml"
    # A chained URL passes the target's path as ``fo``: not part of the instance.
    _strip_tokenize_options = ("fo",)
    # fsspec would cache instances by the options' repr: two managers (or specs with
    # different hooks) can print alike, and must never share a filesystem.
    cachable = False

    def __init__(
        self,
        *,
        manager: KeyManager | KeyManagerSpec | None = None,
        key_name: str | None = None,
        aad: bytes = b"",
        segment_size: int | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: Any = None,
        fo: str | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _BASE_OPTIONS)
        if unknown:
            raise TypeError(
                f"SecureMLFileSystem has no option {unknown[0]!r} (its options: manager, "
                f"key_name, aad, segment_size; the target's own go under its protocol, "
                f'e.g. storage_options={{"s3": {{...}}}})'
            )
        if manager is not None and not isinstance(manager, (KeyManager, KeyManagerSpec)):
            raise TypeError(
                f"manager must be a KeyManager, a KeyManagerSpec or None, "
                f"not {type(manager).__name__}"
            )
        if key_name is not None and (not isinstance(key_name, str) or not key_name):
            raise TypeError("key_name must be a non-empty str (a managed key's name) or None")
        if fs is None and target_protocol is None:
            raise ValueError(
                "secureml:: is chained over another filesystem: secureml::file:///path, "
                "secureml::s3://bucket/path; or pass target_protocol= or fs="
            )
        if fs is not None and target_protocol is not None:
            raise ValueError("pass the target filesystem (fs=) or its protocol, not both")
        super().__init__(**kwargs)
        self.aad = check_aad(aad)  # checked now: a wrong type fails here, not mid-job
        check_segment_size(segment_size)
        self.key_name = key_name
        self.segment_size = segment_size
        self._manager = manager
        self.fs = fs if fs is not None else _filesystem(target_protocol, **(target_options or {}))
        self.target_protocol = (
            target_protocol
            if target_protocol is not None
            else (self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0])
        )
        del fo  # the path of the URL: each call names its own

        own = super(SecureMLFileSystem, type(self))._strip_protocol  # secureml:// off

        def strip(path: Any) -> Any:  # as fsspec's cached filesystems: per instance
            if isinstance(path, list):
                return [strip(p) for p in path]
            return self.fs._strip_protocol(own(path))

        self._strip_protocol = strip

    # -- identity --------------------------------------------------------------------

    @property
    def manager(self) -> KeyManager:
        """The manager files are encrypted and decrypted with (resolved at each use:
        a spec's or the default manager is this process's)."""
        manager = self._manager
        if manager is None:
            return get_default_key_manager()
        if isinstance(manager, KeyManagerSpec):
            return manager.manager()
        return manager

    @property
    def _fs_token(self) -> str:
        # fsspec's token is made of the options' repr: a manager (or a spec: two that
        # differ only in their audit hook print alike) is told apart by itself.
        token: str = super()._fs_token
        if self._manager is not None:
            return cast(str, tokenize(token, id(self._manager)))
        return token

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as fsspec does (the class and its options), with a manager given as
        ``manager`` sent as its spec: the pickle holds no token or key."""
        factory, (cls, args, options) = super().__reduce__()
        options = dict(options)
        if isinstance(options.get("manager"), KeyManager):
            options["manager"] = options["manager"].spec()
        return factory, (cls, args, options)

    def __repr__(self) -> str:
        return f"SecureMLFileSystem(target={self.target_protocol!r}, key_name={self.key_name!r})"

    # -- files -----------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BinaryIO:
        """The file at ``path`` (the target's path), decrypted for ``"rb"``, encrypted
        as written for ``"wb"``; other keywords go to the target's ``open``."""
        path = self._strip_protocol(path)
        if mode == "rb":
            return self._open_reading(path, block_size, cache_options, kwargs)
        if mode == "wb":
            return self._open_writing(path, block_size, autocommit, cache_options, kwargs)
        raise ValueError(
            f"a secureml:: file opens 'rb' or 'wb' (text: 'r', 'w'), not {mode!r}: an "
            f"encrypted file is written whole (its last segment is sealed as the last)"
        )

    def _open_reading(
        self,
        path: str,
        block_size: int | None,
        cache_options: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> BinaryIO:
        manager = self.manager
        if isinstance(self.fs, MemoryFileSystem):
            # memory:// hands out the stored BytesIO itself, one position for every
            # reader of it: each reader gets its own view instead.
            raw: Any = io.BytesIO(self.fs.cat_file(path))
        else:
            raw = self.fs.open(
                path, "rb", block_size=block_size, cache_options=cache_options, **kwargs
            )
        try:
            reader = manager.open_encrypted(raw, aad=self.aad)
        except BaseException:
            raw.close()
            raise
        return cast(BinaryIO, _DecryptingFile(reader, raw, self, path))

    def _open_writing(
        self,
        path: str,
        block_size: int | None,
        autocommit: bool,
        cache_options: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> BinaryIO:
        if self.key_name is None:
            raise ConfigurationError(
                "writing through secureml:: needs the key to encrypt with: pass key_name, "
                'e.g. storage_options={"secureml": {"key_name": "datasets/key"}}'
            )
        manager = self.manager
        sink = self._sink(path, block_size, autocommit, cache_options, kwargs)
        try:
            writer = manager.open_encrypting(
                sink.target, self.key_name, aad=self.aad, segment_size=self.segment_size
            )
        except BaseException:
            sink.discard()
            raise
        return cast(BinaryIO, _EncryptingFile(writer, sink, self, path, autocommit=autocommit))

    def _sink(
        self,
        path: str,
        block_size: int | None,
        autocommit: bool,
        cache_options: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> _Sink:
        """Where a file written to ``path`` goes until it is committed."""
        target = self.fs
        if isinstance(target, LocalFileSystem) and autocommit:
            if target.auto_mkdir:
                target.makedirs(target._parent(path), exist_ok=True)
            return _Sink(path)  # made beside it and renamed over it by the writer
        if isinstance(target, MemoryFileSystem):
            # Its files appear when opened and ignore autocommit: kept aside until then.
            buffer = io.BytesIO()
            return _Sink(
                buffer, commit=lambda: target.pipe_file(path, buffer.getvalue()), drop=buffer.close
            )
        # Not open(), which would enlist it in the target's transaction; unless the
        # target opens files only there (a DirFileSystem: its _open is the base's).
        opener = target._open if type(target)._open is not AbstractFileSystem._open else target.open
        file = opener(
            path,
            mode="wb",
            block_size=block_size,
            autocommit=False,
            cache_options=cache_options,
            **kwargs,
        )
        if (
            isinstance(file, AbstractBufferedFile)
            and type(file)._upload_chunk is AbstractBufferedFile._upload_chunk
        ):
            file.close = lambda: None  # its upload is the base class's: nothing to close
            raise ValueError(
                f"{type(target).__name__} cannot write files (it opened a file that "
                "uploads nothing): secureml:: needs a target that can"
            )
        staged = (
            getattr(file, "autocommit", True) is False
            and callable(getattr(file, "commit", None))
            and callable(getattr(file, "discard", None))
        )
        if staged:
            return _Sink(file, close=file.close, commit=file.commit, drop=file.discard)

        def remove() -> None:
            with contextlib.suppress(OSError):
                target.rm_file(path)

        return _Sink(file, close=file.close, drop=remove)

    # -- listings --------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        """The target's listing of ``path``, each file's size its plaintext's."""
        listing = self.fs.ls(self._strip_protocol(path), detail=detail, **kwargs)
        return self._sized(listing) if detail else listing

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The target's details of ``path``, a file's size its plaintext's."""
        found: dict[str, Any] = self.fs.info(self._strip_protocol(path), **kwargs)
        return self._sized([found])[0]

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The target's ``find``, each file's size its plaintext's."""
        found = self.fs.find(
            self._strip_protocol(path),
            maxdepth=maxdepth,
            withdirs=withdirs,
            detail=detail,
            **kwargs,
        )
        return self._sized_dict(found) if detail else found

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        """The target's ``glob``, each file's size its plaintext's."""
        found = self.fs.glob(self._strip_protocol(path), maxdepth=maxdepth, **kwargs)
        return self._sized_dict(found) if kwargs.get("detail") else found

    def walk(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Iterator[Any]:
        """The target's ``walk``, each file's size its plaintext's (pruning ``dirs``
        in a top-down walk works as there)."""
        for root, dirs, files in self.fs.walk(self._strip_protocol(path), maxdepth, **kwargs):
            if isinstance(files, dict):
                files.update(self._sized_dict(files))  # walk's own dict: pruning still works
            yield root, dirs, files

    def _sized_dict(self, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return dict(zip(found, self._sized(list(found.values())), strict=True))

    def _sized(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` with each file's size its plaintext's: copies, never the
        target's own (they may be its cached listing)."""
        files = [i for i, entry in enumerate(entries) if entry.get("type") == "file"]
        if not files:
            return entries
        names = [entries[i]["name"] for i in files]
        heads = self.fs.cat_ranges(
            names, [0] * len(names), [HEAD_BYTES] * len(names), on_error="return"
        )
        out = list(entries)
        for i, head in zip(files, heads, strict=True):
            entry = dict(entries[i])
            stored = entry.get("size")
            if isinstance(head, Exception) or not isinstance(stored, int):
                entry["encrypted"] = None  # could not look: left as the target says
            else:
                plain = plaintext_size(bytes(head), stored)
                entry["encrypted"] = plain is not None
                if plain is not None:
                    entry["stored_size"] = stored
                    entry["size"] = plain
            out[i] = entry
        return out

    # -- the target's own ------------------------------------------------------------

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether ``path`` exists on the target."""
        return bool(self.fs.exists(self._strip_protocol(path), **kwargs))

    def isfile(self, path: str) -> bool:
        """Whether ``path`` is a file on the target (whatever it holds)."""
        return bool(self.fs.isfile(self._strip_protocol(path)))

    def isdir(self, path: str) -> bool:
        """Whether ``path`` is a directory on the target."""
        return bool(self.fs.isdir(self._strip_protocol(path)))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete ``path`` (a list of paths, a directory tree) on the target."""
        self.fs.rm(self._strip_protocol(path), recursive=recursive, maxdepth=maxdepth)

    def rm_file(self, path: str) -> None:
        """Delete the file ``path`` on the target."""
        self.fs.rm_file(self._strip_protocol(path))

    def rmdir(self, path: str) -> None:
        """Delete the empty directory ``path`` on the target."""
        self.fs.rmdir(self._strip_protocol(path))

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Make the directory ``path`` on the target."""
        self.fs.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Make the directory ``path`` and its parents on the target."""
        self.fs.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mv(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        """Move files on the target: ciphertext as it is (it opens as before)."""
        self.fs.mv(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)

    def copy(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        """Copy files on the target: ciphertext as it is (same key and ``aad``)."""
        self.fs.copy(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy one file on the target: ciphertext as it is (same key and ``aad``)."""
        self.fs.cp_file(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)

    def modified(self, path: str) -> Any:
        """When the file ``path`` was last written, as the target says."""
        return self.fs.modified(self._strip_protocol(path))

    def created(self, path: str) -> Any:
        """When the file ``path`` was made, as the target says."""
        return self.fs.created(self._strip_protocol(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        """Drop the target's cached listings (of ``path``, or all)."""
        self.fs.invalidate_cache(None if path is None else self._strip_protocol(path))


class _DecryptingFile(io.BufferedReader):
    """A file of a :class:`SecureMLFileSystem` opened for reading: the decrypting
    reader, buffered, that closes the target's file with it."""

    def __init__(self, reader: BinaryIO, raw: Any, fs: SecureMLFileSystem, path: str) -> None:
        super().__init__(cast(io.RawIOBase, reader), _READ_BUFFER_BYTES)
        self._target_file = raw
        self.fs = fs
        self.path = path

    @property
    def size(self) -> int:
        """The plaintext's size in bytes (authenticated when the file opened)."""
        return cast(int, getattr(self.raw, "size"))  # noqa: B009 - the reader's, untyped

    @property
    def mode(self) -> str:  # the reader itself has none
        return "rb"

    @property
    def name(self) -> str:
        return self.path

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._target_file.close()

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("an open secureml:: file cannot be pickled: pickle the filesystem")


class _Sink:
    """Where a file being written goes (``target``: a local path, which the writer
    replaces atomically, or a file object), and how it is made final or dropped."""

    def __init__(
        self,
        target: Any,
        *,
        close: Callable[[], object] | None = None,
        commit: Callable[[], object] | None = None,
        drop: Callable[[], object] | None = None,
    ) -> None:
        self.target = target
        self._close = close
        self._commit = commit
        self._drop = drop

    def seal(self) -> None:
        """All the ciphertext is out: close the target's file (not yet committed)."""
        if self._close is not None:
            self._close()

    def commit(self) -> None:
        """Make the file appear."""
        if self._commit is not None:
            self._commit()

    def discard(self) -> None:
        """Leave no file: close the target's file (whatever that raises), drop it."""
        try:
            if self._close is not None:
                with contextlib.suppress(Exception):  # it is dropped: its error is moot
                    self._close()
        finally:
            if self._drop is not None:
                self._drop()


_OPEN, _SEALED, _DONE = "open", "sealed", "done"


_FORKED = (
    "this secureml:: file was opened for writing by another process (this one is a fork "
    "of it): only that process may write or close it"
)
_OPENED_DURING = "_secureml_files_opened_while_handled"


def _mark_handled(token: object) -> None:
    """Mark the exceptions being handled now (and those they arose from) with ``token``."""
    handling = sys.exc_info()[1]
    for _ in range(64):
        if handling is None:
            break
        with contextlib.suppress(AttributeError, TypeError):
            handling.__dict__.setdefault(_OPENED_DURING, set()).add(token)
        handling = handling.__context__


def _marks(exc: BaseException) -> Any:
    return getattr(exc, "__dict__", {}).get(_OPENED_DURING, ())


class _EncryptingFile(io.BufferedIOBase):
    """A file of a :class:`SecureMLFileSystem` opened for writing (see its all or
    nothing rules): the encrypting writer over a :class:`_Sink`, with fsspec's
    ``commit``/``discard`` for transactions."""

    def __init__(
        self,
        writer: Any,
        sink: _Sink,
        fs: SecureMLFileSystem,
        path: str,
        *,
        autocommit: bool,
    ) -> None:
        super().__init__()
        self._writer = writer
        self._sink = sink
        self.fs = fs
        self.path = path
        self.autocommit = autocommit
        self._state = _OPEN
        self._failed = False
        self._lock = threading.RLock()
        self._owner = os.getpid()
        # The exceptions being handled when the file was opened are marked with a token
        # of this file's (no reference to them is kept: it would keep their frames
        # alive); one without it that is propagating when the file is closed was raised
        # later, so the write did not finish. (An id() would be reused by a later one.)
        self._token = object()
        _mark_handled(self._token)

    @property
    def mode(self) -> str:
        return "wb"

    @property
    def name(self) -> str:
        return self.path

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        return cast(int, self._writer.tell())

    @guarded  # a failure's frames held the plaintext being written
    def write(self, data: Any) -> int:
        if os.getpid() != self._owner:
            raise RuntimeError(_FORKED)
        if self._state != _OPEN or self._failed:
            raise ValueError(
                "I/O operation on closed file"
                if self._state != _OPEN
                else "an earlier write failed"
            )
        try:
            return cast(int, self._writer.write(data))
        except BaseException:
            self._failed = True  # a segment may be missing: this must never be committed
            raise

    def close(self) -> None:
        """Finish the file: it appears (at the end of the transaction, if in one),
        unless a write failed or an exception is propagating, which discard it."""
        if os.getpid() != self._owner:
            self._forget()
            raise RuntimeError(_FORKED)
        handling = sys.exc_info()[1]
        if handling is not None and self._token not in _marks(handling):
            self.discard()  # closed on the way out of a failure: not a clean write
            return
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._state == _OPEN:
                if self._failed:
                    self.discard()
                    raise ValueError(
                        "an earlier write to this file failed: it was discarded, not written"
                    )
                try:
                    self._writer.close()  # seals the last segment
                    self._sink.seal()
                except BaseException:
                    self._drop()
                    raise
                self._state = _SEALED
                if self.autocommit:
                    self.commit()
        super().close()

    def commit(self) -> None:
        """Make the file appear (fsspec calls it when a transaction ends)."""
        if os.getpid() != self._owner:
            self._forget()
            raise RuntimeError(_FORKED)
        with self._lock:
            if self._state == _OPEN:
                self._finish()
            if self._state == _SEALED:
                try:
                    self._sink.commit()
                except BaseException:
                    self._drop()
                    raise
                self._state = _DONE

    def discard(self) -> None:
        """Drop what was written: no file appears (an existing one stays as it was)."""
        if os.getpid() != self._owner:
            self._forget()  # a forked child's copy: the output is the parent's
            return
        with self._lock:
            if self._state != _DONE:
                if self._state == _OPEN:
                    self._writer.abort()
                self._drop()
        super().close()

    def _drop(self) -> None:
        self._state = _DONE
        self._sink.discard()

    def _forget(self) -> None:
        """Let go of a parent's file in a forked child, touching neither it nor the lock."""
        self._state = _DONE
        self._writer = None
        with contextlib.suppress(Exception):
            super().close()

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if error is not None:
            self.discard()
        elif os.getpid() != self._owner:
            self._forget()
            raise RuntimeError(_FORKED)
        else:
            self._finish()

    def __del__(self) -> None:
        if getattr(self, "_state", _DONE) != _DONE:
            self.discard()  # dropped unclosed (or sealed, never committed): not written

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("an open secureml:: file cannot be pickled: pickle the filesystem")
