"""Sync code run on the event loop, awaiting where it would block: one core for both faces.

The async manager's Vault reads are the sync manager's reads (cache, single-flight,
token, retries, fail-over, deadlines, audit events and errors), run in a greenlet on
the event loop's thread. Where the sync code would block, it asks this module instead:

- :func:`wait` hands a coroutine (the async wire's exchange, a sleep) to the event
  loop and resumes with its result, so the loop serves others meanwhile;
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
    from greenlet import getcurrent, greenlet
except ImportError:  # the vault extra brings it; without it, nothing is ever bridged
    AVAILABLE = False

    def getcurrent() -> object:
        return None

    greenlet = object
else:
    AVAILABLE = True

__all__ = [
    "AVAILABLE",
    "acquire",
    "active",
    "blocking",
    "done_within",
    "greenlet_local",
    "pause",
    "run",
    "wait",
]

_T = TypeVar("_T")


class _Bridged(greenlet):  # type: ignore[misc]
    """A greenlet that runs sync code for a coroutine (:func:`run`)."""

    def __init__(self, call: Callable[..., Any], executor: concurrent.futures.Executor) -> None:
        super().__init__(call)
        self.executor = executor
        self.locals: dict[object, tuple[Any, Callable[[Any], None]]] = {}

    def give_back(self) -> None:
        """Return what :func:`greenlet_local` lent this greenlet."""
        lent, self.locals = self.locals, {}
        for value, give_back in lent.values():
            give_back(value)


def active() -> bool:
    """Whether the caller runs in a bridged greenlet (so must not block)."""
    return isinstance(getcurrent(), _Bridged)


async def run(
    executor: concurrent.futures.Executor, call: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """``call(*args, **kwargs)`` in a greenlet on this event loop, awaiting what it
    hands to :func:`wait`; ``executor`` runs what it hands to :func:`blocking`."""
    runner = _Bridged(call, executor)
    try:
        asked = runner.switch(*args, **kwargs)
        while not runner.dead:
            try:
                answer = await asked
            except BaseException as exc:  # every outcome goes back in
                asked = runner.throw(exc)
            else:
                asked = runner.switch(answer)
        result: _T = asked
        return result
    finally:
        if not runner.dead:  # this coroutine was closed mid-wait: end the greenlet too
            runner.throw(GeneratorExit)
        runner.give_back()


def wait(awaitable: Awaitable[_T]) -> _T:
    """The result of ``awaitable``, awaited by the event loop this greenlet runs for.

    Raises:
        RuntimeError: Not in a bridged greenlet.
    """
    current = getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("secureml: wait() outside an async manager's read")
    result: _T = current.parent.switch(awaitable)
    return result


def blocking(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)``: on a pool thread when bridged (it may block), else right here."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        return call(*args)
    loop = asyncio.get_running_loop()
    return wait(loop.run_in_executor(current.executor, call, *args))


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
    job = current.executor.submit(lock.acquire, True, timeout)
    try:
        return wait(asyncio.wrap_future(job, loop=loop))
    except BaseException:
        job.add_done_callback(_release_if_taken(lock))
        raise


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
