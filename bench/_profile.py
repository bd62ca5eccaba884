"""`bench/run.py --profile`: where an uncached get_secret spends its time (cProfile)."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections import defaultdict
from collections.abc import Callable

from _raw import http_client_read

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

CALLS = 500

#: Self time is charged to the first layer whose marker is in the function's file path.
LAYERS = (
    ("/secureml/", "secureml"),
    ("/hvac/", "hvac"),
    ("/requests/", "requests"),
    ("/urllib3/", "urllib3"),
    ("/http/", "http.client"),
    ("/email/", "email (http.client's header parser)"),
    ("/json/", "json"),
)
SOCKET_METHODS = ("recv_into", "sendall", "recv", "send", "poll", "select")


def _layer(file: str, func: str) -> str:
    if file == "~":  # a built-in: a C function or method
        if any(f"'{m}'" in func for m in SOCKET_METHODS):
            return "socket send/recv (mostly waiting for Vault)"
        return "other built-ins"
    for marker, layer in LAYERS:
        if marker in file:
            return layer
    return "other Python (stdlib)"


def _print_top(profiler: cProfile.Profile, order: str, top: int, calls: int) -> None:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
    lines = out.getvalue().strip().splitlines()
    start = next(i for i, line in enumerate(lines) if "function calls" in line)
    print(f"## {calls} uncached get_secret calls, top {top} by {order}\n\n```")
    print("\n".join(line for line in lines[start:] if line.strip()))
    print("```\n")


def _by_layer(profiler: cProfile.Profile) -> dict[str, float]:
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    self_time: defaultdict[str, float] = defaultdict(float)
    for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        self_time[_layer(file, func)] += tottime
    return dict(self_time)


def _print_layers(profiler: cProfile.Profile, calls: int) -> None:
    self_time = _by_layer(profiler)
    total = sum(self_time.values())
    print(f"## {calls} uncached get_secret calls, self time by layer\n")
    print("| layer | µs per call | share |\n| --- | ---: | ---: |")
    for layer, seconds in sorted(self_time.items(), key=lambda kv: -kv[1]):
        print(f"| {layer} | {seconds / calls * 1e6:.0f} | {seconds / total:.0%} |")
    print(f"| total (profiled) | {total / calls * 1e6:.0f} | 100% |\n")


def _profiled(func: Callable[[], object], calls: int) -> cProfile.Profile:
    for _ in range(20):  # warm: connection, KV version detection, lazy imports
        func()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        func()
    profiler.disable()
    return profiler


def _calls_per_op(profiler: cProfile.Profile, calls: int) -> float:
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total: int = sum(nc for _cc, nc, _tt, _ct, _callers in raw.values())
    return total / calls


def profile_uncached(calls: int = CALLS, top: int = 10) -> None:
    with DevServer() as server:
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token, cache_ttl=0)
        manager.set_secret("x", "bench-value")
        ours = _profiled(lambda: manager.get_secret("x"), calls)
        floor = _profiled(http_client_read(server.address, server.root_token, "x"), calls)
    _print_top(ours, "cumulative", top, calls)
    _print_top(ours, "tottime", top, calls)
    _print_layers(ours, calls)
    floor_time = _by_layer(floor)
    socket = next(layer for layer in floor_time if layer.startswith("socket"))
    print(
        f"Raw http.client GET + json.loads under the same profiler: "
        f"{sum(floor_time.values()) / calls * 1e6:.0f} µs per read, of which "
        f"{floor_time[socket] / calls * 1e6:.0f} µs in socket send/recv. Python function "
        f"calls per read: secureml {_calls_per_op(ours, calls):.0f}, raw http.client "
        f"{_calls_per_op(floor, calls):.0f}."
    )
