"""`bench/run.py --profile`: where an uncached get_secret spends its time (cProfile)."""

from __future__ import annotations

import cProfile
import io
import pstats

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

CALLS = 500


def profile_uncached(calls: int = CALLS, top: int = 10) -> None:
    with DevServer() as server:
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token, cache_ttl=0)
        manager.set_secret("x", "bench-value")
        for _ in range(20):  # warm: connection, KV version detection, lazy imports
            manager.get_secret("x")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            manager.get_secret("x")
        profiler.disable()
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(top)
        lines = out.getvalue().strip().splitlines()
        start = next(i for i, line in enumerate(lines) if "function calls" in line)
        print(f"## {calls} uncached get_secret calls, top {top} by {order}\n")
        print("```")
        print("\n".join(line for line in lines[start:] if line.strip()))
        print("```\n")
