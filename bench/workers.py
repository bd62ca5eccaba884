"""secureml on Spark and Dask workers (issue 14): a column encrypted on the workers with
a shipped KeyManagerSpec, against the same job with the key bytes bound in the function.

One string column of N rows in 16 partitions, encrypted deterministically (AES-SIV)
on pyspark ``local[2]`` (``mapInArrow``, written to Spark's ``noop`` sink) and on a Dask
``LocalCluster`` of two single-threaded worker processes (``client.map`` over scattered
pyarrow arrays). Contestants, timed in interleaved rounds, medians reported:

- secureml: ``spec.manager().column_cipher(key, column=...)`` in the function, the spec
  (credentials by reference: an AppRole secret id in the workers' environment) the
  only thing in its closure; ``cipher.encrypt(arrow array)``.
- floor: ``cryptography``'s ``AESSIV`` over key bytes passed into the function, one
  call per cell (the Tink cell header prepended), back into a pyarrow binary array.

Target: secureml at most 1.1x the floor's time. Logins are counted in the OpenBao
audit log: one per worker process for all the jobs (the managers are reused), the
first job's included (with its login jitter); timed rounds start warm.

    .venv/bin/python bench/workers.py            # 2,000,000 rows, 5 rounds (~3 min on 2 cores)
    .venv/bin/python bench/workers.py --quick    # 400,000 rows, 3 rounds (~1.5 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow as pa

from secureml._devserver import DevServer
from secureml.key_management import AppRoleAuth, KeyManager, KeyManagerSpec

PARTITIONS = 16
SLOTS = 2
KEY = "bench-pii"
COLUMN = "email"
SECRET_VAR = "BENCH_WORKER_SECRET_ID"
TARGET = 1.10

Job = Callable[[], object]


# -- an audited server with one AppRole -------------------------------------------------


class Audited:
    """A dev server with a file audit device and one AppRole on a mount of its own."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "audit.log"
        config = f'audit "file" "bench" {{\n  options {{\n    file_path = "{self.log}"\n  }}\n}}\n'
        self.server = DevServer(extra_config=config).start()
        self.mount = f"approle-{uuid.uuid4().hex[:8]}"
        self.path = f"bench-{uuid.uuid4().hex[:8]}"
        can = '{ capabilities = ["read", "create", "update"] }'
        rules = (
            f'path "secret/data/{self.path}/*" {can}\n'
            f'path "secret/metadata/{self.path}/*" {can}\n'
            'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n'
        )
        bao = self.server.bao
        bao("policy", "write", "bench-workers", "-", input=rules.encode())
        bao("auth", "enable", f"-path={self.mount}", "approle")
        role = f"auth/{self.mount}/role/worker"
        bao("write", role, "token_policies=bench-workers", "token_ttl=3600s")
        self.role_id = json.loads(bao("read", "-format=json", f"{role}/role-id").stdout)["data"][
            "role_id"
        ]
        self.secret_id = json.loads(bao("write", "-format=json", "-f", f"{role}/secret-id").stdout)[
            "data"
        ]["secret_id"]

    def logins(self) -> int:
        time.sleep(0.3)  # the last answers' lines land
        if not self.log.exists():
            return 0
        count = 0
        for line in self.log.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if (
                entry.get("type") == "response"
                and entry.get("request", {}).get("path") == f"auth/{self.mount}/login"
                and not entry.get("error")
            ):
                count += 1
        return count

    def stop(self) -> None:
        self.server.stop()


# -- the functions shipped to the workers ----------------------------------------------


def spec_arrow(spec: KeyManagerSpec) -> Callable[[Any], Any]:
    """Encrypt one pyarrow string array with this worker's manager for ``spec``."""

    def encrypt(array: Any) -> Any:
        return spec.manager().column_cipher("bench-pii", column="email").encrypt(array)

    return encrypt


def floor_arrow(key: bytes) -> Callable[[Any], Any]:
    """Encrypt one pyarrow string array with AESSIV over ``key``, one call per cell."""

    def encrypt(array: Any) -> Any:
        import pyarrow as pa
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        enc, ads, head = AESSIV(key).encrypt, [b"email"], b"\x01\x00\x00\x00\x01"
        return pa.array([head + enc(v.encode(), ads) for v in array.to_pylist()], pa.binary())

    return encrypt


def batches_of(encrypt: Callable[[Any], Any]) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """A mapInArrow function: ``encrypt`` over the column of every record batch."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            yield pa.RecordBatch.from_arrays([encrypt(batch.column("email"))], names=["cell"])

    return run


def count_of(encrypt: Callable[[Any], Any]) -> Callable[[Any], int]:
    """A Dask task: encrypt one partition, keep the cells on the worker, return a count."""

    def run(array: Any) -> int:
        return len(encrypt(array))

    return run


# -- timing ------------------------------------------------------------------------------


def timed(job: Job) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def rounds_of(jobs: dict[str, Job], rounds: int) -> dict[str, float]:
    """Median seconds of each job, in rotated interleaved rounds (after one warm-up)."""
    for job in jobs.values():
        job()
    names = list(jobs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(timed(jobs[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def spark_jobs(
    emails: pa.Array, spec: KeyManagerSpec, key: bytes
) -> tuple[Callable[[], None], dict[str, Job]]:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(f"local[{SLOTS}]")
        .appName("secureml-bench-workers")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")  # loopback only
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", str(SLOTS))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    source = spark.createDataFrame(pa.table({COLUMN: emails})).repartition(PARTITIONS)
    source = source.cache()
    source.count()

    def job(encrypt: Callable[[Any], Any]) -> Job:
        frame = source.mapInArrow(batches_of(encrypt), "cell binary")
        return lambda: frame.write.format("noop").mode("overwrite").save()

    return spark.stop, {"secureml": job(spec_arrow(spec)), "floor": job(floor_arrow(key))}


def dask_jobs(
    emails: pa.Array, spec: KeyManagerSpec, key: bytes
) -> tuple[Callable[[], None], dict[str, Job]]:
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=SLOTS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    client.wait_for_workers(SLOTS, timeout=60)
    step = -(-len(emails) // PARTITIONS)
    parts = client.scatter([emails.slice(i, step) for i in range(0, len(emails), step)])

    def job(encrypt: Callable[[Any], Any]) -> Job:
        task = count_of(encrypt)
        return lambda: sum(client.gather(client.map(task, parts, pure=False)))

    def close() -> None:
        client.close()
        cluster.close()

    return close, {"secureml": job(spec_arrow(spec)), "floor": job(floor_arrow(key))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds")
    args = parser.parse_args()
    rows = 400_000 if args.quick else 2_000_000
    rounds = 3 if args.quick else 5
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas")
    emails = pa.array([f"user{i:08d}@example.com" for i in range(rows)])

    with tempfile.TemporaryDirectory() as folder:
        bao = Audited(Path(folder))
        try:
            root = KeyManager(
                vault_url=bao.server.address, vault_token=bao.server.root_token, vault_path=bao.path
            )
            root.generate_key(KEY)
            parent = KeyManager(
                vault_url=bao.server.address,
                vault_auth=AppRoleAuth(bao.role_id, bao.secret_id, mount=bao.mount),
                vault_path=bao.path,
            )
            spec = parent.spec(credential_env=SECRET_VAR)
            # The workers (Spark's Python workers, Dask's processes) inherit it.
            os.environ[SECRET_VAR] = bao.secret_id
            # The floor's key: 64 random bytes, as AES-SIV takes (secureml derives its own).
            key = os.urandom(64)
            results: dict[str, tuple[dict[str, float], int, int]] = {}
            for name, start in (("Spark mapInArrow", spark_jobs), ("Dask client.map", dask_jobs)):
                before = bao.logins()
                stop, jobs = start(emails, spec, key)
                try:
                    medians = rounds_of(jobs, rounds)
                finally:
                    stop()
                results[name] = (medians, bao.logins() - before, rounds + 1)
            _check(root, spec, emails)
        finally:
            bao.stop()

    print(
        f"secureml on workers: Python {platform.python_version()}, pyspark "
        f"{version('pyspark')}, distributed {version('distributed')}, cryptography "
        f"{version('cryptography')}; {rows:,} rows in {PARTITIONS} partitions on {SLOTS} "
        f"worker processes; medians of {rounds} interleaved rounds (after a warm-up)\n"
    )
    print(
        "| job | floor (AESSIV, key bound) | secureml (spec + column cipher) | ratio "
        "| k rows/s secureml | target | met | logins / secureml jobs |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | :---: | ---: |")
    for name, (medians, logins, runs) in results.items():
        floor, ours = medians["floor"], medians["secureml"]
        ratio = ours / floor
        met = "yes" if ratio <= TARGET else "**NO**"
        print(
            f"| {name} | {floor * 1e3:.0f} ms | {ours * 1e3:.0f} ms | {ratio:.3f} | "
            f"{rows / ours / 1e3:,.0f} | ≤ {TARGET:.2f} | {met} | {logins} / {runs} |"
        )
    print(f"\nlogins: one per worker process ({SLOTS} per framework) for all its jobs")
    return 0


def _check(root: KeyManager, spec: KeyManagerSpec, emails: pa.Array) -> None:
    """The cells the spec's cipher makes are the root manager's (same key, same cells)."""
    sample = emails.slice(0, 1000)
    cells = spec_arrow(spec)(sample)
    if root.column_cipher(KEY, column=COLUMN).decrypt(cells, text=True).to_pylist() != (
        sample.to_pylist()
    ):
        raise SystemExit("secureml cells do not decrypt to the input")


if __name__ == "__main__":
    raise SystemExit(main())
