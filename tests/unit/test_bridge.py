"""The bridge's steering (``_bridge.steer``): the task that starts a bridged call resumes
it in its own step, so the call's frames end there and not in an I/O callback; a
cancelled pilot hands the call back to the callbacks, which finish it for the others.

A :class:`Signal` fired from a plain loop callback stands in for the wire's
``data_received``; no server is needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from secureml.key_management import _bridge
from secureml.key_management._bridge import LoopEndedError, Signal

pytest.importorskip("greenlet")


def _no_pool() -> concurrent.futures.Executor:
    raise AssertionError("nothing here runs on a thread")


class _Call:
    """A sync call that waits on ``signals`` in turn, noting the task it resumed in."""

    def __init__(self, waits: int = 1) -> None:
        self.signals = [Signal() for _ in range(waits)]
        self.resumed_in: list[asyncio.Task[Any] | None] = []

    def __call__(self) -> str:
        answers = []
        for signal in self.signals:
            answers.append(_bridge.wait(signal))
            self.resumed_in.append(asyncio.current_task())
        return "+".join(answers)


def _fire_soon(signal: Signal, value: str = "v", failure: BaseException | None = None) -> None:
    """Fire ``signal`` from a loop callback of its own (as ``data_received`` would)."""
    loop = asyncio.get_running_loop()
    if failure is None:
        loop.call_soon(signal.set_result, value)
    else:
        loop.call_soon(signal.set_exception, failure)


def test_the_starting_task_resumes_its_call_at_every_wait() -> None:
    async def main() -> None:
        call = _Call(waits=2)
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        await asyncio.sleep(0)  # the pilot waits now
        _fire_soon(call.signals[0], "a")
        while len(call.resumed_in) < 1:
            await asyncio.sleep(0)
        _fire_soon(call.signals[1], "b")
        assert await steering == "a+b"
        assert call.resumed_in == [steering, steering]

    asyncio.run(main())


def test_without_a_pilot_the_callback_resumes_the_call() -> None:
    async def main() -> None:
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        waiting = outcome.waiter()
        _fire_soon(call.signals[0])
        assert await waiting == "v"
        assert call.resumed_in == [None]  # in the callback: no task was running

    asyncio.run(main())


def test_a_failure_reaches_the_pilot() -> None:
    async def main() -> None:
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        await asyncio.sleep(0)
        _fire_soon(call.signals[0], failure=ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError, match="gone"):
            await steering

    asyncio.run(main())


def test_a_pilot_cancelled_while_waiting_leaves_the_call_to_finish_for_the_others() -> None:
    async def main() -> None:
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        joiner = outcome.waiter()
        await asyncio.sleep(0)
        steering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await steering
        _fire_soon(call.signals[0])
        assert await joiner == "v"
        assert outcome.done()
        assert call.resumed_in == [None]  # the callback took over

    asyncio.run(main())


def test_a_pilot_cancelled_after_its_wake_but_before_its_step_still_resumes_the_call() -> None:
    async def main() -> None:
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        joiner = outcome.waiter()
        await asyncio.sleep(0)
        call.signals[0].set_result("v")  # the pilot's future is woken, its step is due
        steering.cancel()  # ... and cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await steering
        assert outcome.done()  # resumed by the cancelled pilot on its way out
        assert await joiner == "v"

    asyncio.run(main())


def _held_for_a_pilot(loop: asyncio.AbstractEventLoop) -> tuple[_Call, Any, Any]:
    """A call whose answer came in the loop turn the loop stopped in: held for a pilot
    whose step has not run yet."""
    call = _Call()

    async def begin() -> tuple[Any, Any]:
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        await asyncio.sleep(0)
        return outcome, steering

    outcome, steering = loop.run_until_complete(begin())
    loop.call_soon(call.signals[0].set_result, "v")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert not outcome.done()  # held: the pilot's step is due
    return call, outcome, steering


def test_a_loop_ending_while_a_pilot_holds_an_answer_ends_the_call_as_an_outage() -> None:
    loop = asyncio.new_event_loop()
    try:
        _call, outcome, steering = _held_for_a_pilot(loop)
        _bridge._state_of(loop).shut_down()  # what asyncio.run's last step does
        assert outcome.done()
        assert isinstance(outcome._failure, LoopEndedError)
        with pytest.raises(LoopEndedError):
            loop.run_until_complete(steering)  # woken, it finds the call ended
    finally:
        loop.close()


def test_a_pilot_cancelled_after_the_loop_ended_its_call_stays_cancelled() -> None:
    loop = asyncio.new_event_loop()
    try:

        async def begin() -> Any:
            outcome = _bridge.start(_no_pool, _Call())
            steering = asyncio.ensure_future(_bridge.steer(outcome))
            await asyncio.sleep(0)  # the pilot waits, no answer in
            return steering

        steering = loop.run_until_complete(begin())
        _bridge._state_of(loop).shut_down()  # fails the pilot's future: its step is due
        steering.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(steering)
    finally:
        loop.close()


def test_a_cancelled_pilots_traceback_reaches_no_worker() -> None:
    """The worker greenlet goes on to serve later reads: a caller's traceback (kept by an
    error tracker) must not lead to it, nor to the drive that holds it."""
    import gc

    caught: list[BaseException] = []

    async def main() -> None:
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        steering = asyncio.ensure_future(_bridge.steer(outcome))
        await asyncio.sleep(0)
        steering.cancel()
        try:
            await steering
        except asyncio.CancelledError as exc:
            caught.append(exc)
        _fire_soon(call.signals[0])
        await outcome.waiter()

    asyncio.run(main())
    tb = caught[0].__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            assert not isinstance(value, (_bridge._Drive, _bridge._Bridged))
            if isinstance(value, _bridge.Outcome):
                assert not any(isinstance(r, _bridge._Drive) for r in gc.get_referents(value))
        tb = tb.tb_next


def _interrupt_in_start_after(marker: str) -> Any:
    """A tracer raising KeyboardInterrupt in :func:`_bridge.start` at the first line
    whose source holds ``marker`` (as a Ctrl-C landing at that bytecode would)."""
    import inspect
    import sys

    lines, first = inspect.getsourcelines(_bridge.start)
    target = first + next(i for i, line in enumerate(lines) if marker in line)
    fired: list[int] = []

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target and not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code is _bridge.start.__code__ else None

    sys.settrace(tracer)
    return fired


def test_an_interrupt_in_start_after_the_call_began_still_ends_it_with_the_loop() -> None:
    """The call is parked on a signal nobody fires: without the drive registered before
    it began, the loop's end never reaches it and (a load in flight) it holds its name
    for every later reader."""
    import sys

    call = _Call()
    unwound: list[BaseException] = []

    def parked() -> str:
        try:
            return call()
        except BaseException as exc:
            unwound.append(exc)
            raise

    async def main() -> None:
        fired = _interrupt_in_start_after("del call, args, kwargs")
        try:
            _bridge.start(_no_pool, parked)
        finally:
            sys.settrace(None)
        assert fired

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert len(unwound) == 1
    assert isinstance(unwound[0], LoopEndedError)


def test_an_interrupt_in_start_before_the_call_began_ends_cleanly_with_the_loop() -> None:
    import sys

    async def main() -> None:
        fired = _interrupt_in_start_after("drive.went(runner.switch(")
        try:
            _bridge.start(_no_pool, _Call())
        finally:
            sys.settrace(None)
        assert fired

    with pytest.raises(KeyboardInterrupt):  # only the interrupt: the loop's end was clean
        asyncio.run(main())

    async def again() -> str:  # and the bridge serves the next call
        call = _Call()
        outcome = _bridge.start(_no_pool, call)
        _fire_soon(call.signals[0], "ok")
        return str(await _bridge.steer(outcome))

    assert asyncio.run(again()) == "ok"


class _NoAttributes(asyncio.SelectorEventLoop):
    """A loop that takes no attributes of ours, as uvloop's: its state is kept aside."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "_secureml_bridge":
            raise AttributeError(name)
        super().__setattr__(name, value)


@pytest.mark.parametrize("loop_class", [asyncio.SelectorEventLoop, _NoAttributes])
def test_a_loop_the_bridge_used_is_collected_once_it_is_closed(
    loop_class: type[asyncio.AbstractEventLoop],
) -> None:
    import gc
    import weakref

    def used_and_closed() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = loop_class()
        call = _Call()

        async def read() -> object:
            outcome = _bridge.start(_no_pool, call)
            loop.call_soon(call.signals[0].set_result, "v")
            return await _bridge.steer(outcome)

        assert loop.run_until_complete(read()) == "v"
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        return weakref.ref(loop)

    gone = used_and_closed()
    gc.collect()
    assert gone() is None  # not kept by its own state (one loop per asyncio.run)


@pytest.mark.parametrize(
    "make", [Signal, _bridge.Latch, lambda: _bridge.Outcome(asyncio.new_event_loop())]
)
def test_every_one_shot_sets_every_slot_it_has(make: Any) -> None:
    """They set their base's fields themselves (no super() on the hot path): a field
    added to one class must be set by every one."""
    made = make()
    for cls in type(made).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot != "__weakref__":
                getattr(made, slot)  # AttributeError if never set
    loop = getattr(made, "_loop", None)
    if loop is not None:
        loop.close()
