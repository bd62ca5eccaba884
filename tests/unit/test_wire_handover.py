"""The async wire's hand-over of a connection to a caller waiting for one: whoever
settles a waiter first (a hand-over or the sweep's timeout) is the one that counts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from secureml.key_management.backends import _vault_aio


def swept(wire: _vault_aio.Wire) -> None:
    async def sweep() -> None:
        wire._sweep()

    asyncio.run(sweep())


def test_a_waiter_handed_a_connection_is_not_timed_out_after() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() - 1)  # past its time already
    wire._queued.add(waiter)
    conn: Any = object()
    assert waiter.give(conn)
    swept(wire)
    assert waiter.signal.done()
    assert waiter.signal._failure is None  # the hand-over, not a timeout
    assert waiter.conn is conn


def test_a_timed_out_waiter_is_never_handed_a_connection() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() - 1)
    wire._queued.add(waiter)
    swept(wire)
    assert isinstance(waiter.signal._failure, _vault_aio._NoConnectionError)
    assert not waiter.give(object())  # the next waiter (or the idle list) gets it
    assert waiter.conn is None


def test_a_waiter_not_yet_due_is_left_waiting() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() + 60)
    wire._queued.add(waiter)
    swept(wire)
    assert not waiter.signal.done()
    assert waiter.give(None)  # a free slot
