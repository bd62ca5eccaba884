"""The core's read policy on the memory backend, with no KeyManager in the way.

One read-through serves every path (``get_secret``, versioned reads, the current key
that encrypts): fresh -> single-flight load -> a 403 drops the name, a 401 drops all ->
stale within ``max_stale`` only after an outage. And in a forked child, nothing the
parent's threads were doing is waited for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from secureml.key_management import (
    AuthenticationError,
    PermissionDeniedError,
    SecretNotFoundError,
    VaultUnavailableError,
)
from secureml.key_management._bridge import Latch
from secureml.key_management._cache import ABSENT
from secureml.key_management._core import Core
from secureml.key_management._observe import Served
from secureml.key_management._settings import ManagerSettings
from secureml.key_management.backends.base import SecretValue
from tests.support.memory_backend import MemoryVersions


class Faulty(MemoryVersions):
    """The memory store, made to fail on cue (what a real Vault does under stress)."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: Exception | None = None
        self.reads = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def _maybe_fail(self) -> None:
        self.reads += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.failure is not None:
            raise self.failure

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        self._maybe_fail()
        return super().get(name, version)

    def get_latest(self, name: str) -> tuple[SecretValue, int] | None:
        self._maybe_fail()
        number = max(self.records.get(name, {}), default=0)
        value = MemoryVersions.get(self, name, number) if number else None
        return None if value is None else (value, number)


def make_core(backend: Faulty, **overrides: Any) -> Core:
    arguments: dict[str, Any] = {
        "vault_url": None,
        "vault_token": None,
        "vault_path": "secureml",
        "use_env_fallback": True,
        "use_default_fallback": False,
        "vault_mount": "secret",
        "vault_auth": None,
        "vault_namespace": None,
        "vault_ca_cert": None,
        "vault_client_cert": None,
        "vault_client_key": None,
        "vault_kv_version": None,
        "verify": True,
        "timeout": None,
        "retries": None,
        "cache_ttl": 0.05,
        "cache_size": 64,
        "max_stale": 60.0,
        "audit_hook": None,
        "backend": backend,
    }
    arguments.update(overrides)
    return Core(ManagerSettings.resolve(**arguments))


@pytest.fixture
def store() -> Faulty:
    backend = Faulty()
    backend.put_version("k", b"k" * 32)
    backend.set_custom_metadata("k", {"secureml-key": "1"})  # a managed key
    return backend


# Every way of reading a name through the core: each must follow the one policy.
READS: dict[str, Callable[[Core], object]] = {
    "latest": lambda core: core.lookup("k", outage_falls_through=False).value,
    "version": lambda core: core.read_version("k", 1).value,
    "current": lambda core: getattr(core.read_current("k"), "value", None),
}


def expire() -> None:
    time.sleep(0.06)  # past cache_ttl


def test_capabilities_are_decided_once(store: Faulty) -> None:
    core = make_core(store)
    assert core.versioned is store
    assert core.vault is None


@pytest.mark.parametrize("read", READS)
def test_fresh_then_loaded_then_cached(store: Faulty, read: str) -> None:
    core = make_core(store)
    READS[read](core)
    READS[read](core)
    assert store.reads == 1
    expire()
    READS[read](core)
    assert store.reads == 2


@pytest.mark.parametrize("read", READS)
def test_an_outage_serves_stale_within_max_stale(store: Faulty, read: str) -> None:
    core = make_core(store)
    first = READS[read](core)
    expire()
    store.failure = VaultUnavailableError("down")
    assert READS[read](core) == first
    assert core.stats().stale_serves == 1


@pytest.mark.parametrize("read", READS)
def test_past_max_stale_an_outage_raises(store: Faulty, read: str) -> None:
    core = make_core(store, max_stale=0.0)
    READS[read](core)
    expire()
    store.failure = VaultUnavailableError("down")
    with pytest.raises(VaultUnavailableError):
        READS[read](core)


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("denial", [PermissionDeniedError, AuthenticationError])
def test_a_denial_then_an_outage_never_serves_stale(
    store: Faulty, read: str, denial: type[Exception]
) -> None:
    """The defect the drifted second copy had: encrypt() served the stale key."""
    core = make_core(store)
    READS[read](core)
    expire()
    store.failure = denial("no")
    with pytest.raises(denial):
        READS[read](core)
    store.failure = VaultUnavailableError("down")
    with pytest.raises(VaultUnavailableError):
        READS[read](core)


def test_a_permission_error_drops_only_that_name(store: Faulty) -> None:
    store.put_version("other", "o")
    core = make_core(store, cache_ttl=60.0)
    core.lookup("other")
    core.cache.invalidate(lambda key: key[0] == "k")
    store.failure = PermissionDeniedError("no")
    with pytest.raises(PermissionDeniedError):
        core.lookup("k")
    assert core.cache.fresh(("other", None)) is not None


def test_an_authentication_error_drops_everything(store: Faulty) -> None:
    store.put_version("other", "o")
    core = make_core(store, cache_ttl=60.0)
    core.lookup("other")
    core.read_version("k", 1)
    core.cache.invalidate(lambda key: key == ("k", None))
    store.failure = AuthenticationError("no")
    with pytest.raises(AuthenticationError):
        core.lookup("k")
    assert len(core.cache) == 0


def test_concurrent_misses_share_one_load(store: Faulty) -> None:
    core = make_core(store)
    store.gate = threading.Event()
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(core.lookup("k").value)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    store.entered.wait(5)
    time.sleep(0.05)
    store.gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [b"k" * 32] * 8
    assert store.reads == 1


def test_an_outage_falls_through_to_the_environment_for_reads_only(
    store: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_K", "from-env")
    core = make_core(store)
    store.failure = VaultUnavailableError("down")
    assert core.lookup("k").value == "from-env"
    with pytest.raises(VaultUnavailableError):
        core.lookup("k", outage_falls_through=False)


def test_an_unreadable_version_says_why(store: Faulty) -> None:
    core = make_core(store)
    with pytest.raises(SecretNotFoundError, match="no version 7"):
        core.read_version("k", 7)


def test_the_current_version_comes_with_its_number(store: Faulty) -> None:
    store.put_version("k", b"2" * 32)
    core = make_core(store)
    served = core.read_current("k")
    assert served is not None
    assert (served.value, served.version) == (b"2" * 32, 2)
    assert core.read_current("missing") is None


def test_a_write_drops_latest_entries_and_keeps_versions(store: Faulty) -> None:
    core = make_core(store, cache_ttl=60.0)
    core.lookup("k")
    core.read_version("k", 1)
    core.read_current("k")
    core.write("k", lambda: None, latest_only=True)
    assert core.cache.fresh(("k", 1)) is not None
    assert core.cache.fresh(("k", None)) is None
    assert core.cache.fresh(("k", 0)) is None


def test_a_forked_child_abandons_loads_in_flight(store: Faulty) -> None:
    """A fork while another thread's load waits on the store: the child loads anew."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    core = make_core(store)
    store.gate = threading.Event()
    parent = threading.Thread(target=lambda: core.lookup("k"))
    parent.start()
    store.entered.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists; the parent's load never ends here
        code = 1
        try:
            store.gate.set()  # the child's own reads must not wait on the parent's gate
            value, outcome = core.through_cache(("k", None), lambda: store.get("k") or ABSENT)
            code = 0 if (value, outcome) == (b"k" * 32, "ok") else 2
        finally:
            os._exit(code)
    try:
        assert _child_exit_code(pid, "the forked child hung on the parent's load in flight") == 0
    finally:
        store.gate.set()
        parent.join(5)


def _child_exit_code(pid: int, hung: str, seconds: float = 10) -> int:
    """A forked child's exit code; killed, and the test failed with ``hung``, past
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(hung)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_another_thread_holds_the_latches_lock_never_hangs_the_child(
    store: Faulty,
) -> None:
    from secureml.key_management import _bridge

    core = make_core(store)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _bridge._WAKERS.value:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the holding thread does not exist here
        code = 1
        try:
            value, outcome = core.through_cache(("k", None), lambda: store.get("k") or ABSENT)
            code = 0 if (value, outcome) == (b"k" * 32, "ok") else 2
        finally:
            os._exit(code)
    try:
        assert _child_exit_code(pid, "the forked child hung on the parent's latch lock") == 0
    finally:
        release.set()
        holder.join(5)


def test_a_wait_for_another_load_is_bounded() -> None:
    from secureml.key_management._cache import SecretCache, WaitExpiredError

    cache = SecretCache(ttl=60, size=8, max_stale=0)
    cache._loading[("k", None)] = Latch()  # a load whose owner will never finish it
    started = time.monotonic()
    with pytest.raises(WaitExpiredError):
        cache.load(("k", None), lambda: "v", wait=0.2)
    assert time.monotonic() - started < 2


def test_a_store_that_times_out_itself_is_not_an_outage(store: Faulty) -> None:
    """Only waiting for another caller's load is; a backend's own TimeoutError is its
    error, passed on as it is (never served stale, never a fallback)."""
    core = make_core(store)
    core.lookup("k")
    expire()
    store.failure = TimeoutError("the store's socket timed out")
    with pytest.raises(TimeoutError, match="socket timed out"):
        core.lookup("k")


@pytest.mark.parametrize("refusal", [PermissionDeniedError, AuthenticationError])
def test_a_refusal_of_any_call_forgets_what_that_identity_read(
    store: Faulty, refusal: type[Exception]
) -> None:
    """A write, a listing or a Transit call refused with 403/401 drops the cache as a
    refused read does, so a later outage cannot serve any of it stale."""
    core = make_core(store, cache_ttl=60.0)
    core.lookup("k")

    def refused() -> Served:
        raise refusal("no")

    with pytest.raises(refusal):
        core.observer.observed("set_secret", "k", refused)
    assert core.cache.fresh(("k", None)) is None


def test_stats_report_any_primary_that_counts(store: Faulty) -> None:
    class Session:
        logins, renewals = 2, 1

    store.failovers = 3  # type: ignore[attr-defined]
    store.session = Session()  # type: ignore[attr-defined]
    stats = make_core(store).stats()
    assert (stats.failovers, stats.logins, stats.renewals) == (3, 2, 1)


def test_an_unhashable_key_name_is_a_clear_type_error(store: Faulty) -> None:
    from secureml.key_management import KeyManager

    with pytest.raises(TypeError, match="key_name must be a str"):
        KeyManager(backend=store).encrypt(b"x", ["k"])  # type: ignore[arg-type]


def test_key_materials_never_show_the_key(store: Faulty) -> None:
    from secureml.key_management._materials import KeyMaterials

    materials = KeyMaterials(make_core(store)).for_encryption("k", None)
    assert materials.key == b"k" * 32
    assert "kkkk" not in repr(materials)
    assert "kkkk" not in str(materials)


def test_a_key_found_to_open_never_reuses_the_parsed_header_to_seal(store: Faulty) -> None:
    """A parsed header's salt and nonce prefix sealing new data would reuse nonces."""
    from secureml.key_management import _envelope as envelope
    from secureml.key_management._materials import KeyMaterials

    materials = KeyMaterials(make_core(store))
    parsed = envelope.Header(envelope.MODE_MANAGED_KEY, "k", 1)
    for _ in range(2):  # loaded, then from the cache's fast path
        opened = materials.for_header(parsed)
        assert opened.header is None
        fresh = opened.sealing_header()
        assert (fresh.salt, fresh.nonce_prefix) != (parsed.salt, parsed.nonce_prefix)


def test_a_header_copies_what_it_was_given() -> None:
    from secureml.key_management import _envelope as envelope

    salt = bytearray(32)
    header = envelope.Header(
        envelope.MODE_TRANSIT, "t", 1, wrapped_key=bytearray(b"w"), salt=salt, nonce_prefix=b"p" * 7
    )
    salt[0] = 1  # changed after the header was made: the header keeps what it checked
    assert header.salt == bytes(32)
    assert header.encode().endswith(bytes(32) + b"p" * 7)


def test_a_hostile_key_name_cannot_forge_audit_lines(store: Faulty) -> None:
    from secureml.key_management import InvalidCiphertextError, KeyManager
    from secureml.key_management import _envelope as envelope

    events: list[Any] = []
    manager = KeyManager(backend=store, audit_hook=events.append)
    forged = envelope.Header(envelope.MODE_MANAGED_KEY, "a\nFAKE LOG LINE", 1).encode()
    with pytest.raises(InvalidCiphertextError):
        manager.decrypt(forged + b"\0" * 32)
    assert [(e.operation, e.name, e.outcome) for e in events] == [("decrypt", "", "rejected")]
