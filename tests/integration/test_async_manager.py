"""AsyncKeyManager against the real OpenBao server (issue 15): single-flight across
coroutines and threads, a free event loop while the server is slow or a Raft leader dies,
cancellation and timeouts, token renewal and re-login, and errors without secrets in
their frames. Vault is never mocked: slowness comes from tests/support/fault_proxy.py in
front of the real server, and every read it counts is a real one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    AsyncKeyManager,
    KeyFormatError,
    KeyManager,
    PermissionDeniedError,
    VaultUnavailableError,
)
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.frames import rendered_locals
from tests.support.loop_lag import assert_loop_free, idle_lag, measuring_lag
from tests.support.raft import RaftCluster


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as running:
        yield running


def manager_via(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, **kwargs: Any
) -> KeyManager:
    options: dict[str, Any] = {"timeout": 5, "vault_kv_version": 2, "use_env_fallback": False}
    options.update(kwargs)
    return KeyManager(
        vault_url=proxy.origin,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        **options,
    )


def seed(server: DevServer, vault_path: str, name: str, value: str) -> None:
    server.bao("kv", "put", "-mount=secret", f"{vault_path}/{name}", f"value={value}")


def reads_of(proxy: FaultProxy, vault_path: str, name: str) -> int:
    return len(proxy.hits_for(f"/v1/secret/data/{vault_path}/{name}"))


def warmed(proxy: FaultProxy, km: KeyManager) -> None:
    """Log in (the dev root token's lookup) so the only requests left are the reads."""
    km.status()
    proxy.hits.clear()


# -- single flight -----------------------------------------------------------------------


def test_1000_coroutines_on_a_cold_name_cause_one_vault_read(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    seed(bao_server, vault_path, "cold", "v1")
    km = manager_via(proxy, bao_server, vault_path)
    warmed(proxy, km)
    proxy.inject(Fault.drip(0.0005, path_prefix=f"/v1/secret/data/{vault_path}/cold"))

    async def main() -> list[object]:
        async with AsyncKeyManager(km) as akm:
            return await asyncio.gather(*(akm.get_secret("cold") for _ in range(1000)))

    assert asyncio.run(main()) == ["v1"] * 1000
    assert reads_of(proxy, vault_path, "cold") == 1
    stats = km.stats()
    assert stats.backend_reads == 1
    assert stats.misses == 1  # the 999 others joined the one pool job, not the core


class _Upper(KeyManager):
    """A subclass that changes what ``get_secret`` answers (and counts its calls)."""

    calls = 0

    def get_secret(self, secret_name: str, default: Any = None, **kwargs: Any) -> Any:
        type(self).calls += 1
        return str(super().get_secret(secret_name, default, **kwargs)).upper()


class _Legacy(KeyManager):
    """An override written without ``version`` (it predates it): still called as given."""

    calls = 0

    def get_secret(self, secret_name: str, default: Any = None) -> Any:  # type: ignore[override]
        type(self).calls += 1
        return str(super().get_secret(secret_name, default)).upper()


def test_a_subclass_get_secret_answers_every_async_call_cold_and_cached(
    bao_server: DevServer, vault_path: str
) -> None:
    seed(bao_server, vault_path, "shout", "quiet")
    km = _Upper(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        use_env_fallback=False,
    )

    async def main() -> list[object]:
        async with AsyncKeyManager(km) as akm:
            cold = await asyncio.gather(*(akm.get_secret("shout") for _ in range(5)))
            warm = await akm.get_secret("shout")  # a cache hit: still the override's
            return [*cold, warm]

    _Upper.calls = 0
    assert asyncio.run(main()) == ["QUIET"] * 6
    assert _Upper.calls == 6
    assert km.stats().backend_reads == 1  # the override's calls share the core's read


def test_an_override_is_called_with_the_arguments_given_and_seen_on_the_instance_too(
    bao_server: DevServer, vault_path: str
) -> None:
    seed(bao_server, vault_path, "shout", "quiet")
    settings: dict[str, Any] = {
        "vault_url": bao_server.address,
        "vault_token": bao_server.root_token,
        "vault_path": vault_path,
        "use_env_fallback": False,
    }
    legacy = _Legacy(**settings)
    patched = KeyManager(**settings)
    real = patched.get_secret
    patched.get_secret = lambda *a, **k: f"patched-{real(*a, **k)}"  # type: ignore[method-assign]

    async def main() -> list[object]:
        async with AsyncKeyManager(legacy) as old, AsyncKeyManager(patched) as new:
            return [
                await old.get_secret("shout"),
                await old.get_secret("missing", "fallback"),
                await new.get_secret("shout"),
                await new.get_secret("shout"),  # a hit: still the patched method's
            ]

    _Legacy.calls = 0
    assert asyncio.run(main()) == ["QUIET", "FALLBACK", "patched-quiet", "patched-quiet"]
    assert _Legacy.calls == 2


@pytest.mark.parametrize("first", ["threads", "coroutines"])
def test_threads_and_coroutines_on_one_cold_name_cause_one_vault_read(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, first: str
) -> None:
    seed(bao_server, vault_path, "mixed", "v2")
    km = manager_via(proxy, bao_server, vault_path)
    warmed(proxy, km)
    # The one read takes ~0.4 s: whoever comes second finds it in flight.
    proxy.inject(Fault.drip(0.001, path_prefix=f"/v1/secret/data/{vault_path}/mixed"))
    thread_results: list[object] = []
    start_threads = threading.Event()

    def thread_reader() -> None:
        start_threads.wait(10)
        thread_results.append(km.get_secret("mixed"))

    threads = [threading.Thread(target=thread_reader) for _ in range(16)]
    for thread in threads:
        thread.start()

    async def main() -> list[object]:
        async with AsyncKeyManager(km) as akm:
            if first == "threads":
                start_threads.set()
                while reads_of(proxy, vault_path, "mixed") == 0:
                    await asyncio.sleep(0.001)
            tasks = [asyncio.create_task(akm.get_secret("mixed")) for _ in range(500)]
            if first == "coroutines":
                while reads_of(proxy, vault_path, "mixed") == 0:
                    await asyncio.sleep(0.001)
                start_threads.set()
            return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["v2"] * 500
    for thread in threads:
        thread.join(10)
    assert thread_results == ["v2"] * 16
    assert reads_of(proxy, vault_path, "mixed") == 1
    assert km.stats().backend_reads == 1


# -- the event loop stays free -----------------------------------------------------------


def test_the_loop_stays_free_while_a_slow_server_drips_its_answers(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    for index in range(8):
        seed(bao_server, vault_path, f"slow{index}", f"s{index}")
    seed(bao_server, vault_path, "hot", "h")
    km = manager_via(proxy, bao_server, vault_path, cache_ttl=60)
    warmed(proxy, km)
    km.get_secret("hot")
    prefix = f"/v1/secret/data/{vault_path}/slow"
    proxy.inject(*(Fault.drip(0.002, path_prefix=prefix) for _ in range(8)))

    async def main() -> tuple[list[object], int, Any]:
        hits = 0
        idle = await idle_lag()
        async with AsyncKeyManager(km) as akm, measuring_lag() as lag:
            slow = asyncio.gather(*(akm.get_secret(f"slow{i}") for i in range(8)))
            while not slow.done():  # cache hits on the loop meanwhile, many per tick
                for _ in range(20):
                    assert await akm.get_secret("hot") == "h"
                hits += 20
                await asyncio.sleep(0.001)
            values = await slow
        print(f"loop lag {lag}, idle {idle}")
        await assert_loop_free(lag, idle)
        return values, hits, lag

    started = time.monotonic()
    values, hits, lag = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert values == [f"s{i}" for i in range(8)]
    assert elapsed > 0.5, "the answers were not slow: the proxy did not drip"
    assert hits > 1000
    assert len(lag.samples) > 200, lag


# -- cancellation, timeouts ----------------------------------------------------------------


@pytest.mark.parametrize("after", [0.0, 0.05, 0.2])
def test_a_cancelled_first_caller_leaves_the_read_to_the_others_and_the_cache(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str, after: float
) -> None:
    seed(bao_server, vault_path, "c", "cv")
    km = manager_via(proxy, bao_server, vault_path)
    warmed(proxy, km)
    proxy.inject(Fault.drip(0.0008, path_prefix=f"/v1/secret/data/{vault_path}/c"))

    async def main() -> None:
        async with AsyncKeyManager(km) as akm:
            first = asyncio.create_task(akm.get_secret("c"))  # starts the pool job
            await asyncio.sleep(0)
            others = [asyncio.create_task(akm.get_secret("c")) for _ in range(100)]
            await asyncio.sleep(after)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert await asyncio.gather(*others) == ["cv"] * 100
            assert await akm.get_secret("c") == "cv"  # a hit: cached, not poisoned

    asyncio.run(main())
    assert reads_of(proxy, vault_path, "c") == 1
    assert km.stats().backend_reads == 1


def test_every_waiter_cancelled_the_read_still_lands_in_the_cache(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    seed(bao_server, vault_path, "orphan", "ov")
    km = manager_via(proxy, bao_server, vault_path)
    warmed(proxy, km)
    proxy.inject(Fault.drip(0.0008, path_prefix=f"/v1/secret/data/{vault_path}/orphan"))

    async def main() -> None:
        async with AsyncKeyManager(km) as akm:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(akm.get_secret("orphan") for _ in range(50))), 0.05
                )
            flights = akm._flights[asyncio.get_running_loop()]
            assert list(flights) == [("orphan", None)]  # owned by the pool job alone
            while flights:
                await asyncio.sleep(0.01)
            assert await asyncio.wait_for(akm.get_secret("orphan"), 0.05) == "ov"

    asyncio.run(main())
    assert reads_of(proxy, vault_path, "orphan") == 1
    assert km.get_secret("orphan") == "ov"
    assert km.stats().backend_reads == 1


def test_the_managers_own_deadline_ends_every_waiter_and_the_next_read_works(
    proxy: FaultProxy, bao_server: DevServer, vault_path: str
) -> None:
    seed(bao_server, vault_path, "late", "lv")
    km = manager_via(proxy, bao_server, vault_path, timeout=0.5, retries=0, cache_ttl=0)
    warmed(proxy, km)
    proxy.inject(Fault.drip(0.05, path_prefix=f"/v1/secret/data/{vault_path}/late"))

    async def main() -> tuple[list[object], float]:
        async with AsyncKeyManager(km) as akm, measuring_lag():
            started = time.monotonic()
            outcome = await asyncio.gather(
                *(akm.get_secret("late") for _ in range(100)), return_exceptions=True
            )
            took = time.monotonic() - started
            assert await akm.get_secret("late") == "lv"  # no fault queued: it answers
            return outcome, took

    outcome, took = asyncio.run(main())
    assert all(isinstance(e, VaultUnavailableError) for e in outcome), outcome[:3]
    assert len({id(e) for e in outcome}) == 100
    assert took < 1.5


# -- tokens under asyncio ------------------------------------------------------------------


def bao_json(server: DevServer, *args: str) -> dict[str, Any]:
    result = json.loads(server.bao(*args, "-format=json").stdout)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def approle(bao_server: DevServer) -> str:
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    bao_server.bao("auth", "enable", f"-path={mount}", "approle")
    policy = 'path "secret/data/*" { capabilities = ["create", "read", "update"] }'
    bao_server.bao("policy", "write", "async-lifecycle", "-", input=policy.encode())
    return mount


def role_auth(server: DevServer, mount: str, **settings: str) -> AppRoleAuth:
    name = f"r{uuid.uuid4().hex[:8]}"
    fields = {"token_policies": "async-lifecycle", **settings}
    server.bao("write", f"auth/{mount}/role/{name}", *(f"{k}={v}" for k, v in fields.items()))
    role_id = bao_json(server, "read", f"auth/{mount}/role/{name}/role-id")["data"]["role_id"]
    secret = bao_json(server, "write", "-f", f"auth/{mount}/role/{name}/secret-id")
    return AppRoleAuth(str(role_id), str(secret["data"]["secret_id"]), mount=mount)


def test_tokens_renew_and_log_in_again_under_asyncio(
    bao_server: DevServer, vault_path: str, approle: str
) -> None:
    seed(bao_server, vault_path, "x", "v")
    auth = role_auth(bao_server, approle, token_ttl="2s", token_max_ttl="4s")
    km = KeyManager(
        vault_url=bao_server.address,
        vault_auth=auth,
        vault_path=vault_path,
        use_env_fallback=False,
        cache_ttl=0,  # every read reaches the server: this is about tokens
    )

    async def reader(akm: AsyncKeyManager, until: float, errors: list[BaseException]) -> int:
        reads = 0
        while time.monotonic() < until:
            try:
                assert await akm.get_secret("x") == "v"
                reads += 1
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.02)
        return reads

    async def main() -> tuple[int, list[BaseException], Any]:
        errors: list[BaseException] = []
        idle = await idle_lag()
        async with AsyncKeyManager(km) as akm, measuring_lag() as lag:
            until = time.monotonic() + 6
            reads = await asyncio.gather(*(reader(akm, until, errors) for _ in range(8)))
            # Revoked under our feet: the next awaited read logs in again.
            backend = km._core.vault
            assert backend is not None
            state = backend.session._state
            assert state is not None
            # (The CLI call blocks: run it off the loop, which is being measured.)
            await asyncio.to_thread(bao_server.bao, "token", "revoke", state.login.token)
            assert await akm.get_secret("x") == "v"
        print(f"loop lag {lag}, idle {idle}")
        await assert_loop_free(lag, idle)
        return sum(reads), errors, lag

    logins_before = km.stats().logins
    reads, errors, _ = asyncio.run(main())
    assert errors == []
    assert reads > 100
    stats = km.stats()
    # 4 s tokens over 6 s of reads, renewed every ~1.3 s, then one more after the revoke.
    assert stats.renewals >= 1, stats
    assert stats.logins - logins_before >= 3, stats


# -- errors carry no secrets -----------------------------------------------------------------


def test_errors_of_async_calls_carry_no_secret_in_any_frame(
    bao_server: DevServer, vault_path: str, tmp_path: Path
) -> None:
    rules = f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}'
    policy = f"p-{uuid.uuid4().hex[:8]}"
    bao_server.bao("policy", "write", policy, "-", input=rules.encode())
    token = bao_server.bao("token", "create", f"-policy={policy}", "-field=token").stdout.decode()
    seed(bao_server, vault_path, "plain", "not-a-key-at-all")
    reader = KeyManager(
        vault_url=bao_server.address,
        vault_token=token,
        vault_path=vault_path,
        use_env_fallback=False,
        declared_keys=["plain"],
    )
    written = f"written-{uuid.uuid4().hex}"
    plaintext = f"plaintext-{uuid.uuid4().hex}".encode()
    source = tmp_path / "plain.txt"
    source.write_bytes(plaintext)

    async def main() -> list[BaseException]:
        caught: list[BaseException] = []
        async with AsyncKeyManager(reader) as akm:
            with pytest.raises(PermissionDeniedError) as refused:
                await akm.set_secret("mine", written)
            caught.append(refused.value)
            with pytest.raises(KeyFormatError) as bad_key:
                await akm.encrypt(plaintext, "plain")
            caught.append(bad_key.value)
            with pytest.raises(KeyFormatError) as bad_stream:
                await akm.encrypt_file(source, tmp_path / "out.enc", "plain")
            caught.append(bad_stream.value)
        return caught

    for error in asyncio.run(main()):
        leaks = [
            f"{where}: {name}"
            for where, name, value in rendered_locals(error)
            for secret in (written, plaintext.decode(), token, "not-a-key-at-all")
            if secret in value
        ]
        assert leaks == [], (type(error).__name__, leaks)
        assert token not in str(error)
        assert written not in str(error)


# -- a Raft leader dies (last: it kills a node of the module's cluster) ----------------------


def test_the_loop_stays_free_while_the_raft_leader_is_killed(raft: RaftCluster) -> None:
    km = KeyManager(
        vault_url=raft.addresses,
        vault_token=raft.root_token,
        vault_path="async-failover",
        use_env_fallback=False,
        cache_ttl=0,
        timeout=2,
        retries=6,  # rides out an election (1.5-2.5 s)
    )
    km.set_secret("hot", "v")

    async def reader(akm: AsyncKeyManager, stop: asyncio.Event, errors: list[Exception]) -> int:
        reads = 0
        while not stop.is_set():
            try:
                assert await akm.get_secret("hot") == "v"
                reads += 1
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)  # ~1,000 reads/s in all, not a GIL-bound spin
        return reads

    async def main() -> tuple[int, int, list[Exception], Any]:
        errors: list[Exception] = []
        stop = asyncio.Event()
        idle = await idle_lag()
        async with AsyncKeyManager(km, threads=8) as akm, measuring_lag() as lag:
            readers = [asyncio.create_task(reader(akm, stop, errors)) for _ in range(8)]
            await asyncio.sleep(0.7)
            leader = await asyncio.to_thread(raft.leader)  # the test's own blocking calls
            await asyncio.to_thread(raft.kill, leader)  # blocking: never on the loop
            await asyncio.to_thread(raft.wait_for_leader, leader)
            failovers = km.stats().failovers
            await asyncio.sleep(0.7)  # reads go on against the new leader
            stop.set()
            reads = sum(await asyncio.gather(*readers))
        print(f"loop lag {lag}, idle {idle}")
        await assert_loop_free(lag, idle)
        return reads, failovers, errors, lag

    reads, failovers, errors, _ = asyncio.run(main())
    assert errors == [], f"{len(errors)} reads failed, e.g. {errors[0]!r}"
    assert reads > 100
    assert failovers >= 1
