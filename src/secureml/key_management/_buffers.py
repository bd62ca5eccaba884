"""Fresh ``bytes`` filled in place, and work split across threads.

A large ``encrypt`` must return ``bytes``. Joining segment outputs copies everything into a
new object whose pages fault on first touch, which on some machines costs more than the
encryption itself. CPython's C API makes a ``bytes`` object with room for ``size`` bytes
that its creator fills before anyone else sees it (``PyBytes_FromStringAndSize(NULL,
size)``); here AES-GCM writes straight into it, from several threads (the cipher releases
the GIL). Elsewhere, or if ctypes is unavailable, a ``bytearray`` is filled and copied.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["filled_bytes", "in_parallel"]

_new_bytes: Any = None
if sys.implementation.name == "cpython":  # pragma: no branch
    try:
        import ctypes

        _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
        _new_bytes.restype = ctypes.py_object
        _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        # The data follows the header: ob_sval is the struct's last member.
        _DATA_OFFSET = bytes.__basicsize__ - 1
    except (ImportError, AttributeError):  # pragma: no cover - exotic builds
        _new_bytes = None

#: Threads for one large call: the cipher scales with cores, and more than a few only
#: contend for memory bandwidth.
WORKERS = max(1, min(4, os.cpu_count() or 1))


def filled_bytes(size: int, fill: Callable[[memoryview], None]) -> bytes:
    """A new ``bytes`` of ``size`` whose content ``fill`` writes into the view it gets.
    ``fill`` must write every byte; the object is not visible to anyone until it
    returns. If ``fill`` fails, the buffer is zeroed before the error propagates: views
    of it may live on in the traceback, and must not show plaintext that failed to
    authenticate, nor uninitialised memory."""
    if _new_bytes is None or size == 0:
        buffer = bytearray(size)
        try:
            fill(memoryview(buffer))
        except BaseException:
            buffer[:] = bytes(size)
            raise
        return bytes(buffer)
    import ctypes

    result: bytes = _new_bytes(None, size)
    area = (ctypes.c_char * size).from_address(id(result) + _DATA_OFFSET)
    # Every view of the area keeps the area alive; the area keeps the bytes object (and
    # so the memory the views point into) alive.
    area._owner = result  # type: ignore[attr-defined]
    try:
        fill(memoryview(area).cast("B"))
    except BaseException:
        ctypes.memset(area, 0, size)
        raise
    return result


def in_parallel(count: int, work: Callable[[int, int], None], *, minimum: int = 8) -> None:
    """Run ``work(start, stop)`` over ``range(count)`` split into contiguous runs, on up to
    :data:`WORKERS` threads (this one included); small jobs stay on this thread. Every
    run has ended when this returns or raises (its buffers may be freed then); the
    first error a run raised is raised here."""
    workers = min(WORKERS, count // minimum) if count >= 2 * minimum else 1
    if workers <= 1:
        work(0, count)
        return
    bounds = [count * i // workers for i in range(workers + 1)]
    errors: list[BaseException] = []

    def run(start: int, stop: int) -> None:
        try:
            work(start, stop)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    started: list[threading.Thread] = []
    try:
        for i in range(1, workers):
            thread = threading.Thread(target=run, args=(bounds[i], bounds[i + 1]), daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: do that run here
                run(bounds[i], bounds[i + 1])
            else:
                started.append(thread)
        run(bounds[0], bounds[1])
    finally:
        for thread in started:
            while thread.is_alive():  # even if interrupted: they write into our buffers
                try:
                    thread.join()
                except BaseException as exc:
                    errors.append(exc)
    if errors:
        raise errors[0]
