"""A real three-node OpenBao cluster on Raft storage: voters, replication, fail-over.

The cluster (``tests/support/raft.py``) is started once for this module; the tests run in
order and the last one kills and restarts the leader, leaving three voters behind it.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable

from secureml.key_management import KeyManager
from tests.support.raft import RaftCluster

# Standbys serve reads from their own copy of the data, which trails the leader by up to
# a Raft heartbeat: a read right after a write may not see it yet.
_REPLICATION_WAIT = 10.0
_ELECTION_LIMIT = 15.0


def _eventually(read: Callable[[], str], expected: str, timeout: float) -> str:
    """Call ``read`` until it returns ``expected`` or ``timeout`` passes; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
        except subprocess.CalledProcessError as exc:
            value = f"(bao failed: {exc.stderr.decode(errors='replace').strip()})"
        if value == expected or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def _cli_read(raft: RaftCluster, node: int, path: str) -> Callable[[], str]:
    def read() -> str:
        out = raft.bao(node, "kv", "get", "-mount=secret", "-field=value", path)
        return out.stdout.decode().strip()

    return read


def test_three_voters_and_exactly_one_leader(raft: RaftCluster) -> None:
    raft.wait_for_voters(3, timeout=30)
    peers = raft.peers()
    assert sorted(peer["node_id"] for peer in peers) == ["node0", "node1", "node2"]
    assert all(peer["voter"] for peer in peers)
    assert [peer["leader"] for peer in peers].count(True) == 1

    leader = raft.leader()
    raft_leader = next(peer for peer in peers if peer["leader"])
    assert raft_leader["address"] == f"127.0.0.1:{raft.nodes[leader].cluster_port}"
    assert sorted(raft.standbys()) == sorted({0, 1, 2} - {leader})
    for i in range(3):
        status, health = raft.health(i)
        assert status in (200, 429)
        assert health["initialized"] is True
        assert health["sealed"] is False
        assert health["standby"] is (i != leader)


def test_write_on_leader_is_readable_on_every_standby(raft: RaftCluster) -> None:
    leader = raft.leader()
    value = uuid.uuid4().hex
    raft.bao(leader, "kv", "put", "-mount=secret", "secureml/x", f"value={value}")

    for standby in raft.standbys():
        assert _eventually(_cli_read(raft, standby, "secureml/x"), value, _REPLICATION_WAIT) == (
            value
        )
        manager = KeyManager(
            vault_url=raft.nodes[standby].address,
            vault_token=raft.root_token,
            use_env_fallback=False,
        )
        assert manager.get_secret("x") == value


def test_leader_killed_then_new_leader_and_rejoin(raft: RaftCluster) -> None:
    old = raft.leader()
    raft.bao(old, "kv", "put", "-mount=secret", "secureml/before", "value=1")

    killed_at = time.monotonic()
    raft.kill(old)
    new = raft.wait_for_leader(exclude=old, timeout=_ELECTION_LIMIT)
    election = time.monotonic() - killed_at
    assert new != old
    assert not raft.nodes[old].running
    assert election < _ELECTION_LIMIT

    # Two of three voters are a quorum: the cluster still takes writes.
    raft.bao(new, "kv", "put", "-mount=secret", "secureml/during", "value=2")

    # The static seal must unseal it on its own: no recovery key is offered.
    raft.restart(old, recovery_key_after=None)
    raft.wait_for_voters(3, timeout=30)
    status, health = raft.health(old)
    assert status in (200, 429)
    assert health["sealed"] is False
    assert raft.leader() in {0, 1, 2}

    # It has what was written before it died and while it was away.
    assert _eventually(_cli_read(raft, old, "secureml/before"), "1", _REPLICATION_WAIT) == "1"
    assert _eventually(_cli_read(raft, old, "secureml/during"), "2", _REPLICATION_WAIT) == "2"
