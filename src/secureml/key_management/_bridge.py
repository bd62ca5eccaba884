"""Sync code run on the event loop, awaiting where it would block: one core for both faces.

The async manager's Vault reads are the sync manager's reads (cache, single-flight,
token, retries, fail-over, deadlines, audit events and errors), run in a greenlet on
the event loop's thread. Where the sync code would block, it asks this module instead:

- :func:`wait` hands a future or coroutine (the async wire's answer, a sleep) to the
  event loop and resumes with its result, so the loop serves others meanwhile;
- :func:`blocking` runs a call that may block (a proxied request, a user's backend)
  on a pool thread and resumes with its result;
- a section that holds a lock across a request (a login, the KV version's detection)
  runs whole on a pool thread through :func:`blocking`: a greenlet never holds a lock
  while it waits, so a read that never resumes (its loop closed) cannot hold one for
  ever, and the loop's thread never waits on one that a suspended greenlet holds.

Outside a bridged greenlet each of these is the plain blocking call, so the same code
serves threads unchanged. SQLAlchemy's asyncio layer runs its sync core the same way.

A call never outlives its event loop: when the loop shuts down (``asyncio.run``
cancelling what is left), every call still waiting is resumed with
:class:`~.errors.VaultUnavailableError`, so it unwinds as an outage (a load in flight
fails for its waiters, who may read again) instead of hanging for ever. What
:func:`loop_local` made for the loop is closed then too.

Per-thread state is per greenlet here (:func:`greenlet_local`): greenlets on one thread
interleave at every :func:`wait`, so anything a request keeps in a ``threading.local``
(hvac's client, with its token and call deadline) must not be shared between them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar, overload

from ._process import PerProcess
from .errors import ConfigurationError, VaultUnavailableError

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
    "CutOffError",
    "Latch",
    "LoopEndedError",
    "Outcome",
    "Signal",
    "active",
    "blocking",
    "done_within",
    "forget_loop_local",
    "greenlet_local",
    "loop_local",
    "pause",
    "start",
    "steer",
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
        # What greenlet_local lent the call being run: the first owner's in slots of
        # its own (a read has one: its backend's client), any other's in a dict.
        self._owner: object = None
        self._lent: Any = None
        self._give_back: Callable[[Any], None] | None = None
        self._more: dict[object, tuple[Any, Callable[[Any], None]]] | None = None
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
                # Without this frame: it lives on, serving later calls, and a traceback
                # holding it would show (and keep) their locals, a token among them.
                self.outcome = exc.with_traceback(
                    exc.__traceback__.tb_next if exc.__traceback__ else None
                )
                said = _RAISED
            del call, args, kwargs  # an idle worker keeps no argument alive
            self.give_back()
            job = self.parent.switch((said, None))

    def give_back(self) -> None:
        """Return what :func:`greenlet_local` lent this greenlet."""
        if self._give_back is not None:
            value, give_back = self._lent, self._give_back
            self._owner = self._lent = self._give_back = None
            give_back(value)
        if self._more is not None:
            more, self._more = self._more, None
            for value, give_back in more.values():
                give_back(value)

    @property
    def lending(self) -> bool:
        """Whether it holds anything :func:`greenlet_local` lent (never between calls)."""
        return self._give_back is not None or self._more is not None

    def local(self, owner: object, make: Callable[[], _T], give_back: Callable[[_T], None]) -> _T:
        """:func:`greenlet_local`'s value, in this greenlet."""
        if self._owner is owner:
            value: _T = self._lent
            return value
        if self._give_back is None:
            self._lent = made = make()
            self._owner, self._give_back = owner, give_back
            return made
        more = self._more
        if more is None:
            more = self._more = {}
        found = more.get(owner)
        if found is None:
            found = more[owner] = (make(), give_back)
        value = found[0]
        return value

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


#: This process's id, kept current by the fork hook: a read asks it without a system
#: call (``os.getpid()`` is one).
_PID = PerProcess(os.getpid)


def active() -> bool:
    """Whether the caller runs in a bridged greenlet (so must not block)."""
    return isinstance(getcurrent(), _Bridged)


class _OneShot:
    """An answer given once: a value or a failure (``_fire`` says what happens then)."""

    __slots__ = ("_failure", "_fired", "_value")

    def __init__(self) -> None:
        self._fired = False
        self._value: Any = None
        self._failure: BaseException | None = None

    def done(self) -> bool:
        return self._fired

    def set_result(self, value: Any) -> None:
        self._fire(value, None)

    def set_exception(self, failure: BaseException) -> None:
        self._fire(None, failure)

    def _fire(self, value: Any, failure: BaseException | None) -> None:
        raise NotImplementedError


class Signal(_OneShot):
    """A one-shot answer a bridged call can :func:`wait` on without a future: whoever
    has the answer (a protocol's ``data_received``, a timer) resumes the call right
    there, a loop turn sooner than a future's callbacks would."""

    __slots__ = ("_drive",)

    def __init__(self) -> None:
        # _OneShot's fields set here rather than through super(): one a read or more.
        self._fired = False
        self._value: Any = None
        self._failure: BaseException | None = None
        self._drive: _Drive | None = None  # the call to resume (not a bound method:
        # that would be one more object per read for the collector to walk)

    def _fire(self, value: Any, failure: BaseException | None) -> None:
        if self._fired:
            return
        drive = self._drive
        if drive is not None and not drive.steered() and type(getcurrent()) is _Bridged:
            # A call may only be resumed from the loop; handing it to its pilot, or
            # keeping the answer for it, may be done from anywhere on the loop's thread.
            asyncio.get_running_loop().call_soon(self._fire, value, failure)
            return
        self._fired = True
        self._drive = None
        if drive is None:
            self._value, self._failure = value, failure  # for the drive to come
        else:
            drive.answered(value, failure)

    def resume(self, drive: _Drive) -> None:
        """Resume ``drive``'s call with the answer once it is in (now, if it is)."""
        if self._fired:
            value, failure, self._value, self._failure = self._value, self._failure, None, None
            drive.answered(value, failure)
        else:
            self._drive = drive


class Outcome(_OneShot):
    """A bridged call's outcome, awaited by any number of coroutines, each on a future
    of its own: a cancelled waiter cancels only itself, never the call or the others
    (which ``asyncio.shield`` would give too, a loop turn and a future later)."""

    __slots__ = ("_loop", "_waiters", "on_done", "pilot")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._fired = False  # _OneShot's fields (see Signal)
        self._value: Any = None
        self._failure: BaseException | None = None
        self._loop = loop
        self._waiters: list[asyncio.Future[Any]] = []
        #: Called once, when the outcome is in, before any waiter hears of it.
        self.on_done: Callable[[], None] | None = None
        #: The future of the task steering the call (:func:`steer`), while it waits:
        #: woken with the call's drive when what the call waits on is in. (Not the
        #: drive itself: a caller's frame holding the outcome must not reach the
        #: worker greenlet, which goes on to serve later reads.)
        self.pilot: asyncio.Future[Any] | None = None

    def waiter(self) -> asyncio.Future[Any]:
        """A future of the caller's own, resolved with the outcome."""
        future = self._loop.create_future()
        if self._fired:
            self._resolve(future)
        else:
            self._waiters.append(future)
        return future

    def _fire(self, value: Any, failure: BaseException | None) -> None:
        if self._fired:
            return
        self._fired, self._value, self._failure = True, value, failure
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done()
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            self._resolve(future)

    def _resolve(self, future: asyncio.Future[Any]) -> None:
        if future.done():  # its caller was cancelled (or a pilot woken to steer)
            return
        if self._failure is not None:
            future.set_exception(self._failure)
        else:
            future.set_result(self._value)


async def steer(outcome: Outcome) -> Any:
    """``outcome``'s result, awaited by the task that started the call, which also
    resumes the call whenever what it waits on is in: the call's frames then end in
    this task's step, right before its next call starts, not in the I/O callback.

    Why: the collector starts a young collection once allocations outrun frees by 700,
    and frees are not counted while that count is at zero. Resumed from the I/O
    callbacks, a few dozen reads finish in one loop turn (their objects freed while the
    count is low: uncounted), then their tasks start the next reads (counted): a
    collection every loop turn or two at 200 reads in flight, each walking every read's
    objects. Resumed here, each task frees then allocates, and the count stays level.
    A cancelled pilot hands the call back to the callbacks (it runs on for others).
    """
    while True:
        if outcome._fired:
            if outcome._failure is not None:
                raise outcome._failure
            return outcome._value
        future = outcome.pilot = outcome.waiter()
        try:
            value = await future
        except asyncio.CancelledError:
            if outcome.pilot is future:
                outcome.pilot = None
            _take_over_woken(future)
            del future
            raise
        if type(value) is not _Drive:
            return value
        waiters = outcome._waiters
        if future in waiters:  # else already resolved: not a waiter now
            waiters.remove(future)
        del waiters
        del future
        value.take_over()
        del value  # the drive (and through it the worker) stays out of this frame


def _take_over_woken(future: asyncio.Future[Any]) -> None:
    """A pilot cancelled after its wake, before its step: it resumes the call still."""
    if future.done() and not future.cancelled() and future.exception() is None:
        woken = future.result()
        if type(woken) is _Drive:
            woken.take_over()


def start(
    executor: Callable[[], concurrent.futures.Executor],
    call: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Outcome:
    """``call(*args, **kwargs)`` in a worker greenlet on the running event loop,
    started now. What it hands to :func:`wait` is awaited by callbacks, not a task (a
    read costs a few loop turns, not a task's); ``executor()`` (called only then) runs
    what it hands to :func:`blocking`. Await ``outcome.waiter()`` for its result, or
    (the caller that started it) :func:`steer`.
    """
    loop = asyncio.get_running_loop()
    state = _state_of(loop)
    if state.pid != _PID.value:
        raise _forked_loop(state.pid)
    outcome = Outcome(loop)
    runner = _workers.take()
    runner.executor = executor
    drive = _Drive(loop, state, runner, outcome)
    # Registered before the call starts, so it is ended with the loop (if the loop ends
    # first) whatever interrupts this function: a call parked with nobody to resume it
    # would hold its load in flight for ever, every later reader of the name waiting.
    state.drives.add(drive)
    drive.went(runner.switch((call, args, kwargs)))
    del call, args, kwargs
    return outcome


class _Drive:
    """Resumes one call's worker as what it waits on finishes (an object, not
    closures: two closures naming each other make a cycle per read for the collector)."""

    __slots__ = (
        "__weakref__",
        "awaited",
        "ended",
        "failure",
        "finished",
        "held",
        "loop",
        "outcome",
        "runner",
        "state",
        "value",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, state: _LoopState, runner: _Bridged, outcome: Outcome
    ) -> None:
        self.loop = loop
        self.state = state  # the loop's: where it is registered until it ends
        self.runner = runner
        self.outcome = outcome
        # The task (or future) it waits on, if not a Signal: cancelled if the loop ends
        # first, so nothing of the call runs on (or keeps what it made) after its end.
        self.awaited: asyncio.Future[Any] | None = None
        self.ended: BaseException | None = None  # set when the loop shuts down
        self.finished = False  # its worker went back to the pool: never touch it again
        # An answer held for the task steering the call to resume it with (:func:`steer`).
        self.held = False
        self.value: Any = None
        self.failure: BaseException | None = None

    def went(self, said: tuple[int, Any]) -> None:
        """Where the worker stands after a switch: waiting on something, or done."""
        kind, asked = said
        while kind == _WAITING and self.ended is not None:
            # Its loop is going: whatever it waits for next fails at once.
            if hasattr(asked, "close"):
                asked.close()  # a coroutine never to be run
            kind, asked = self.runner.throw(type(self.ended)(*self.ended.args))
        if kind == _WAITING:
            if type(asked) is Signal:
                asked.resume(self)
            else:
                awaited = self.awaited = asyncio.ensure_future(asked, loop=self.loop)
                awaited.add_done_callback(self.resumed)
            return
        runner, outcome = self.runner, self.outcome
        result = runner.taken()
        runner.executor = None
        try:  # settled first: an interrupt from here on cannot leave it pending
            if kind == _RETURNED:
                outcome.set_result(result)
            else:
                _settle(outcome, result)
        finally:
            self.finished = True
            self.state.drives.discard(self)
            _workers.put(runner)

    def steered(self) -> bool:
        """Whether an answer now goes to the task steering the call (or nowhere: it
        has ended), not straight into the worker's greenlet."""
        pilot = self.outcome.pilot
        return self.ended is not None or (pilot is not None and not pilot.done())

    def answered(self, value: Any, failure: BaseException | None) -> None:
        """What it waited on is in: resumed now, or by its pilot's task (:func:`steer`)."""
        if self.ended is not None:
            return  # already resumed by end(): nobody wants this
        outcome = self.outcome
        pilot, outcome.pilot = outcome.pilot, None
        if pilot is not None and not pilot.done():
            self.held, self.value, self.failure = True, value, failure
            pilot.set_result(self)
            return
        self._resume(value, failure)

    def take_over(self) -> None:
        """Resume the call with the answer held for its pilot (in the pilot's task)."""
        if not self.held:
            return
        value, failure = self.value, self.failure
        self.held, self.value, self.failure = False, None, None
        if self.ended is None:
            self._resume(value, failure)

    def _resume(self, value: Any, failure: BaseException | None) -> None:
        if failure is not None:
            self.went(self.runner.throw(failure))
        else:
            self.went(self.runner.switch(value))

    def resumed(self, done: asyncio.Future[Any]) -> None:
        """A future it waited on finished."""
        if self.awaited is done:
            self.awaited = None
        if self.ended is not None:  # already resumed by end(): nobody wants this
            if not done.cancelled():
                done.exception()  # taken, so asyncio does not log it as lost
            return
        if done.cancelled():
            # Not a caller's cancellation (callers wait on futures of their own): the
            # thing it waited on was (a pool job of a closed facade). An outage.
            self.answered(None, _ended("was cut off while it waited", CutOffError))
        else:
            failure = done.exception()
            self.answered(None if failure is not None else done.result(), failure)

    def end(self) -> None:
        """The loop is shutting down: resume the call with an outage, now."""
        if self.ended is None and not self.finished:
            self.ended = _ended("was ended: its event loop shut down")
            self.outcome.pilot = None
            self.held, self.value, self.failure = False, None, None
            _drop(self.awaited)
            self.awaited = None
            try:
                said = self.runner.throw(type(self.ended)(*self.ended.args))
            except BaseException as exc:
                # The worker had not begun the call (an interrupt in start() came first):
                # it is gone, and so is the call.
                self.finished = True
                self.state.drives.discard(self)
                if not self.outcome.done():
                    self.outcome.set_exception(
                        self.ended if isinstance(exc, LoopEndedError) else exc
                    )
                return
            self.went(said)


def _drop(awaited: asyncio.Future[Any] | None) -> None:
    """Cancel what an ended call waited on; close what it made, if it made it already
    (a connection nobody will use)."""
    if awaited is None:
        return
    if not awaited.done():
        awaited.cancel()
    elif not awaited.cancelled() and awaited.exception() is None:
        close = getattr(awaited.result(), "close", None)
        if callable(close):
            close()


class LoopEndedError(VaultUnavailableError):
    """A call made on an event loop was ended with it: an outage to its caller; to a
    thread that shared its read, a reason to read again itself."""


class CutOffError(LoopEndedError):
    """What a call waited on was cancelled by someone else (a task it handed the loop,
    cancelled by code that cancels every task but its own; a pool job of a closed
    facade), while the loop itself goes on."""


def _ended(what: str, kind: type[LoopEndedError] = LoopEndedError) -> LoopEndedError:
    return kind(f"a Vault call made on an event loop {what}; call again")


class _LoopState:
    """What the bridge keeps for one event loop, for as long as the loop lives (held
    by the loop itself: kept anywhere else, it would keep the loop alive)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: The process the loop's connections were opened in (see :func:`_forked_loop`).
        self.pid = _PID.value
        self.drives: weakref.WeakSet[_Drive] = weakref.WeakSet()
        self.values: weakref.WeakKeyDictionary[object, tuple[Any, Callable[[Any], None]]] = (
            weakref.WeakKeyDictionary()
        )
        self.watch = self._until_shutdown()
        _park(self.watch, loop)

    async def _until_shutdown(self) -> AsyncGenerator[None, None]:
        """Parked at its ``yield`` for the loop's life; closed by the loop's
        ``shutdown_asyncgens()``, the last step of ``asyncio.run`` (after the tasks it
        cancelled have finished, their cleanup reads included). Not a task: code that
        cancels or waits for "all tasks" never sees it."""
        try:
            yield
        finally:
            self.shut_down()

    def shut_down(self) -> None:
        for drive in list(self.drives):
            drive.end()
        values, self.values = dict(self.values), weakref.WeakKeyDictionary()
        for value, close in values.values():
            close(value)


def _forked_loop(pid: int) -> ConfigurationError:
    """A loop this bridge used in process ``pid``, run again in a forked child: its
    selector (an epoll shared with the parent) still watches the parent's kept-alive
    connections, so reads here would take the parent's answers, and the parent lose them."""
    return ConfigurationError(
        f"this event loop was used for Vault reads in process {pid} before a fork: an "
        "event loop cannot be shared across os.fork(); make a new one in the child "
        "(asyncio.run(...) or asyncio.new_event_loop())"
    )


def _park(watch: AsyncGenerator[None, None], loop: asyncio.AbstractEventLoop) -> None:
    """Run ``watch`` to its first ``yield``, registered with ``loop`` as its async
    generators are, so ``shutdown_asyncgens`` closes it. Collected with a loop that was
    closed without shutting down, it is left alone (the loop's own finalizer would
    raise on the closed loop)."""
    hooks = sys.get_asyncgen_hooks()
    # Held weakly, the loop and its hook (a bound method of the loop) both: the
    # generator keeps its finalizer, the loop's state keeps the generator, and a loop
    # that takes no attributes (uvloop's) has its state in a WeakKeyDictionary keyed by
    # the loop, which a value reaching its key would keep alive for ever.
    found = hooks.finalizer
    loop_finalizer: Callable[[], Callable[[AsyncGenerator[Any, Any]], object] | None] = (
        weakref.WeakMethod(found) if inspect.ismethod(found) else lambda: found
    )
    owner = weakref.ref(loop)

    def finalizer(generator: AsyncGenerator[Any, Any]) -> None:
        hook, alive = loop_finalizer(), owner()
        if hook is not None and alive is not None and not alive.is_closed():
            hook(generator)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        with contextlib.suppress(StopIteration):  # what its first yield raises here
            watch.__anext__().send(None)
    finally:
        sys.set_asyncgen_hooks(*hooks)


_ATTRIBUTE = "_secureml_bridge"
_fallback: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary()
)


def _state_of(loop: asyncio.AbstractEventLoop) -> _LoopState:
    state: _LoopState | None = getattr(loop, _ATTRIBUTE, None) or _fallback.get(loop)
    if state is None:
        state = _LoopState(loop)
        try:
            setattr(loop, _ATTRIBUTE, state)
        except AttributeError:  # a loop class without attributes (uvloop's)
            _fallback[loop] = state
    return state


def loop_local(owner: object, make: Callable[[], _T], close: Callable[[_T], None]) -> _T:
    """The running loop's own ``make()`` for ``owner``: made on first use, handed to
    ``close`` when the loop shuts down (or :func:`forget_loop_local`), and gone with
    the loop (or ``owner``)."""
    values = _state_of(asyncio.get_running_loop()).values
    found = values.get(owner)
    if found is None:
        found = values[owner] = (make(), close)
    value: _T = found[0]
    return value


def forget_loop_local(owner: object) -> None:
    """Close and drop the running loop's value for ``owner``, if it has one."""
    found = _state_of(asyncio.get_running_loop()).values.pop(owner, None)
    if found is not None:
        found[1](found[0])


def _settle(outcome: Outcome, failure: BaseException) -> None:
    """End ``outcome`` with ``failure``; KeyboardInterrupt and SystemExit go on up."""
    if isinstance(failure, asyncio.CancelledError):  # never a waiter's own: an outage
        failure = _ended("was cancelled")
    outcome.set_exception(failure)
    if isinstance(failure, (KeyboardInterrupt, SystemExit)):
        raise failure


@overload
def wait(awaitable: Awaitable[_T]) -> _T: ...
@overload
def wait(awaitable: Signal) -> Any: ...


def wait(awaitable: Awaitable[_T] | Signal) -> Any:
    """The result of ``awaitable``, awaited by the event loop this greenlet runs for.

    Raises:
        RuntimeError: Not in a bridged greenlet.
    """
    current = getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("secureml: wait() outside an async manager's read")
    return current.parent.switch((_WAITING, awaitable))


def blocking(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)``: on a pool thread when bridged (it may block), else right here."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        return call(*args)
    loop = asyncio.get_running_loop()
    return wait(loop.run_in_executor(current.pool, call, *args))


def pause(seconds: float) -> None:
    """Sleep: on the loop's timer when bridged, ``time.sleep`` otherwise."""
    if isinstance(getcurrent(), _Bridged):
        _wait_timed(Signal(), seconds, None)
    else:
        time.sleep(seconds)


def _wait_timed(signal: Signal, seconds: float, value: Any) -> Any:
    """:func:`wait` for ``signal``, fired with ``value`` after ``seconds`` if nothing
    fires it first. A timer, not a task (``asyncio.sleep``'s or ``asyncio.wait``'s):
    code that cancels every task but its own must not cut off a read it never saw."""
    timer = asyncio.get_running_loop().call_later(seconds, signal.set_result, value)
    try:
        return wait(signal)
    finally:
        timer.cancel()


class Latch(_OneShot):
    """A result given once, waited for by threads and by bridged calls alike: a load in
    flight. Leaner than a ``concurrent.futures.Future`` (whose condition, deque, lists
    and bound methods are ten objects more): a read holds it across its wait, where the
    collector walks whatever a read holds, once per few dozen reads."""

    __slots__ = ("_gate", "_wakers")

    def __init__(self) -> None:
        self._fired = False  # _OneShot's fields (see Signal)
        self._value: Any = None
        self._failure: BaseException | None = None
        self._gate = threading.Lock()
        self._gate.acquire()  # released once, when the result is in
        self._wakers: list[Callable[[], None]] | None = None

    def result(self) -> Any:
        """The value given (None before it is in, or when it failed)."""
        return self._value

    def exception(self) -> BaseException | None:
        """The failure given, if any."""
        return self._failure

    def _fire(self, value: Any, failure: BaseException | None) -> None:
        with _WAKERS.value:
            if self._fired:
                return
            self._value, self._failure, self._fired = value, failure, True
            wakers, self._wakers = self._wakers, None
        self._gate.release()
        for wake in wakers or ():
            wake()

    def _on_fired(self, wake: Callable[[], None]) -> bool:
        """Call ``wake()`` (from the thread that gives the result) once it is in; False
        if it already is (``wake`` is not called)."""
        with _WAKERS.value:
            if self._fired:
                return False
            if self._wakers is None:
                self._wakers = []
            self._wakers.append(wake)
            return True

    def wait_in_thread(self, timeout: float | None) -> bool:
        """Whether the result is in within ``timeout`` seconds (``None``: however long),
        waited for by blocking this thread."""
        if self._fired:
            return True
        got = False
        try:
            got = self._gate.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        finally:
            if got:  # passed on to the next waiter, even if this one is interrupted
                self._gate.release()
        return got or self._fired


#: Guards every latch's wakers (held for a few instructions; one lock, not one a latch),
#: made again in a forked child: the parent's may have been held by a thread the child
#: does not have.
_WAKERS = PerProcess(threading.Lock)


def done_within(latch: Latch, timeout: float | None) -> bool:
    """Whether ``latch`` is done within ``timeout`` seconds (``None``: however long)."""
    if latch.done():
        return True
    if not isinstance(getcurrent(), _Bridged):
        return latch.wait_in_thread(timeout)
    loop = asyncio.get_running_loop()
    woken = Signal()

    def wake() -> None:  # in the thread that gave the result: maybe not the loop's
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(woken.set_result, True)

    if not latch._on_fired(wake):
        return True
    if timeout is None:
        return bool(wait(woken))
    return bool(_wait_timed(woken, timeout, False))


def greenlet_local(
    owner: object, make: Callable[[], _T], give_back: Callable[[_T], None]
) -> _T | None:
    """The bridged greenlet's own ``make()`` for ``owner`` (made on first use, handed
    to ``give_back`` when the greenlet's call ends); None when not bridged (one call
    for a hot path to tell both apart and find the value)."""
    current = getcurrent()
    if type(current) is not _Bridged:
        return None
    value: _T = current.local(owner, make, give_back)
    return value
