"""Output files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
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
        dst: The file to write.
        durable: Flush the data to disk before the rename, and the rename after it:
            pass ``True`` when a crash must not lose ``dst`` (e.g. its source is
            deleted next).

    Example:
        >>> with atomic_output("report.bin") as out:      # doctest: +SKIP
        ...     out.write(b"all or nothing")
    """
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
