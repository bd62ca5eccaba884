"""Output files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["PathLike", "atomic_output"]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_output(dst: PathLike, *, durable: bool = False) -> Iterator[IO[bytes]]:
    """A file to write that becomes ``dst`` only if the ``with`` block succeeds.

    The data goes to a temporary file beside ``dst`` (mode 0600, so plaintext is never
    readable by others while it is written), renamed over ``dst`` at the end; an error
    or an interrupt removes it, so ``dst`` never holds partial output.

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
    # The temporary name keeps a short stem of the destination's, so a destination name
    # up to the file system's limit still works.
    stem = os.fsencode(target.name)[:64].decode("utf-8", "ignore") or "out"
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=".part")
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
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)
