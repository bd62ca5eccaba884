"""How late an event loop wakes up: a ticker coroutine sleeps ``period`` over and over
and records each wake-up's delay past its due time. A loop blocked by a synchronous call
(a Vault read, a lock, CPU work) shows as large delays; a free loop's stay near 0-1 ms
(the selector rounds its timeouts up to whole milliseconds)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class LoopLag:
    """Delays (seconds) of a ticker's wake-ups past their due time."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` (0-1) quantile of the delays, nearest-rank."""
        if not self.samples:
            raise ValueError("the ticker never woke up: no samples")
        ordered = sorted(self.samples)
        rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[rank]

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    @property
    def worst(self) -> float:
        return max(self.samples)

    def __repr__(self) -> str:
        if not self.samples:
            return "LoopLag(no samples)"
        return (
            f"LoopLag(n={len(self.samples)}, p50={self.percentile(0.5) * 1e3:.2f} ms, "
            f"p99={self.p99 * 1e3:.2f} ms, max={self.worst * 1e3:.2f} ms)"
        )


@contextlib.asynccontextmanager
async def measuring_lag(period: float = 0.001) -> AsyncIterator[LoopLag]:
    """Run a ticker on the running loop for the ``async with`` block.

    Example:
        >>> async with measuring_lag() as lag:      # doctest: +SKIP
        ...     await work()
        >>> assert lag.p99 < 0.005                  # doctest: +SKIP
    """
    lag = LoopLag()
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            due = time.perf_counter() + period
            await asyncio.sleep(period)
            lag.samples.append(max(0.0, time.perf_counter() - due))

    ticker = asyncio.create_task(tick())
    try:
        yield lag
    finally:
        stop.set()
        await ticker


async def idle_lag(seconds: float = 0.5, period: float = 0.001) -> LoopLag:
    """The lag of this loop with nothing else to do: the machine's own noise (a quiet
    machine: p99 about 1 ms, the selector's rounding; a loaded one: more)."""
    async with measuring_lag(period) as lag:
        await asyncio.sleep(seconds)
    return lag


#: A wake-up this late means the loop was blocked by a call, not by the machine: a
#: blocking Vault read here takes from 0.4 s (a dripping answer) to seconds (fail-over).
BLOCKED = 0.25


async def assert_loop_free(lag: LoopLag, idle: LoopLag, budget: float = 0.005) -> None:
    """``lag``'s p99 is under ``budget``, widened only by how much noisier than a quiet
    machine's (1 ms) this machine's idle loop is around the test; and no wake-up came as
    late as a blocking call would make it (never widened: that is the regression).

    The idle loop is measured before the test and, should the p99 miss, again right
    after it: on a shared 2-core machine other processes' load comes and goes within a
    test, and the noisier of the two is the machine's noise."""
    assert lag.worst < BLOCKED, f"{lag}: the loop was blocked"
    allowed = budget + max(0.0, idle.p99 - 0.001)
    if lag.p99 >= allowed:
        after = await idle_lag()
        allowed = budget + max(0.0, max(idle.p99, after.p99) - 0.001)
        idle = after if after.p99 > idle.p99 else idle
    assert lag.p99 < allowed, f"{lag}; idle {idle}; allowed p99 {allowed * 1e3:.2f} ms"
