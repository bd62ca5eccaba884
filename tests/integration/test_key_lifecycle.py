"""Key lifecycle on a real OpenBao KV v2 mount: generate, rotate, versions, retire."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AccessEvent,
    ConfigurationError,
    KeyManagementError,
    KeyManager,
    PermissionDeniedError,
    SecretNotFoundError,
    UnsupportedOperationError,
    VaultUnavailableError,
    VersionConflictError,
)
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.threads import all_at_once


def kv_json(server: DevServer, *args: str) -> dict[str, Any]:
    """``bao kv <command...> -format=json <flags and path>``'s data."""
    split = next(i for i, a in enumerate(args) if a.startswith("-"))
    argv = [*args[:split], "-format=json", *args[split:]]
    return json.loads(server.bao("kv", *argv).stdout)["data"]  # type: ignore[no-any-return]


def test_generate_rotate_three_times_and_read_every_version(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    assert vault_manager.generate_key("model-key") == 1
    keys = {1: vault_manager.get_encryption_key("model-key")}
    for expected in (2, 3, 4):
        assert vault_manager.rotate_key("model-key") == expected
        # The cache never hides a rotation made through this manager.
        keys[expected] = vault_manager.get_encryption_key("model-key")
    assert len(set(keys.values())) == 4
    assert all(len(k) == 32 for k in keys.values())
    for version, key in keys.items():
        assert vault_manager.get_encryption_key("model-key", version=version) == key
        assert vault_manager.get_secret("model-key", version=version) == key
    assert vault_manager.get_key_ring("model-key") == keys
    versions = vault_manager.key_versions("model-key")
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert [v.is_current for v in versions] == [False, False, False, True]
    assert all(v.live and v.created_at.tzinfo is not None for v in versions)
    assert versions[0].created_at <= versions[-1].created_at
    # What the bao CLI sees is the same key, in the documented bytes layout.
    stored = kv_json(bao_server, "get", "-mount=secret", "-version=2", f"{vault_path}/model-key")
    assert stored["data"] == {"value": base64.b64encode(keys[2]).decode(), "encoding": "base64"}


def test_rotation_keeps_the_length_and_labels(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    labels = {"purpose": "feature-store", "owner": "ml-platform", "rotation": "90d"}
    vault_manager.generate_key("long", key_bytes=64, metadata=labels)
    vault_manager.rotate_key("long")
    assert len(vault_manager.get_encryption_key("long", 64)) == 64
    metadata = kv_json(bao_server, "metadata", "get", "-mount=secret", f"{vault_path}/long")
    assert metadata["custom_metadata"] == {**labels, "secureml-key": "1"}


def test_a_text_key_written_by_the_cli_rotates_at_its_length(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/hexkey", "value=" + "ab" * 24)
    with pytest.raises(ConfigurationError, match="not a key made by generate_key"):
        vault_manager.rotate_key("hexkey")  # nothing says it is a key: never assumed
    assert vault_manager.rotate_key("hexkey", force=True) == 2
    assert vault_manager.rotate_key("hexkey") == 3  # labelled as a key by the forced one
    assert len(vault_manager.get_encryption_key("hexkey", 24)) == 24
    assert vault_manager.get_encryption_key("hexkey", 24, version=1) == bytes.fromhex("ab" * 24)


def test_generate_refuses_to_replace_unless_overwrite(vault_manager: KeyManager) -> None:
    vault_manager.generate_key("k")
    first = vault_manager.get_encryption_key("k")
    with pytest.raises(ConfigurationError, match=r"'k' already exists.*overwrite=True"):
        vault_manager.generate_key("k")
    assert vault_manager.get_encryption_key("k") == first
    assert [v.version for v in vault_manager.key_versions("k")] == [1]
    assert vault_manager.generate_key("k", overwrite=True) == 2
    assert vault_manager.get_encryption_key("k") != first
    assert vault_manager.get_encryption_key("k", version=1) == first


def test_two_managers_rotating_at_once_cannot_both_win(
    bao_server: DevServer, vault_path: str
) -> None:
    managers = [
        KeyManager(bao_server.address, bao_server.root_token, vault_path, use_env_fallback=False)
        for _ in range(2)
    ]
    managers[0].generate_key("contested")
    # Both read version 1, then both write: check-and-set lets exactly one land.
    barrier = threading.Barrier(2)
    for manager in managers:
        backend: Any = manager._core.primary
        real = backend.put_version

        def racing(*args: Any, _real: Any = real, **kwargs: Any) -> int:
            barrier.wait(timeout=10)
            return int(_real(*args, **kwargs))

        backend.put_version = racing
    outcomes: list[object] = []

    def rotate(manager: KeyManager) -> None:
        try:
            outcomes.append(manager.rotate_key("contested"))
        except VersionConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=rotate, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(type, outcomes), key=str) == sorted([int, VersionConflictError], key=str)
    assert 2 in outcomes
    conflict = next(o for o in outcomes if isinstance(o, VersionConflictError))
    assert "no longer at version 1" in str(conflict)
    assert [v.version for v in managers[0].key_versions("contested")] == [1, 2]


def test_many_concurrent_rotations_lose_nothing(bao_server: DevServer, vault_path: str) -> None:
    manager = KeyManager(bao_server.address, bao_server.root_token, vault_path)
    manager.generate_key("busy")
    results = all_at_once(8, lambda: manager.rotate_key("busy"))
    won = sorted(r for r in results if isinstance(r, int))
    lost = [r for r in results if isinstance(r, VersionConflictError)]
    assert len(won) + len(lost) == 8
    assert won
    assert won == list(range(2, 2 + len(won)))  # no version was written twice
    assert manager.key_versions("busy")[-1].version == 1 + len(won)


def test_age_based_rotation_with_an_injected_clock(vault_manager: KeyManager) -> None:
    vault_manager.generate_key("cron-key")
    born = vault_manager.key_versions("cron-key")[0].created_at
    ninety_days = timedelta(days=90)
    assert vault_manager.rotate_if_older_than("cron-key", ninety_days, now=born) is None
    almost = born + ninety_days - timedelta(seconds=1)
    assert vault_manager.rotate_if_older_than("cron-key", ninety_days, now=almost) is None
    due = born + ninety_days
    assert vault_manager.rotate_if_older_than("cron-key", ninety_days, now=due) == 2
    # Seconds work too; the new version is young again.
    assert vault_manager.rotate_if_older_than("cron-key", 3600) is None


def test_racing_crons_rotate_once(bao_server: DevServer, vault_path: str) -> None:
    managers = [KeyManager(bao_server.address, bao_server.root_token, vault_path) for _ in range(4)]
    managers[0].generate_key("nightly")
    time.sleep(1.2)
    barrier = threading.Barrier(4)
    results: list[object] = []
    lock = threading.Lock()

    def cron(manager: KeyManager) -> None:
        barrier.wait()
        try:
            outcome: object = manager.rotate_if_older_than("nightly", 1)
        except Exception as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=cron, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r for r in results if r is not None) == [2]  # type: ignore[type-var]
    assert [v.version for v in managers[0].key_versions("nightly")] == [1, 2]


def test_soft_delete_then_undelete(
    bao_server: DevServer, vault_path: str, vault_manager: KeyManager
) -> None:
    manager = KeyManager(
        bao_server.address, bao_server.root_token, vault_path, use_env_fallback=False
    )
    manager.generate_key("soft")
    key = manager.get_encryption_key("soft")
    manager.delete_secret("soft")
    (record,) = manager.key_versions("soft")
    assert record.deleted
    assert not record.destroyed
    assert record.deleted_at is not None
    with pytest.raises(SecretNotFoundError):
        manager.get_encryption_key("soft")
    with pytest.raises(SecretNotFoundError, match=r"version 1 was deleted.*undelete"):
        manager.get_encryption_key("soft", version=1)
    bao_server.bao("kv", "undelete", "-mount=secret", "-versions=1", f"{vault_path}/soft")
    manager.invalidate("soft")
    assert manager.get_encryption_key("soft") == key


def test_destroy_versions_and_everything(vault_manager: KeyManager) -> None:
    vault_manager.generate_key("old")
    vault_manager.rotate_key("old")
    vault_manager.rotate_key("old")
    vault_manager.get_secret("old", version=1)  # cached: a delete must still win
    vault_manager.delete_secret("old", versions=[1], destroy=True)
    vault_manager.delete_secret("old", versions=[2])
    states = {v.version: (v.deleted, v.destroyed) for v in vault_manager.key_versions("old")}
    assert states == {1: (False, True), 2: (True, False), 3: (False, False)}
    with pytest.raises(SecretNotFoundError, match="version 1 was destroyed"):
        vault_manager.get_secret("old", version=1)
    with pytest.raises(SecretNotFoundError, match=r"no version 7 \(the latest is 3"):
        vault_manager.get_secret("old", version=7)
    assert list(vault_manager.get_key_ring("old")) == [3]
    vault_manager.delete_secret("old", destroy=True)
    with pytest.raises(SecretNotFoundError, match="generate_key"):
        vault_manager.key_versions("old")
    assert vault_manager.list_secrets() == []


def test_a_rotation_that_would_drop_a_live_version_is_refused(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    vault_manager.generate_key("short-history")
    bao_server.bao(
        "kv", "metadata", "put", "-mount=secret", "-max-versions=3", f"{vault_path}/short-history"
    )
    assert vault_manager.rotate_key("short-history") == 2
    assert vault_manager.rotate_key("short-history") == 3
    with pytest.raises(KeyManagementError, match=r"drop version\(s\) 1 for good.*destroy=True"):
        vault_manager.rotate_key("short-history")
    assert vault_manager.key_versions("short-history")[-1].version == 3
    vault_manager.delete_secret("short-history", versions=[1], destroy=True)
    assert vault_manager.rotate_key("short-history") == 4
    assert [v.version for v in vault_manager.key_versions("short-history")] == [2, 3, 4]


def test_list_secrets_walks_folders(vault_manager: KeyManager) -> None:
    for name in ("a", "models/m1", "models/m2", "models/deep/x", "mx"):
        vault_manager.set_secret(name, "v")
    assert vault_manager.list_secrets() == [
        "a",
        "models/deep/x",
        "models/m1",
        "models/m2",
        "mx",
    ]
    assert vault_manager.list_secrets("models/") == ["models/deep/x", "models/m1", "models/m2"]
    assert vault_manager.list_secrets("m") == [
        "models/deep/x",
        "models/m1",
        "models/m2",
        "mx",
    ]
    assert vault_manager.list_secrets("models/m") == ["models/m1", "models/m2"]
    assert vault_manager.list_secrets("nothing/") == []


def test_missing_keys_and_versions_are_clear(vault_manager: KeyManager) -> None:
    for call in (
        lambda: vault_manager.rotate_key("ghost"),
        lambda: vault_manager.key_versions("ghost"),
        lambda: vault_manager.get_key_ring("ghost"),
        lambda: vault_manager.rotate_if_older_than("ghost", 1),
        lambda: vault_manager.get_secret("ghost", version=1),
    ):
        with pytest.raises(SecretNotFoundError, match="'ghost'"):
            call()
    vault_manager.set_secret("config", {"host": "db"})
    with pytest.raises(ConfigurationError, match="not a key made by generate_key"):
        vault_manager.rotate_key("config")
    with pytest.raises(KeyManagementError, match="not key material"):
        vault_manager.rotate_key("config", force=True)


def test_rotation_never_destroys_an_ordinary_secret(vault_manager: KeyManager) -> None:
    """`rotate_key("api_key")` on a text secret used to replace "abc" with 2 random bytes."""
    vault_manager.set_secret("api_key", "abc")
    with pytest.raises(ConfigurationError, match="--force"):
        vault_manager.rotate_key("api_key")
    with pytest.raises(ConfigurationError, match="not a key made by generate_key"):
        vault_manager.rotate_if_older_than("api_key", 1)
    assert vault_manager.get_secret("api_key") == "abc"
    assert [v.version for v in vault_manager.key_versions("api_key")] == [1]
    # Forced, as a key: never fewer than 16 bytes.
    assert vault_manager.rotate_key("api_key", force=True) == 2
    assert len(vault_manager.get_key_ring("api_key")[2]) >= 16


def test_versioned_reads_are_cached_and_audited(bao_server: DevServer, vault_path: str) -> None:
    events: list[AccessEvent] = []
    manager = KeyManager(
        bao_server.address, bao_server.root_token, vault_path, audit_hook=events.append
    )
    assert manager.generate_key("audited") == 1
    assert manager.rotate_key("audited") == 2
    before = manager.stats().backend_reads
    for _ in range(3):
        manager.get_encryption_key("audited", version=2)
    assert manager.stats().backend_reads == before + 1  # a version never changes
    seen = [(e.operation, e.version, e.outcome) for e in events]
    assert seen[:2] == [("generate_key", 1, "ok"), ("rotate_key", 2, "ok")]
    assert seen[-2:] == [("get_encryption_key", 2, "cached")] * 2
    with pytest.raises(SecretNotFoundError):
        manager.get_secret("audited", version=9)
    assert (events[-1].version, events[-1].outcome) == (9, "error")


def test_versions_are_not_served_from_the_environment(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_ENV_ONLY", "hex:" + "00" * 32)
    manager = KeyManager(bao_server.address, bao_server.root_token, vault_path)
    assert manager.get_encryption_key("env_only") == bytes(32)
    with pytest.raises(SecretNotFoundError, match="does not exist"):
        manager.get_encryption_key("env_only", version=1)


@pytest.fixture(scope="module")
def kv1_mount(bao_server: DevServer) -> str:
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "-version=1", "kv")
    return mount


def test_kv_v1_has_no_versions_but_lists_and_destroys(
    bao_server: DevServer, kv1_mount: str, vault_path: str
) -> None:
    manager = KeyManager(
        bao_server.address, bao_server.root_token, vault_path, vault_mount=kv1_mount
    )
    manager.set_secret("plain", b"k" * 32)
    for call in (
        lambda: manager.generate_key("fresh"),
        lambda: manager.rotate_key("plain"),
        lambda: manager.key_versions("plain"),
        lambda: manager.get_key_ring("plain"),
        lambda: manager.rotate_if_older_than("plain", 1),
        lambda: manager.get_secret("plain", version=1),
        lambda: manager.delete_secret("plain"),
        lambda: manager.delete_secret("plain", versions=[1], destroy=True),
    ):
        with pytest.raises(UnsupportedOperationError, match="KV v1"):
            call()
    assert manager.list_secrets() == ["plain"]
    manager.delete_secret("plain", destroy=True)
    assert manager.list_secrets() == []
    assert manager.get_secret("plain", default="gone") == "gone"


def test_a_rotation_whose_answer_is_lost_is_not_mistaken_for_a_conflict(
    bao_server: DevServer, vault_path: str
) -> None:
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(proxy.origin, bao_server.root_token, vault_path)
        manager.generate_key("lossy")
        assert manager.rotate_key("lossy") == 2
        manager.get_encryption_key("lossy", version=2)  # cached: the next data call is the write
        # Vault makes version 3, the answer never arrives, the transport replays the
        # check-and-set write, and Vault says "conflict" about our own version 3.
        proxy.inject(Fault.drop(forward=True, path_prefix="/v1/secret/data/"))
        assert manager.rotate_key("lossy") == 3
        assert proxy.pending() == 0
        assert len([h for h in proxy.hits_for("/data/") if h.method == "POST"]) == 4
        assert [v.version for v in manager.key_versions("lossy")] == [1, 2, 3]


def test_rotation_during_an_outage_writes_nothing_and_old_versions_serve_stale(
    bao_server: DevServer, vault_path: str
) -> None:
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(
            proxy.origin, bao_server.root_token, vault_path, cache_ttl=0.2, retries=0
        )
        manager.generate_key("outage")
        key = manager.get_encryption_key("outage", version=1)
        time.sleep(0.3)  # expired: only max_stale can serve it now
        proxy.inject(*[Fault.status(503) for _ in range(6)])
        assert manager.get_encryption_key("outage", version=1) == key
        assert manager.stats().stale_serves == 1
        with pytest.raises(VaultUnavailableError):
            manager.rotate_key("outage")
    direct = KeyManager(bao_server.address, bao_server.root_token, vault_path)
    assert [v.version for v in direct.key_versions("outage")] == [1]


@pytest.fixture
def kv2_mount(bao_server: DevServer) -> str:
    mount = f"kv2-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "-version=2", "kv")
    return mount


def test_the_guard_uses_the_larger_of_the_key_and_mount_limits(
    bao_server: DevServer, kv2_mount: str
) -> None:
    bao_server.bao("write", f"{kv2_mount}/config", "max_versions=3")
    manager = KeyManager(bao_server.address, bao_server.root_token, vault_mount=kv2_mount)
    manager.generate_key("mount-limited")
    manager.rotate_key("mount-limited")
    manager.rotate_key("mount-limited")
    with pytest.raises(KeyManagementError, match=r"drop version\(s\) 1 .*keeps 3"):
        manager.rotate_key("mount-limited")
    # A key's own, larger limit wins over the mount's (as OpenBao keeps max of both).
    bao_server.bao(
        "kv", "metadata", "put", f"-mount={kv2_mount}", "-max-versions=5", "secureml/roomy"
    )
    manager.generate_key("roomy")
    assert [manager.rotate_key("roomy") for _ in range(4)] == [2, 3, 4, 5]
    with pytest.raises(KeyManagementError, match="keeps 5"):
        manager.rotate_key("roomy")


def limited_token(server: DevServer, policy: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.bao("policy", "write", name, "-", input=policy.encode())
    return server.bao("token", "create", f"-policy={name}", "-field=token").stdout.decode().strip()


def test_an_unknowable_limit_refuses_rotation_until_the_key_sets_one(
    bao_server: DevServer, kv2_mount: str
) -> None:
    bao_server.bao("write", f"{kv2_mount}/config", "max_versions=2")
    token = limited_token(
        bao_server,
        f"""
path "{kv2_mount}/data/secureml/*"     {{ capabilities = ["read", "create", "update"] }}
path "{kv2_mount}/metadata/secureml/*" {{ capabilities = ["read", "list", "create", "update"] }}
""",
    )
    manager = KeyManager(bao_server.address, token, vault_mount=kv2_mount, vault_kv_version=2)
    manager.generate_key("blind")
    # Guessing Vault's default (10) here would let the next rotations drop version 1.
    with pytest.raises(KeyManagementError, match=r"cannot tell how many versions.*config"):
        manager.rotate_key("blind")
    bao_server.bao(
        "kv", "metadata", "put", f"-mount={kv2_mount}", "-max-versions=4", "secureml/blind"
    )
    assert manager.rotate_key("blind") == 2


def test_refused_labels_leave_no_key_behind(bao_server: DevServer, kv2_mount: str) -> None:
    token = limited_token(
        bao_server,
        f"""
path "{kv2_mount}/data/secureml/*"     {{ capabilities = ["read", "create", "update"] }}
path "{kv2_mount}/metadata/secureml/*" {{ capabilities = ["read", "list"] }}
""",
    )
    manager = KeyManager(bao_server.address, token, vault_mount=kv2_mount, vault_kv_version=2)
    with pytest.raises(PermissionDeniedError):
        manager.generate_key("labelled", metadata={"owner": "me"})
    root = KeyManager(bao_server.address, bao_server.root_token, vault_mount=kv2_mount)
    with pytest.raises(SecretNotFoundError):
        root.key_versions("labelled")
    # Every key is labelled as one (secureml-key): a token that may not write metadata
    # makes no key at all, and leaves nothing behind.
    with pytest.raises(PermissionDeniedError):
        manager.generate_key("unlabelled")
    with pytest.raises(SecretNotFoundError):
        root.key_versions("unlabelled")


def test_a_reader_without_metadata_rights_gets_not_found(
    bao_server: DevServer, kv2_mount: str
) -> None:
    root = KeyManager(bao_server.address, bao_server.root_token, vault_mount=kv2_mount)
    root.generate_key("readable")
    token = limited_token(
        bao_server, f'path "{kv2_mount}/data/secureml/*" {{ capabilities = ["read"] }}'
    )
    reader = KeyManager(bao_server.address, token, vault_mount=kv2_mount, vault_kv_version=2)
    assert reader.get_encryption_key("readable", version=1) == root.get_encryption_key("readable")
    with pytest.raises(SecretNotFoundError, match="version 4 is deleted, destroyed or was never"):
        reader.get_encryption_key("readable", version=4)


def test_key_ring_reads_are_audited(bao_server: DevServer, vault_path: str) -> None:
    events: list[AccessEvent] = []
    manager = KeyManager(
        bao_server.address, bao_server.root_token, vault_path, audit_hook=events.append
    )
    manager.generate_key("ring")
    manager.get_key_ring("ring")
    assert (events[-1].operation, events[-1].outcome) == ("get_key_ring", "ok")


def test_malformed_version_arguments_never_hit_the_cache(vault_manager: KeyManager) -> None:
    vault_manager.generate_key("typed")
    vault_manager.get_secret("typed", version=1)  # cached now
    with pytest.raises(TypeError):
        vault_manager.get_secret("typed", version=True)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        vault_manager.get_encryption_key("typed", version=1.0)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="default= cannot stand in"):
        vault_manager.get_secret("typed", "fallback", version=1)
