"""Sync code run on the event loop, awaiting where it would block: one core for both faces.

The async manager's Vault reads are the sync manager's reads (cache, single-flight,
token, retries, fail-over, deadlines, audit events and errors), run in a greenlet on
the event loop's thread. Where the sync code would block, it asks this module instead:

- :func:`wait` hands a future or coroutine (the async wire's answer, a sleep) to the
  event loop and resumes with its result, so the loop serves others meanwhile;
- :func:`blocking` runs a call that may block (a proxied request, a user's backend)
  on a pool thread and resumes with its result;
- :func:`acquire` takes a lock without blocking the loop: uncontended it is taken at
  once; contended, a pool thread waits for it (so a greenlet that holds it across a
  request, suspended, never deadlocks the loop, whose thread never waits on it).

Outside a bridged greenlet each of these is the plain blocking call, so the same code
serves threads unchanged. SQLAlchemy's asyncio layer runs its sync core the same way.

Per-thread state is per greenlet here (:func:`greenlet_local`): greenlets on one thread
interleave at every :func:`wait`, so anything a request keeps in a ``threading.local``
(hvac's client, with its token and call deadline) must not be shared between them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    from greenlet import GreenletExit, getcurrent, greenlet
except ImportError:  # the vault extra brings it; without it, nothing is ever bridged
    AVAILABLE = False

    def getcurrent() -> object:
        return None

    greenlet = object
    GreenletExit = BaseException
else:
    AVAILABLE = True

__all__ = [
    "AVAILABLE",
    "acquire",
    "active",
    "blocking",
    "done_within",
    "greenlet_local",
    "lent",
    "pause",
    "start",
    "wait",
]

_T = TypeVar("_T")


#: What a worker greenlet says when it switches back to the loop.
_WAITING, _RETURNED, _RAISED = 0, 1, 2
#: Idle worker greenlets kept per thread: ending a greenlet costs more than a read's
#: Python (its stack is torn down), so they serve one call after another.
_IDLE_WORKERS = 256


class _Bridged(greenlet):  # type: ignore[misc]
    """A worker greenlet that runs sync calls for the event loop, one after another
    (:func:`start`); between calls it holds nothing of the last one."""

    def __init__(self) -> None:
        super().__init__(self._serve)
        self.executor: Callable[[], concurrent.futures.Executor] | None = None
        self.locals: dict[object, tuple[Any, Callable[[Any], None]]] = {}
        self.outcome: Any = None

    def _serve(self, job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> None:
        while True:
            call, args, kwargs = job
            del job
            try:
                self.outcome = call(*args, **kwargs)
                said = _RETURNED
            except GreenletExit:
                raise  # the greenlet itself is being ended (its thread is gone)
            except BaseException as exc:  # the call's outcome, handed to the loop
                self.outcome = exc
                said = _RAISED
            del call, args, kwargs  # an idle worker keeps no argument alive
            self.give_back()
            job = self.parent.switch((said, None))

    def give_back(self) -> None:
        """Return what :func:`greenlet_local` lent this greenlet."""
        lent, self.locals = self.locals, {}
        for value, give_back in lent.values():
            give_back(value)

    @property
    def pool(self) -> concurrent.futures.Executor:
        """The executor of the call being run (for what it must do on a thread)."""
        if self.executor is None:
            raise RuntimeError("secureml: a bridged worker ran without its call")
        return self.executor()

    def taken(self) -> Any:
        """The call's outcome, no longer held here."""
        outcome, self.outcome = self.outcome, None
        return outcome


class _Workers(threading.local):
    """Each thread's idle worker greenlets (a greenlet belongs to its thread)."""

    def __init__(self) -> None:
        self.idle: list[_Bridged] = []

    def take(self) -> _Bridged:
        idle = self.idle
        return idle.pop() if idle else _Bridged()

    def put(self, worker: _Bridged) -> None:
        if len(self.idle) < _IDLE_WORKERS:
            self.idle.append(worker)


_workers = _Workers()


def active() -> bool:
    """Whether the caller runs in a bridged greenlet (so must not block)."""
    return isinstance(getcurrent(), _Bridged)


def start(
    executor: Callable[[], concurrent.futures.Executor],
    call: Callable[..., _T],
    *args: Any,
    **kwargs: Any,
) -> asyncio.Future[_T]:
    """``call(*args, **kwargs)`` in a worker greenlet on the running event loop,
    started now; the future is its outcome. What it hands to :func:`wait` is awaited
    by callbacks, not a task (a read costs a few loop turns, not a task's);
    ``executor()`` (called only then) runs what it hands to :func:`blocking`.

    Nobody should await the future itself: a cancelled awaiter would cancel it, and the
    outcome is others' too. Await ``asyncio.shield`` of it. If the future is cancelled
    anyway, the call gets ``CancelledError`` where it waits next.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[_T] = loop.create_future()
    runner = _workers.take()
    runner.executor = executor
    _Drive(loop, runner, outcome).went(runner.switch((call, args, kwargs)))
    del call, args, kwargs
    return outcome


class _Drive:
    """Resumes one call's worker as what it waits on finishes (an object, not
    closures: two closures naming each other make a cycle per read for the collector)."""

    __slots__ = ("loop", "outcome", "runner")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, runner: _Bridged, outcome: asyncio.Future[Any]
    ) -> None:
        self.loop = loop
        self.runner = runner
        self.outcome = outcome

    def went(self, said: tuple[int, Any]) -> None:
        """Where the worker stands after a switch: waiting on something, or done."""
        kind, asked = said
        if kind == _WAITING:
            asyncio.ensure_future(asked, loop=self.loop).add_done_callback(self.resumed)
            return
        runner, outcome = self.runner, self.outcome
        result = runner.taken()
        runner.executor = None
        _workers.put(runner)
        if kind == _RETURNED:
            if not outcome.done():
                outcome.set_result(result)
        else:
            _settle(outcome, result)

    def resumed(self, done: asyncio.Future[Any]) -> None:
        runner = self.runner
        if done.cancelled() or self.outcome.cancelled():
            self.went(runner.throw(asyncio.CancelledError()))
        elif (failure := done.exception()) is not None:
            self.went(runner.throw(failure))
        else:
            self.went(runner.switch(done.result()))


def _settle(outcome: asyncio.Future[Any], failure: BaseException) -> None:
    """End ``outcome`` with ``failure``; KeyboardInterrupt and SystemExit go on up."""
    if not outcome.done():
        if isinstance(failure, asyncio.CancelledError):
            outcome.cancel()
        else:
            outcome.set_exception(failure)
    if isinstance(failure, (KeyboardInterrupt, SystemExit)):
        raise failure


def wait(awaitable: Awaitable[_T]) -> _T:
    """The result of ``awaitable``, awaited by the event loop this greenlet runs for.

    Raises:
        RuntimeError: Not in a bridged greenlet.
    """
    current = getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("secureml: wait() outside an async manager's read")
    result: _T = current.parent.switch((_WAITING, awaitable))
    return result


def blocking(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)``: on a pool thread when bridged (it may block), else right here."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        return call(*args)
    loop = asyncio.get_running_loop()
    return wait(loop.run_in_executor(current.pool, call, *args))


def pause(seconds: float) -> None:
    """Sleep: ``asyncio.sleep`` when bridged, ``time.sleep`` otherwise."""
    if isinstance(getcurrent(), _Bridged):
        wait(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def acquire(lock: threading.Lock, timeout: float = -1) -> bool:
    """``lock.acquire(timeout=timeout)``, without ever blocking an event loop's thread.

    Contended and bridged, a pool thread waits for the lock (a ``Lock`` may be
    released by any thread); if the greenlet is ended meanwhile, a lock the thread
    then gets is released again, never left held by nobody.
    """
    if lock.acquire(blocking=False):
        return True
    current = getcurrent()
    if not isinstance(current, _Bridged):
        return lock.acquire(timeout=timeout)
    loop = asyncio.get_running_loop()
    job = current.pool.submit(lock.acquire, True, timeout)
    try:
        taken: bool = wait(asyncio.wrap_future(job, loop=loop))
    except BaseException:
        job.add_done_callback(_release_if_taken(lock))
        raise
    return taken


def _release_if_taken(lock: threading.Lock) -> Callable[[concurrent.futures.Future[bool]], None]:
    def release(job: concurrent.futures.Future[bool]) -> None:
        if not job.cancelled() and job.exception() is None and job.result():
            lock.release()

    return release


def done_within(future: concurrent.futures.Future[Any], timeout: float | None) -> bool:
    """Whether ``future`` is done within ``timeout`` seconds (``None``: however long)."""
    if future.done():
        return True
    if not isinstance(getcurrent(), _Bridged):
        done, _ = concurrent.futures.wait([future], timeout=timeout)
        return bool(done)
    waiter = asyncio.wrap_future(future, loop=asyncio.get_running_loop())
    done, _ = wait(asyncio.wait([waiter], timeout=timeout))
    return bool(done)


def lent() -> dict[object, tuple[Any, Callable[[Any], None]]] | None:
    """The bridged greenlet's own values (:func:`greenlet_local`'s store), or None when
    not bridged: one call for a hot path to tell both apart."""
    current = getcurrent()
    return current.locals if type(current) is _Bridged else None


def greenlet_local(owner: object, make: Callable[[], _T], give_back: Callable[[_T], None]) -> _T:
    """The bridged greenlet's own ``make()`` for ``owner`` (made on first use, handed
    to ``give_back`` when the greenlet ends).

    Raises:
        RuntimeError: Not in a bridged greenlet.
    """
    current = getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("secureml: greenlet_local() outside an async manager's read")
    found = current.locals.get(owner)
    if found is None:
        found = current.locals[owner] = (make(), give_back)
    value: _T = found[0]
    return value
