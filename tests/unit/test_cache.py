"""The manager's cache policy, on a plain in-memory backend (the SecretBackend seam):
TTL, LRU bound, invalidation, single-flight, stale-if-error, stats and audit events.
The same behaviour against a real server is in tests/integration/test_cache.py.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from secureml.key_management import (
    AccessEvent,
    KeyManager,
    PermissionDeniedError,
    SecretNotFoundError,
    VaultSealedError,
    VaultUnavailableError,
)
from secureml.key_management._cache import SecretCache, caller_copy
from tests.support.threads import all_at_once
from tests.unit.test_chain import DictBackend


class SlowBackend(DictBackend):
    """Reads take a while, so concurrent misses overlap."""

    def __init__(self, data: dict[str, Any], delay: float) -> None:
        super().__init__(data)
        self.delay = delay
        self._lock = threading.Lock()

    def get(self, name: str, version: int | None = None) -> Any:
        time.sleep(self.delay)
        with self._lock:
            return super().get(name, version)


def cached_then_expired(max_stale: float) -> tuple[DictBackend, KeyManager]:
    """A manager that read ``k`` ("cached") and whose cache entry has since expired."""
    backend = DictBackend({"k": "cached"})
    km = KeyManager(backend=backend, cache_ttl=0.05, max_stale=max_stale)
    km.get_secret("k")
    time.sleep(0.06)
    return backend, km


def test_hits_are_served_from_memory_as_the_same_object() -> None:
    value = b"\x00" * 32
    backend = DictBackend({"k": value})
    km = KeyManager(backend=backend)
    first = km.get_secret("k")
    assert first is value
    assert km.get_secret("k") is first  # bytes stay bytes, and the very same object
    assert backend.reads == 1
    stats = km.stats()
    assert (stats.hits, stats.misses, stats.backend_reads) == (1, 1, 1)


def test_ttl_expiry_reads_again() -> None:
    backend = DictBackend({"k": "v1"})
    km = KeyManager(backend=backend, cache_ttl=0.2)
    assert km.get_secret("k") == "v1"
    backend.data["k"] = "v2"
    assert km.get_secret("k") == "v1"
    time.sleep(0.25)
    assert km.get_secret("k") == "v2"
    assert backend.reads == 2


def test_cache_ttl_zero_turns_it_off() -> None:
    backend = DictBackend({"k": "v"})
    km = KeyManager(backend=backend, cache_ttl=0)
    for _ in range(3):
        km.get_secret("k")
    assert backend.reads == 3
    assert km.stats().hits == 0


def test_lru_bound_evicts_the_least_recently_used() -> None:
    backend = DictBackend({"a": "1", "b": "2", "c": "3"})
    km = KeyManager(backend=backend, cache_size=2)
    km.get_secret("a")
    km.get_secret("b")
    km.get_secret("a")  # a is now more recent than b
    km.get_secret("c")  # evicts b
    assert len(km._core.cache) == 2
    reads = backend.reads
    km.get_secret("a")
    assert backend.reads == reads  # still cached
    km.get_secret("b")
    assert backend.reads == reads + 1  # was evicted


def test_set_secret_and_invalidate_drop_entries() -> None:
    backend = DictBackend({"k": "v1", "other": "o"})
    km = KeyManager(backend=backend)
    assert km.get_secret("k") == "v1"
    km.get_secret("other")
    assert km.set_secret("k", "v2") is True
    assert km.get_secret("k") == "v2"  # read through, not the stale entry
    backend.data["k"] = "changed elsewhere"
    assert km.get_secret("k") == "v2"
    assert km.invalidate("k") == 1
    assert km.get_secret("k") == "changed elsewhere"
    assert km.invalidate() == 2
    assert len(km._core.cache) == 0


def test_absence_is_cached_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_WANDB", "from-env")
    backend = DictBackend()
    km = KeyManager(backend=backend)
    for _ in range(5):
        assert km.get_secret("wandb") == "from-env"
    assert backend.reads == 1


def test_concurrent_misses_share_one_backend_read() -> None:
    backend = SlowBackend({"k": "v"}, delay=0.2)
    km = KeyManager(backend=backend)
    results = all_at_once(32, lambda: km.get_secret("k"))
    assert results == ["v"] * 32
    assert backend.reads == 1
    assert km.stats().backend_reads == 1


def test_concurrent_misses_share_the_error_too() -> None:
    backend = SlowBackend({}, delay=0.2)
    backend.fail = PermissionDeniedError("denied: dict:k")
    km = KeyManager(backend=backend, cache_ttl=0)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            km.get_secret("k")
        except PermissionDeniedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8
    assert backend.reads == 1
    assert km.stats().errors == {"PermissionDeniedError": 8}


@pytest.mark.parametrize("outage", [VaultUnavailableError("down"), VaultSealedError("sealed")])
def test_stale_if_error_serves_recent_values_with_one_warning(
    outage: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SECUREML_K", "from-env")
    backend = DictBackend({"k": "cached"})
    km = KeyManager(backend=backend, cache_ttl=0.05, max_stale=60)
    assert km.get_secret("k") == "cached"
    time.sleep(0.06)
    backend.fail = outage
    with caplog.at_level(logging.WARNING, "secureml.key_management"):
        for _ in range(3):
            assert km.get_secret("k") == "cached"  # not the env fallback
    stale = [r for r in caplog.records if "cached value" in r.getMessage()]
    assert len(stale) == 1
    assert "cached" not in stale[0].getMessage().replace("cached value", "")
    assert km.stats().stale_serves == 3


def test_past_max_stale_the_fallbacks_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, km = cached_then_expired(max_stale=0.1)
    time.sleep(0.1)  # past max_stale too
    backend.fail = VaultUnavailableError("down")
    with pytest.raises(VaultUnavailableError):
        km.get_secret("k")
    monkeypatch.setenv("SECUREML_K", "from-env")
    assert km.get_secret("k") == "from-env"


def test_max_stale_zero_never_serves_stale() -> None:
    backend, km = cached_then_expired(max_stale=0)
    backend.fail = VaultUnavailableError("down")
    with pytest.raises(VaultUnavailableError):
        km.get_secret("k")


def test_permission_denied_is_never_answered_from_stale_cache() -> None:
    backend, km = cached_then_expired(max_stale=60)
    backend.fail = PermissionDeniedError("denied: dict:k")
    with pytest.raises(PermissionDeniedError):
        km.get_secret("k")


def test_uncached_names_during_an_outage_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = DictBackend({"k": "v"}, fail=VaultUnavailableError("down"))
    km = KeyManager(backend=backend, max_stale=60)
    with pytest.raises(VaultUnavailableError):
        km.get_secret("k")
    monkeypatch.setenv("SECUREML_K", "from-env")
    assert km.get_secret("k") == "from-env"


def test_encryption_keys_are_cached_as_well() -> None:
    backend = DictBackend({"master": b"k" * 32})
    km = KeyManager(backend=backend)
    assert km.get_encryption_key("master") == b"k" * 32
    assert km.get_encryption_key("master", encoding="hex") == "6b" * 32
    assert backend.reads == 1


def test_audit_hook_sees_every_access_never_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[AccessEvent] = []
    backend = DictBackend({"k": "s3cr3t-value"})
    km = KeyManager(backend=backend, audit_hook=events.append)
    km.get_secret("k")
    km.get_secret("k")
    km.set_secret("k", "n3w-s3cr3t")
    with pytest.raises(SecretNotFoundError):
        km.get_secret("missing")
    monkeypatch.setenv("SECUREML_E", "env-s3cr3t")
    km.get_secret("e")
    assert [(e.operation, e.name, e.outcome) for e in events] == [
        ("get_secret", "k", "ok"),
        ("get_secret", "k", "cached"),
        ("set_secret", "k", "ok"),
        ("get_secret", "missing", "error"),
        ("get_secret", "e", "ok"),
    ]
    assert events[0].source == "dict:k"
    assert events[3].error == "SecretNotFoundError"
    assert events[4].source == "env:SECUREML_E"
    assert all(e.duration >= 0 for e in events)
    text = repr(events)
    for secret in ("s3cr3t-value", "n3w-s3cr3t", "env-s3cr3t"):
        assert secret not in text


def test_a_failing_audit_hook_does_not_break_reads(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: AccessEvent) -> None:
        raise RuntimeError("sink down")

    km = KeyManager(backend=DictBackend({"k": "v"}), audit_hook=broken)
    with caplog.at_level(logging.WARNING, "secureml.key_management"):
        assert km.get_secret("k") == "v"
        assert km.get_secret("k") == "v"
    assert sum("audit_hook raised" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cache_ttl": -1}, ValueError),
        ({"cache_ttl": "60"}, TypeError),
        ({"cache_size": 0}, ValueError),
        ({"max_stale": -5}, ValueError),
        ({"audit_hook": "print"}, TypeError),
    ],
)
def test_bad_cache_settings(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        KeyManager(**kwargs)  # type: ignore[arg-type]


def test_cache_object_single_flight_shares_errors_as_copies() -> None:
    cache = SecretCache(ttl=60, size=8, max_stale=0)
    started = threading.Event()

    def loader() -> object:
        started.set()
        time.sleep(0.2)  # long enough for both followers to join the flight
        raise VaultUnavailableError("down")

    caught: list[BaseException] = []

    def follower() -> None:
        started.wait(2)
        try:
            cache.load(("k", None), loader)
        except VaultUnavailableError as exc:
            caught.append(exc)

    leader = threading.Thread(target=follower)
    other = threading.Thread(target=follower)
    leader.start()
    other.start()
    try:
        cache.load(("k", None), loader)
    except VaultUnavailableError as exc:
        caught.append(exc)
    leader.join()
    other.join()
    assert len(caught) == 3
    assert len({id(e) for e in caught}) == 3


def test_a_read_in_flight_during_a_write_does_not_cache_the_old_value() -> None:
    backend = SlowBackend({"k": "old"}, delay=0.3)
    km = KeyManager(backend=backend)
    reader = threading.Thread(target=km.get_secret, args=("k",))
    reader.start()
    time.sleep(0.05)  # the read is now waiting on the backend, holding "old"
    km.set_secret("k", "new")
    assert km.get_secret("k") == "new"  # not the in-flight read's answer
    reader.join()
    assert km.get_secret("k") == "new"  # and that answer was not cached either


def test_invalidate_cuts_a_load_in_flight_loose() -> None:
    backend = SlowBackend({"k": "old"}, delay=0.3)
    km = KeyManager(backend=backend)
    reader = threading.Thread(target=km.get_secret, args=("k",))
    reader.start()
    time.sleep(0.05)
    backend.data["k"] = "changed elsewhere"
    km.invalidate("k")
    reader.join()
    assert km.get_secret("k") == "changed elsewhere"


def test_a_permission_error_drops_the_cached_value_for_good() -> None:
    backend, km = cached_then_expired(max_stale=60)
    backend.fail = PermissionDeniedError("denied: dict:k")
    with pytest.raises(PermissionDeniedError):
        km.get_secret("k")
    backend.fail = VaultUnavailableError("down")  # and now Vault goes away as well
    with pytest.raises(VaultUnavailableError):
        km.get_secret("k")  # not the value the identity may no longer read


def test_dict_values_are_private_copies() -> None:
    backend = DictBackend({"db": {"user": "u", "password": "p"}})
    km = KeyManager(backend=backend)
    first = km.get_secret("db")
    first.pop("password")
    assert km.get_secret("db") == {"user": "u", "password": "p"}


def test_a_cached_absence_during_an_outage_reports_the_outage() -> None:
    backend = DictBackend()
    km = KeyManager(backend=backend, cache_ttl=0.05, max_stale=60)
    with pytest.raises(SecretNotFoundError):
        km.get_secret("k")
    time.sleep(0.06)
    backend.fail = VaultUnavailableError("down")
    with pytest.raises(VaultUnavailableError):
        km.get_secret("k")


def test_counters_of_ended_threads_are_folded_not_kept() -> None:
    km = KeyManager(backend=DictBackend({"k": "v"}))
    for _ in range(200):
        thread = threading.Thread(target=km.get_secret, args=("k",))
        thread.start()
        thread.join()
    km.get_secret("k")
    assert len(km._core.observer.counts._boxes) < 10
    stats = km.stats()
    assert stats.hits + stats.misses == 201


def test_writes_to_other_names_do_not_stop_caching() -> None:
    backend = SlowBackend({"hot": "v", "other": "o"}, delay=0.05)
    km = KeyManager(backend=backend)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            km.set_secret("other", "o")
            time.sleep(0.01)

    busy = threading.Thread(target=writer)
    busy.start()
    try:
        for _ in range(10):
            assert km.get_secret("hot") == "v"
    finally:
        stop.set()
        busy.join()
    assert km.stats().backend_reads <= 2


def test_a_served_copy_of_fields_is_the_callers_own_at_every_depth() -> None:
    flat = {"user": "u", "port": 5432, "tls": True, "note": None}
    served = caller_copy(flat)
    assert served == flat
    assert served is not flat
    served["user"] = "changed"
    assert flat["user"] == "u"
    nested = {"db": {"user": "u"}, "hosts": ["a", "b"]}
    served = caller_copy(nested)
    served["db"]["user"] = "changed"
    served["hosts"].append("c")
    assert nested == {"db": {"user": "u"}, "hosts": ["a", "b"]}
    text = "s3cr3t"
    assert caller_copy(text) is text  # immutable: shared


def test_copying_flat_fields_for_many_waiters_stays_cheap() -> None:
    """200 waiters on a 400-field secret were served deep copies in one loop turn
    (47 ms): a dict of immutable values is copied as a dict."""
    import copy as copying

    fields = {f"k{i}": f"v{i}" for i in range(400)}
    calls: list[object] = []
    real = copying.deepcopy
    try:
        copying.deepcopy = lambda *a, **k: calls.append(a) or real(*a, **k)  # type: ignore[assignment]
        for _ in range(200):
            assert caller_copy(fields) == fields
    finally:
        copying.deepcopy = real
    assert calls == []
