"""Driving a segmented stream: read a segment, transform it, write the result.

Every segment but the last is exactly ``in_size`` bytes, so a segment is known to be the
last only when the read after it finds the end: the driver always holds one segment
read ahead. :func:`drive` does it on the calling thread; :func:`drive_threaded` reads
and writes on two helper threads while this one transforms (AES-GCM and file I/O both
release the GIL), so reading, the cipher and writing overlap. Buffers are allocated once
and reused: memory stays bounded whatever the stream's length.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["Step", "drive", "drive_threaded"]

#: ``step(index, segment, last, out) -> (bytes written to out, plaintext bytes done)``
Step = Callable[[int, memoryview, bool, memoryview], tuple[int, int]]
Fill = Callable[[bytearray], int]
Write = Callable[[memoryview], None]
Progress = Callable[[int], object]

#: Buffers in flight per direction when threaded.
DEPTH = 3


def drive(
    fill: Fill,
    write: Write,
    step: Step,
    *,
    in_size: int,
    out_size: int,
    progress: Progress | None = None,
) -> int:
    """Run the stream on this thread; return the plaintext bytes done."""
    buffers = (bytearray(in_size), bytearray(in_size))
    out = memoryview(bytearray(out_size))
    count = fill(buffers[0])
    done = index = 0
    while True:
        following = fill(buffers[(index + 1) % 2]) if count == in_size else 0
        last = following == 0
        written, plain = step(index, memoryview(buffers[index % 2])[:count], last, out)
        write(out[:written])
        done += plain
        if progress is not None:
            progress(done)
        if last:
            return done
        count = following
        index += 1


def drive_threaded(
    fill: Fill,
    write: Write,
    step: Step,
    *,
    in_size: int,
    out_size: int,
    progress: Progress | None = None,
) -> int:
    """:func:`drive` with reading and writing on helper threads. For streams whose reads
    always complete (regular files): both helpers are joined before this returns or
    raises, so no thread touches the streams afterwards."""
    pipe = _Pipe(fill, write, in_size, out_size)
    try:
        buffer, count = pipe.take()
        done = index = 0
        while True:
            following = pipe.take() if count == in_size else (None, 0)
            last = following[1] == 0
            out = pipe.output_buffer()
            written, plain = step(index, memoryview(buffer)[:count], last, memoryview(out))
            pipe.emit(out, written)
            pipe.recycle(buffer)
            done += plain
            if progress is not None:
                progress(done)
            if last or following[0] is None:
                pipe.finish()
                return done
            buffer, count = following[0], following[1]
            index += 1
    finally:
        pipe.close()


class _Pipe:
    """The helper threads of :func:`drive_threaded` and the queues between them."""

    def __init__(self, fill: Fill, write: Write, in_size: int, out_size: int) -> None:
        self._fill, self._write, self._in_size = fill, write, in_size
        self._free_in: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[tuple[bytearray, int] | BaseException] = queue.SimpleQueue()
        self._free_out: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._to_write: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        for _ in range(DEPTH):
            self._free_in.put(bytearray(in_size))
            self._free_out.put(bytearray(out_size))
        self._stop = threading.Event()
        self._write_errors: list[BaseException] = []
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._writer = threading.Thread(target=self._write_all, daemon=True)
        self._reader.start()
        try:
            self._writer.start()
        except BaseException:
            self.close()
            raise

    def _read_all(self) -> None:
        try:
            while not self._stop.is_set():
                buffer = self._free_in.get()
                if buffer is None or self._stop.is_set():
                    return
                count = self._fill(buffer)
                self._filled.put((buffer, count))
                if count < self._in_size:
                    return
        except BaseException as exc:  # handed to the driving thread
            self._filled.put(exc)

    def _write_all(self) -> None:
        try:
            while (item := self._to_write.get()) is not None:
                buffer, count = item
                self._write(memoryview(buffer)[:count])
                self._free_out.put(buffer)
        except BaseException as exc:  # handed to the driving thread
            self._write_errors.append(exc)
            self._free_out.put(None)

    def take(self) -> tuple[bytearray, int]:
        """The next filled input buffer (the reader's error, if it failed)."""
        item = self._filled.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def output_buffer(self) -> bytearray:
        out = self._free_out.get()
        if out is None:
            raise self._write_errors[0]
        return out

    def emit(self, out: bytearray, count: int) -> None:
        self._to_write.put((out, count))

    def recycle(self, buffer: bytearray) -> None:
        self._free_in.put(buffer)

    def finish(self) -> None:
        """Wait for everything emitted to be written."""
        self._to_write.put(None)
        self._writer.join()
        if self._write_errors:
            raise self._write_errors[0]

    def close(self) -> None:
        """Stop and join both helpers (idempotent)."""
        self._stop.set()
        self._free_in.put(None)
        self._to_write.put(None)
        self._reader.join()
        if self._writer.ident is not None:
            self._writer.join()
