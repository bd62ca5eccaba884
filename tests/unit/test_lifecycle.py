"""Key lifecycle policy without a server: argument checks, the versioned-backend seam,
and the sources that keep no versions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from secureml.key_management import (
    ConfigurationError,
    KeyManagementError,
    KeyManager,
    SecretNotFoundError,
    UnsupportedOperationError,
    VersionConflictError,
)
from secureml.key_management._encoding import key_from_material
from secureml.key_management._transit import _chunks, _contexts
from secureml.key_management._validate import (
    check_age,
    check_labels,
    check_now,
    check_version,
)
from secureml.key_management.backends import VersionedSecretBackend
from secureml.key_management.backends.base import SecretValue
from secureml.key_management.backends.vault import parse_metadata, parse_timestamp
from tests.support.memory_backend import T0, MemoryVersions


@pytest.fixture
def store() -> MemoryVersions:
    return MemoryVersions(max_versions=4)


@pytest.fixture
def km(store: MemoryVersions) -> KeyManager:
    return KeyManager(backend=store, use_env_fallback=False)


def test_the_memory_store_implements_the_protocol(store: MemoryVersions) -> None:
    assert isinstance(store, VersionedSecretBackend)


def test_lifecycle_over_any_versioned_backend(km: KeyManager, store: MemoryVersions) -> None:
    assert km.generate_key("k", 16, metadata={"owner": "me"}) == 1
    assert store.labels["k"] == {"owner": "me", "secureml-key": "1"}  # marked as a key
    assert km.rotate_key("k") == 2
    assert km.rotate_key("k") == 3
    ring = km.get_key_ring("k")
    assert list(ring) == [1, 2, 3]
    assert all(len(key) == 16 for key in ring.values())
    assert km.get_encryption_key("k", 16) == ring[3]
    assert km.get_encryption_key("k", 16, version=1, encoding="hex") == ring[1].hex()
    assert km.list_secrets() == ["k"]
    # max_versions is 4: the next rotation would push version 1 out while it is live.
    assert km.rotate_key("k") == 4
    with pytest.raises(KeyManagementError, match=r"drop version\(s\) 1 for good"):
        km.rotate_key("k")
    km.delete_secret("k", versions=[1], destroy=True)
    assert km.rotate_key("k") == 5
    assert [v.version for v in km.key_versions("k")] == [2, 3, 4, 5]


def test_age_is_judged_on_the_current_version(km: KeyManager, store: MemoryVersions) -> None:
    km.generate_key("aged")
    born = store.records["aged"][1].created_at
    assert km.rotate_if_older_than("aged", timedelta(days=30), now=born) is None
    assert km.rotate_if_older_than("aged", 30 * 86400, now=born + timedelta(days=30)) == 2


def test_a_rotation_that_loses_the_race_writes_nothing(
    km: KeyManager, store: MemoryVersions
) -> None:
    km.generate_key("raced")
    real = store.put_version

    def sneaky(name: str, value: SecretValue, *, cas: int | None = None) -> int:
        real(name, b"x" * 32)  # another writer lands first
        return real(name, value, cas=cas)

    store.put_version = sneaky  # type: ignore[method-assign]
    with pytest.raises(VersionConflictError):
        km.rotate_key("raced")
    assert max(store.records["raced"]) == 2


def test_generate_refuses_an_existing_key(km: KeyManager) -> None:
    km.generate_key("once")
    with pytest.raises(ConfigurationError, match="overwrite=True"):
        km.generate_key("once")


@pytest.mark.parametrize(
    "call",
    [
        lambda km: km.generate_key("k"),
        lambda km: km.rotate_key("k"),
        lambda km: km.rotate_if_older_than("k", 1),
        lambda km: km.key_versions("k"),
        lambda km: km.get_key_ring("k"),
        lambda km: km.list_secrets(),
        lambda km: km.get_secret("k", version=1),
        lambda km: km.get_encryption_key("k", version=1),
        lambda km: km.delete_secret("k"),
        lambda km: km.transit,
    ],
)
def test_sources_without_versions_say_why(call: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_K", "hex:" + "00" * 32)
    env_only = KeyManager(use_default_fallback=True)
    with pytest.raises(UnsupportedOperationError, match="no Vault"):
        call(env_only)


class PlainStore:
    """A backend without versions."""

    source = "plain"

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def locate(self, name: str) -> str:
        return f"plain:{name}"

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        return b"k" * 32

    def put(self, name: str, value: SecretValue) -> None:
        pass

    def delete(self, name: str) -> None:
        self.deleted.append(name)


def test_a_backend_without_versions() -> None:
    store = PlainStore()
    km = KeyManager(backend=store)
    with pytest.raises(UnsupportedOperationError, match="plain backend keeps no versions"):
        km.rotate_key("k")
    with pytest.raises(UnsupportedOperationError, match="destroy=True"):
        km.delete_secret("k")
    km.delete_secret("k", destroy=True)
    assert store.deleted == ["k"]


def test_argument_checks() -> None:
    km = KeyManager(backend=MemoryVersions())
    with pytest.raises(ValueError, match="default= cannot stand in"):
        km.get_secret("k", "fallback", version=1)
    with pytest.raises(TypeError, match="version must be an int"):
        km.get_secret("k", version="1")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="1 or more"):
        km.get_encryption_key("k", version=0)
    with pytest.raises(ValueError, match="between 16"):
        km.generate_key("k", 8)
    with pytest.raises(TypeError, match="overwrite"):
        km.generate_key("k", overwrite="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one version"):
        km.delete_secret("k", versions=[])
    with pytest.raises(ValueError, match="prefix"):
        km.list_secrets("../etc")
    with pytest.raises(SecretNotFoundError, match="generate_key"):
        km.rotate_key("absent")


@pytest.mark.parametrize("bad", [True, 1.0, "2", None])
def test_check_version_types(bad: object) -> None:
    with pytest.raises(TypeError):
        check_version(bad)


def test_labels() -> None:
    assert check_labels(None) is None
    assert check_labels({"a": "b"}) == {"a": "b"}
    with pytest.raises(TypeError):
        check_labels({"a": 1})
    with pytest.raises(TypeError):
        check_labels(["a"])
    with pytest.raises(ValueError, match="at most 64"):
        check_labels({str(i): "" for i in range(65)})
    with pytest.raises(ValueError, match="1 to 128"):
        check_labels({"k" * 129: ""})
    with pytest.raises(ValueError, match="512"):
        check_labels({"k": "v" * 513})


def test_ages_and_clocks() -> None:
    assert check_age(90) == timedelta(seconds=90)
    assert check_age(timedelta(days=1)) == timedelta(days=1)
    for bad in (0, -1, timedelta(0)):
        with pytest.raises(ValueError, match="positive"):
            check_age(bad)
    with pytest.raises(TypeError):
        check_age("90d")
    with pytest.raises(ValueError, match="timezone-aware"):
        check_now(datetime(2026, 1, 1))
    assert check_now(T0) is T0


def test_key_material_at_its_own_length() -> None:
    assert key_from_material(b"k" * 20, described="x") == b"k" * 20
    assert key_from_material("hex:" + "ab" * 24, described="x") == b"\xab" * 24
    assert key_from_material("ab" * 16, described="x") == b"\xab" * 16
    with pytest.raises(KeyManagementError, match="not key material"):
        key_from_material({"a": "b"}, described="x")


def test_vault_timestamps() -> None:
    stamp = parse_timestamp("2026-11-28T06:31:56.643383172Z")
    assert stamp == datetime(2026, 11, 28, 6, 31, 56, 643383, tzinfo=timezone.utc)
    assert parse_timestamp("2026-11-28T07:31:56+01:00") == datetime(
        2026, 11, 28, 6, 31, 56, tzinfo=timezone.utc
    )
    assert parse_timestamp("2026-11-28T06:31:56.5Z") == datetime(
        2026, 11, 28, 6, 31, 56, 500000, tzinfo=timezone.utc
    )
    assert parse_timestamp("") is None
    assert parse_timestamp(None) is None


def test_vault_metadata() -> None:
    future = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata, own_max = parse_metadata(
        {
            "current_version": 3,
            "max_versions": 0,
            "custom_metadata": {"owner": "me"},
            "versions": {
                "3": {"created_time": "2026-01-03T00:00:00Z", "deletion_time": future},
                "1": {"created_time": "2026-01-01T00:00:00Z", "destroyed": True},
                "2": {
                    "created_time": "2026-01-02T00:00:00Z",
                    "deletion_time": "2026-01-05T00:00:00Z",
                },
            },
        }
    )
    assert own_max == 0
    assert [v.version for v in metadata.versions] == [1, 2, 3]
    assert [(v.deleted, v.destroyed, v.is_current) for v in metadata.versions] == [
        (False, True, False),
        (True, False, False),
        (False, False, True),  # a delete scheduled for later has not happened yet
    ]
    assert metadata.custom_metadata == {"owner": "me"}
    assert metadata.version(2) is metadata.versions[1]
    assert metadata.version(9) is None


def test_transit_batches_split_by_strings_and_bytes() -> None:
    items = [{"plaintext": "YQ=="}] * 1200
    chunks = _chunks(items)
    assert [start for start, _ in chunks] == [0, 495, 990]
    assert sum(len(chunk) for _, chunk in chunks) == 1200
    big = [{"plaintext": "A" * (3 * 1024 * 1024)}] * 4
    assert [len(chunk) for _, chunk in _chunks(big)] == [2, 2]
    assert _chunks([]) == []


def test_transit_contexts() -> None:
    assert _contexts(None, 2) == [None, None]
    assert _contexts(b"c", 2) == [b"c", b"c"]
    assert _contexts([b"a", b"b"], 2) == [b"a", b"b"]
    with pytest.raises(ValueError, match="one per item"):
        _contexts([b"a"], 2)
    with pytest.raises(TypeError):
        _contexts("text", 1)
