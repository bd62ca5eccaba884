"""Fail-over on a real three-node OpenBao Raft cluster: the active node dies under load,
standbys lag behind writes, quorum is lost and comes back.

Reads go to any node and must never fail; writes may fail during an election, but a
write that was acknowledged must never be lost. The cluster (tests/support/raft.py) is
started once for the module and the tests run in order.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

from secureml.key_management import KeyManagementError, KeyManager, VaultError
from tests.support.raft import RaftCluster

READERS = 8
READS = 5000
#: Enough rounds of retries (with backoff) to outlast an election (1.5-2.5 s here).
RETRIES = 6


def cluster_manager(raft: RaftCluster, **kwargs: object) -> KeyManager:
    options: dict[str, object] = {
        "vault_url": raft.addresses,
        "vault_token": raft.root_token,
        "vault_path": "failover",
        "use_env_fallback": False,
        "cache_ttl": 0,
        "timeout": 2,
        "retries": RETRIES,
    }
    options.update(kwargs)
    return KeyManager(**options)  # type: ignore[arg-type]


def run_with_a_dying_leader(raft: RaftCluster, manager: KeyManager) -> None:
    """8 threads read, one writes distinct names, and the active node is killed."""
    manager.set_secret("hot", "v")
    failures: list[BaseException] = []
    acknowledged: list[str] = []
    reads_left = iter(range(READS))
    lock = threading.Lock()
    stop_writing = threading.Event()

    def reader() -> None:
        while True:
            with lock:
                if next(reads_left, None) is None:
                    return
            try:
                assert manager.get_secret("hot") == "v"
            except BaseException as exc:  # collected: the assertion is "none"
                failures.append(exc)

    def writer() -> None:
        serial = 0
        while not stop_writing.is_set():
            name = f"w-{uuid.uuid4().hex[:8]}-{serial}"
            try:
                if manager.set_secret(name, str(serial)) is True:
                    acknowledged.append(name)
            except KeyManagementError:
                pass  # a write may fail during the election; it must then not be acked
            serial += 1

    threads = [threading.Thread(target=reader) for _ in range(READERS)]
    writing = threading.Thread(target=writer)
    for thread in [*threads, writing]:
        thread.start()
    time.sleep(1.0)
    killed = raft.leader()
    raft.kill(killed)
    for thread in threads:
        thread.join()
    stop_writing.set()
    writing.join()

    assert failures == [], f"{len(failures)} reads failed, e.g. {failures[0]!r}"
    assert manager.stats().failovers >= 1
    assert len(acknowledged) > 10
    lost = [name for name in acknowledged if manager.get_secret(name, default=None) is None]
    assert lost == [], f"{len(lost)} acknowledged writes were lost"
    raft.restart(killed)
    raft.wait_for_voters(3, timeout=60)


def test_killing_the_active_node_loses_no_read_and_no_acknowledged_write(
    raft: RaftCluster,
) -> None:
    manager = cluster_manager(raft)
    run_with_a_dying_leader(raft, manager)
    # Again, with the node that took over: the same manager rides out a second election.
    run_with_a_dying_leader(raft, manager)


def test_reads_pinned_to_a_standby_see_this_managers_writes(raft: RaftCluster) -> None:
    standby = raft.standbys()[0]
    manager = cluster_manager(raft, vault_url=raft.nodes[standby].address)
    stale = 0
    for serial in range(1000):
        value = f"v{serial}"
        manager.set_secret("ryw", value)
        if manager.get_secret("ryw") != value:
            stale += 1
    assert stale == 0


def test_lost_quorum_ends_every_call_by_its_deadline_and_heals(raft: RaftCluster) -> None:
    raft.wait_for_voters(3, timeout=60)
    leader = raft.leader()
    others = [i for i in range(3) if i != leader]
    manager = cluster_manager(raft, timeout=1, retries=2)
    manager.set_secret("quorum", "before")
    budget = 1 * 3 * 3 + 2 * 2  # timeout x nodes x rounds + backoff, as documented
    for node in others:
        raft.kill(node)
    try:
        for call in (
            lambda: manager.set_secret("quorum", "during"),
            lambda: manager.get_secret("quorum"),
        ):
            started = time.monotonic()
            # Unavailable (or, for the write, of unknown outcome): either is fine.
            with contextlib.suppress(VaultError):
                call()
            assert time.monotonic() - started < budget + 1
    finally:
        for node in others:
            raft.restart(node, rejoin=False)
    raft.wait_for_voters(3, timeout=60)
    # Quorum is back: the same kind of manager works again, with nobody's help.
    healed = cluster_manager(raft)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert healed.set_secret("quorum", "after") is True
            break
        except VaultError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert healed.get_secret("quorum") == "after"
