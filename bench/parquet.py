"""Parquet modular encryption with Transit master keys against plain Parquet (issue 13).

Writes and reads a ~150 MB table as plain Parquet and encrypted by
:class:`secureml.parquet.ParquetKeys` (footer and one column key, double wrapping),
in interleaved rounds against a local OpenBao, and prints medians, the ratio and the
Transit calls the encrypted rounds made. Target: encrypted within 10 % of plain.

    .venv/bin/python bench/parquet.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from secureml._devserver import DevServer
from secureml.key_management import KeyManager
from secureml.parquet import ParquetKeys

ROWS = 3_000_000
ROUNDS = 5


def table() -> pa.Table:
    ids = pa.array(range(ROWS), pa.int64())
    emails = pa.array([f"user{i:08d}@example.com" for i in range(ROWS)])
    scores = pa.array([(i * 2654435761 % 1000) / 7 for i in range(ROWS)])
    return pa.table({"id": ids, "email": emails, "score": scores, "note": emails})


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> int:
    data = table()
    with DevServer() as server, tempfile.TemporaryDirectory() as folder:
        calls: list[str] = []
        manager = KeyManager(
            vault_url=server.address,
            vault_token=server.root_token,
            audit_hook=lambda event: calls.append(event.operation),
        )
        server.bao("secrets", "enable", "transit")
        for name in ("pq-footer", "pq-pii"):
            manager.transit.ensure_key(name)
        pk = ParquetKeys(manager, footer_key="pq-footer", column_keys={"pq-pii": ["email"]})
        plain, sealed = Path(folder) / "plain.parquet", Path(folder) / "sealed.parquet"
        results: dict[str, list[float]] = {k: [] for k in ("w-plain", "w-enc", "r-plain", "r-enc")}
        calls.clear()
        for _ in range(ROUNDS):
            results["w-plain"].append(timed(lambda: pq.write_table(data, plain)))
            results["w-enc"].append(timed(lambda: pk.write_table(data, sealed)))
            results["r-plain"].append(timed(lambda: pq.read_table(plain)))
            results["r-enc"].append(timed(lambda: pk.read_table(sealed)))
        size = plain.stat().st_size / 1e6
        print(
            f"python {sys.version.split()[0]}, pyarrow {pa.__version__}; {ROWS:,} rows, "
            f"{data.nbytes / 1e6:.0f} MB in memory, {size:.0f} MB as Parquet; medians of "
            f"{ROUNDS} interleaved rounds\n"
        )
        print("| operation | plain | encrypted | ratio | target | met |")
        print("| --- | ---: | ---: | ---: | ---: | :---: |")
        for label, p, e in (("write", "w-plain", "w-enc"), ("read", "r-plain", "r-enc")):
            mp, me = statistics.median(results[p]), statistics.median(results[e])
            met = "yes" if me / mp <= 1.10 else "**NO**"
            ratio = me / mp
            row = f"| {label} | {mp * 1e3:.0f} ms | {me * 1e3:.0f} ms | {ratio:.3f}"
            print(f"{row} | ≤ 1.10 | {met} |")
        wraps, unwraps = calls.count("transit.encrypt"), calls.count("transit.decrypt")
        print(f"\nTransit calls, {ROUNDS} writes and reads: {wraps} wraps, {unwraps} unwraps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
