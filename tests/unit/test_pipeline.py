"""The segment drivers: same output on one thread or three, errors from any thread
raised on the caller's, and no helper thread left behind."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable

import pytest

from secureml.key_management._pipeline import drive, drive_threaded


def upper(index: int, segment: memoryview, last: bool, out: memoryview) -> tuple[int, int]:
    out[: len(segment)] = bytes(segment).upper()
    return len(segment), len(segment)


def filler(data: bytes) -> Callable[[bytearray], int]:
    return io.BytesIO(data).readinto


@pytest.mark.parametrize("driver", [drive, drive_threaded])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64, 65])
def test_same_output_and_lasts(driver, size: int) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(size).hex().encode()[:size]
    out = io.BytesIO()
    lasts: list[bool] = []

    def step(index: int, segment: memoryview, last: bool, target: memoryview) -> tuple[int, int]:
        lasts.append(last)
        return upper(index, segment, last, target)

    done = driver(filler(data), out.write, step, in_size=8, out_size=8)
    assert done == size
    assert out.getvalue() == data.upper()
    assert lasts == [False] * (len(lasts) - 1) + [True]
    assert len(lasts) == max(1, -(-size // 8))


def boom(*_: object) -> None:
    raise OSError("disk on fire")


@pytest.mark.parametrize("where", ["fill", "write", "step"])
def test_errors_reach_the_caller_and_helpers_end(where: str) -> None:
    before = threading.active_count()
    fill = boom if where == "fill" else filler(bytes(100))
    write = boom if where == "write" else io.BytesIO().write
    step = boom if where == "step" else upper
    with pytest.raises(OSError, match="disk on fire"):
        drive_threaded(fill, write, step, in_size=8, out_size=8)  # type: ignore[arg-type]
    assert threading.active_count() == before


def test_failures_mid_stream_and_on_the_last_write() -> None:
    before = threading.active_count()
    calls = {"fill": 0, "write": 0}
    source = io.BytesIO(bytes(100))

    def late_fill(buffer: bytearray) -> int:
        calls["fill"] += 1
        if calls["fill"] == 4:
            raise OSError("read failed late")
        return source.readinto(buffer)

    with pytest.raises(OSError, match="read failed late"):
        drive_threaded(late_fill, io.BytesIO().write, upper, in_size=8, out_size=8)

    def last_write(view: memoryview) -> None:
        calls["write"] += 1
        if calls["write"] == 13:  # 100 bytes in 8-byte segments: the 13th is the last
            raise OSError("disk full at the end")

    with pytest.raises(OSError, match="disk full at the end"):
        drive_threaded(filler(bytes(100)), last_write, upper, in_size=8, out_size=8)
    assert threading.active_count() == before
