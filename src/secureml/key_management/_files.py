"""Output files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

__all__ = ["PathLike", "atomic_output"]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_output(dst: PathLike, *, durable: bool = False) -> Iterator[IO[bytes]]:
    """A file to write that becomes ``dst`` only if the ``with`` block succeeds.

    The data goes to a temporary file beside ``dst`` (mode 0600, so plaintext is never
    readable by others while it is written), which replaces ``dst`` at the end; an error
    or an interrupt discards it, so ``dst`` never holds partial output.

    On Linux the temporary file has no name (``O_TMPFILE``) until the data is complete,
    so even a process killed outright (``SIGKILL``, a crash, the OOM killer) leaves
    nothing behind: the kernel frees the file with the last descriptor. Only the final
    two steps (a hard link to a short hidden name, renamed over ``dst`` at once) leave
    a window in which a kill leaves that complete hidden file. Elsewhere, or on a file
    system without ``O_TMPFILE`` (or where the unnamed file cannot be linked), it is a
    hidden ``.NAME.XXXX.part`` file, which a ``SIGKILL`` mid-write leaves behind.

    Args:
        dst: The file to write: a new or regular file. A special file (``/dev/null``, a
            pipe, a terminal, a symlink to one) is refused, as replacing it with a
            regular file of output is never what was meant; write to it as a stream.
        durable: Flush the data to disk before the rename, and the rename after it:
            pass ``True`` when a crash must not lose ``dst`` (e.g. its source is
            deleted next).

    Raises:
        ValueError: ``dst`` is a special file.

    Example:
        >>> with atomic_output("report.bin") as out:      # doctest: +SKIP
        ...     out.write(b"all or nothing")
    """
    target = Path(dst)
    _refuse_special(target)
    unnamed = _open_unnamed(target.parent)
    output = (
        _named_output(target, durable, os.getpid())
        if unnamed is None
        else _unnamed_output(target, unnamed, durable, os.getpid())
    )
    with output as out:
        yield out


def _require_owner(owner: int) -> None:
    """A process forked inside the ``with`` block shares the file: only the one that
    opened it may publish it (a child's half-written output must never become dst)."""
    if os.getpid() != owner:
        raise RuntimeError(
            "atomic_output: a process forked inside the with block cannot publish its "
            "parent's output; only the process that opened it can"
        )


@contextlib.contextmanager
def _named_output(target: Path, durable: bool, owner: int) -> Iterator[IO[bytes]]:
    """The portable way: a hidden named temporary, renamed over ``target``."""
    # The temporary name keeps a short stem of the destination's, so a destination name
    # up to the file system's limit still works.
    stem = os.fsencode(target.name)[:64].decode("utf-8", "ignore") or "out"
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            yield out
            _require_owner(owner)
            if durable:
                os.fsync(out.fileno())
        os.replace(temporary, target)
        if durable:
            _sync_directory(target.parent)
    except BaseException:
        if os.getpid() == owner:  # a forked child leaves its parent's file alone
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise


# --- Linux: an unnamed temporary (O_TMPFILE), named only once complete ---------------

# Links an open file (fd) into a folder (dirfd) under a new name, or raises OSError.
_Linker = Callable[[int, int, str], None]


class _Unnamed(NamedTuple):
    fd: int  # the unnamed file, open for writing
    dirfd: int  # its folder: linked into, renamed in and synced through this descriptor
    link: _Linker


@contextlib.contextmanager
def _unnamed_output(
    target: Path, unnamed: _Unnamed, durable: bool, owner: int
) -> Iterator[IO[bytes]]:
    fd, dirfd, link = unnamed
    try:
        # An error or an interrupt needs no clean-up here: closing the file frees it.
        with os.fdopen(fd, "wb", buffering=0) as out:
            yield out
            _require_owner(owner)
            if durable:
                os.fsync(fd)
            _publish(fd, dirfd, target.name, link)  # the name must come while fd is open
        if durable:
            _fsync_quietly(dirfd)
    finally:
        os.close(dirfd)


def _publish(fd: int, dirfd: int, name: str, link: _Linker) -> None:
    """Give the complete unnamed file ``name`` in one step, replacing any file there."""
    # linkat never replaces an existing name, so link to a fresh one and rename that.
    temporary = _link_fresh(fd, dirfd, link)
    try:
        os.replace(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dirfd)
        raise


def _link_fresh(fd: int, dirfd: int, link: _Linker) -> str:
    """Link ``fd`` into ``dirfd`` under a new random hidden name, and return the name."""
    # Short, whatever the destination's length, so a 255-byte destination name works.
    for _ in range(16):  # 64 random bits: a taken name is a freak, a second one more so
        temporary = f".{secrets.token_hex(8)}.part"
        try:
            link(fd, dirfd, temporary)
        except FileExistsError:
            continue
        return temporary
    raise FileExistsError(errno.EEXIST, "no free temporary name", temporary)


def _link_via_proc(fd: int, dirfd: int, name: str) -> None:
    """The unprivileged way: ``linkat`` following the ``/proc/self/fd`` magic link."""
    # ``os.link`` calls linkat(..., AT_SYMLINK_FOLLOW) only when given a dir_fd; without
    # one it calls link(2), which on Linux never follows a symlink, so it would try to
    # link the /proc entry itself and fail with EXDEV (CPython gh-81793, until 3.14).
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dirfd, follow_symlinks=True)


_AT_EMPTY_PATH = 0x1000  # <fcntl.h> on Linux; the os module does not export it


def _link_empty_path(fd: int, dirfd: int, name: str) -> None:
    """``linkat(fd, "", dirfd, name, AT_EMPTY_PATH)``, for when ``/proc`` is not mounted.

    The kernel allows it only with CAP_DAC_READ_SEARCH; without, it fails with ENOENT.
    """
    import ctypes  # only here: most processes never need it

    if _libc_linkat()(fd, b"", dirfd, os.fsencode(name), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)


@functools.lru_cache(maxsize=1)
def _libc_linkat() -> Callable[[int, bytes, int, bytes, int], int]:
    import ctypes

    try:
        linkat = ctypes.CDLL(None, use_errno=True).linkat
    except AttributeError:  # pragma: no cover - a C library without linkat
        raise OSError(errno.ENOSYS, "the C library has no linkat") from None
    linkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    linkat.restype = ctypes.c_int
    return linkat


_LINKERS: tuple[_Linker, ...] = (_link_via_proc, _link_empty_path)

# Errors meaning "this kernel or file system cannot do it", not "this call failed", so
# the verdict is kept for the device: EISDIR and ENOENT are what kernels without
# O_TMPFILE return (the flag includes O_DIRECTORY), EOPNOTSUPP a file system without it;
# a refused link is EXDEV, ENOENT (no /proc; AT_EMPTY_PATH without the capability) or
# EPERM (a file system without hard links).
_UNSUPPORTED = frozenset(
    (
        errno.EOPNOTSUPP,
        errno.EISDIR,
        errno.EINVAL,
        errno.ENOENT,
        errno.ENOSYS,
        errno.EXDEV,
        errno.EPERM,
    )
)

# st_dev -> the linker that works there, or None for "use a named temporary". Probed on
# the first output to a device, so later outputs pay nothing for the fallback. No lock:
# a dict's get and setdefault are atomic, and a lock could be inherited held by a fork.
_linker_by_device: dict[int, _Linker | None] = {}
_UNPROBED = object()


def _open_unnamed(folder: Path) -> _Unnamed | None:
    """An unnamed temporary file in ``folder``, or None where the platform has none."""
    if sys.platform != "linux":
        return None
    link = _linker_for(folder)
    if link is None:
        return None
    try:
        dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # the named way raises what it always raised
        return None
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dirfd)
    except OSError:  # e.g. a folder not writable: the named way reports it as before
        os.close(dirfd)
        return None
    return _Unnamed(fd, dirfd, link)


def _linker_for(folder: Path) -> _Linker | None:
    """How to name an unnamed file on ``folder``'s device; None: use a named one."""
    try:
        device = os.stat(folder).st_dev
    except OSError:
        return None
    known = _linker_by_device.get(device, _UNPROBED)
    if known is not _UNPROBED:
        return known  # type: ignore[return-value]
    # Two threads may probe one device at once: harmless, the first verdict stays.
    try:
        link = _probe(folder)
    except OSError:  # a failure of this folder (e.g. read-only), not of the device
        return None
    return _linker_by_device.setdefault(device, link)


def _probe(folder: Path) -> _Linker | None:
    """The first linker that names an (empty) unnamed file in ``folder``, or None.

    The name exists for an instant only; a kill then leaves an empty file, no data.

    Raises:
        OSError: the probe failed for a reason that says nothing about the device.
    """
    if sys.platform != "linux":  # O_TMPFILE is Linux's alone
        return None
    dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dirfd)
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                return None
            raise
        try:
            return _first_working_linker(fd, dirfd)
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def _first_working_linker(fd: int, dirfd: int) -> _Linker | None:
    failures: list[OSError] = []
    for link in _LINKERS:
        try:
            name = _link_fresh(fd, dirfd, link)
        except OSError as error:
            failures.append(error)
            continue
        with contextlib.suppress(OSError):  # an empty file: nothing to protect
            os.unlink(name, dir_fd=dirfd)
        return link
    unexpected = [error for error in failures if error.errno not in _UNSUPPORTED]
    if unexpected:  # e.g. ENOSPC: no verdict on the device, ask again next time
        raise unexpected[0]
    return None


# --- shared -----------------------------------------------------------------------------


def _refuse_special(target: Path) -> None:
    try:
        mode = os.stat(target).st_mode  # through symlinks: what a write would reach
    except FileNotFoundError:
        return
    except OSError:  # e.g. a dangling symlink's loop: let the write report it
        return
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{str(target)[:200]!r} is not a regular file (a directory, device, pipe or "
            "socket): "
            "it would be replaced by a file of output; write to it as a stream instead"
        )


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        _fsync_quietly(fd)
    finally:
        os.close(fd)


def _fsync_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to sync a folder
        os.fsync(fd)
