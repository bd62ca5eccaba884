"""The async wire's hand-over of a connection to a caller waiting for one: whoever
settles a waiter first (a hand-over or the sweep's timeout) is the one that counts."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from secureml.key_management import _bridge
from secureml.key_management.backends import _vault_aio


def swept(wire: _vault_aio.Wire) -> None:
    async def sweep() -> None:
        wire._sweep()

    asyncio.run(sweep())


def test_a_waiter_handed_a_connection_is_not_timed_out_after() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() - 1)  # past its time already
    wire._queued[waiter] = None
    conn: Any = object()
    assert waiter.give(conn)
    swept(wire)
    assert waiter.signal.done()
    assert waiter.signal._failure is None  # the hand-over, not a timeout
    assert waiter.conn is conn


def test_a_timed_out_waiter_is_never_handed_a_connection() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() - 1)
    wire._queued[waiter] = None
    swept(wire)
    assert isinstance(waiter.signal._failure, _vault_aio._NoConnectionError)
    assert not waiter.give(object())  # the next waiter (or the idle list) gets it
    assert waiter.conn is None


def test_a_waiter_not_yet_due_is_left_waiting() -> None:
    wire = _vault_aio.Wire(None)
    waiter = _vault_aio._Waiter(time.monotonic() + 60)
    wire._queued[waiter] = None
    swept(wire)
    assert not waiter.signal.done()
    assert waiter.give(None)  # a free slot


class _Conn:
    """A connection as the wire's bookkeeping sees it."""

    usable = True
    reusable_now = True

    def close(self) -> None:
        pass


def _origin(wire: _vault_aio.Wire, out: int) -> tuple[str, _vault_aio._Origin]:
    origin = "http://vault.invalid:8200"
    place = wire._origins[origin] = _vault_aio._Origin(urlsplit(origin))
    place.out = out
    return origin, place


def _no_pool() -> Any:
    raise AssertionError("nothing here runs on a thread")


def test_a_slot_freed_during_the_sweep_goes_to_a_later_waiter_not_lost() -> None:
    """The sweep times out the first waiter, which (resumed right there) frees a slot;
    the second waiter, due as well, is handed it: it must not be timed out after."""
    outcomes: dict[str, object] = {}

    async def main() -> int:
        wire = _vault_aio.Wire(None)
        origin, place = _origin(wire, out=2)

        def first() -> None:
            try:
                wire._handed(place, origin, 0.001)
            except Exception as exc:
                outcomes["first"] = type(exc).__name__
                wire._freed(place)  # it gives back a slot it held

        def second() -> None:
            try:
                outcomes["second"] = wire._handed(place, origin, 0.001)
            except Exception as exc:
                outcomes["second"] = type(exc).__name__

        _bridge.start(_no_pool, first)
        _bridge.start(_no_pool, second)
        await asyncio.sleep(0.1)
        return place.out

    out = asyncio.run(main())
    assert outcomes == {"first": "ConnectTimeoutError", "second": None}  # None: a slot
    assert out == 2  # the second's slot is counted; none leaked


def test_a_connection_handed_to_a_waiter_ended_with_its_loop_is_put_back_once() -> None:
    async def main() -> tuple[int, int]:
        wire = _vault_aio.Wire(None)
        origin, place = _origin(wire, out=1)  # the one connection is out
        conn: Any = _Conn()
        go = _bridge.Signal()

        def holder() -> None:
            _bridge.wait(go)
            wire.put(origin, conn)  # handed to the waiter, from inside a greenlet

        def waiter() -> None:
            wire._handed(place, origin, 5.0)

        _bridge.start(_no_pool, holder)
        _bridge.start(_no_pool, waiter)
        go.set_result(None)
        # The loop ends before the waiter resumes with what it was handed.
        _bridge._state_of(asyncio.get_running_loop()).shut_down()
        await asyncio.sleep(0.01)
        return place.out, len(place.idle)

    assert asyncio.run(main()) == (0, 1)
