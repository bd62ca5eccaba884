"""Fork safety: a KeyManager used before ``os.fork()`` must keep working in the parent and
in every child, each process seeing only its own answers.

Everything inherited that is bound to the parent process (the connection pool's
keep-alive sockets, loads in flight on the parent's threads) must be reset in the child:
a shared socket hands one process's answer to another, and a child that waits for a
load whose thread does not exist in it waits for ever. Children report over a pipe
(JSON lines) and end with ``os._exit``: they never run pytest's teardown. The parent
kills any child that does not finish in time and counts it as hung.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import signal
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import AccessEvent, KeyManagementError, KeyManager
from tests.support.fault_proxy import Fault, FaultProxy

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
    # Python 3.12+ warns when a process with threads forks: forking one is the point here.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

Report = dict[str, Any]
Send = Callable[[Report], None]

CHILDREN = 4
SECRETS_PER_CHILD = 1000
PARENT_SECRETS = 300
#: From the first fork: children stop reading (and report) at the soft deadline; the
#: parent kills whatever is still running at the hard one.
SOFT_DEADLINE_SECONDS = 30.0
HARD_DEADLINE_SECONDS = 40.0
SAMPLES = 5


# -- children ------------------------------------------------------------------------


@dataclass
class Child:
    """A forked child: its pid, the read end of its report pipe, what it reported."""

    pid: int
    fd: int
    pending: bytearray = field(default_factory=bytearray)
    report: Report | None = None  # the last complete report line
    status: int | None = None  # os.waitpid status, once reaped
    hung: bool = False  # killed by the parent at the hard deadline


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Children:
    """Forked children that report over pipes; collected by a thread (started once all
    are forked, so no fork happens with it running) and killed if they overrun."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._collector: threading.Thread | None = None

    def fork(self, body: Callable[[Send], Report]) -> Child:
        """Run ``body(send)`` in a child: ``send`` reports progress, the return value is
        the final report. The child never returns into pytest."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 70
            try:
                os.close(read_fd)

                def send(report: Report) -> None:
                    _write_all(write_fd, json.dumps(report).encode() + b"\n")

                try:
                    final = {**body(send), "final": True}
                    code = 0
                except BaseException as exc:
                    final = {"final": True, "crashed": f"{type(exc).__name__}: {exc}"}
                    code = 1
                send(final)
            finally:
                os._exit(code)
        os.close(write_fd)
        child = Child(pid, read_fd)
        self.children.append(child)
        return child

    def start(self) -> None:
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        open_fds = {child.fd: child for child in self.children}
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 0.1)
            for fd in ready:
                child = open_fds[fd]
                chunk = os.read(fd, 65536)
                if not chunk:
                    os.close(fd)
                    del open_fds[fd]
                    continue
                child.pending += chunk
                *lines, rest = child.pending.split(b"\n")
                child.pending = bytearray(rest)
                if lines:
                    child.report = json.loads(lines[-1])

    def running(self) -> bool:
        return any(self._reap(child) is None for child in self.children)

    def _reap(self, child: Child) -> int | None:
        if child.status is None:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                child.status = status
        return child.status

    def wait(self, deadline: float) -> list[Child]:
        """Wait for every child until ``deadline`` (monotonic); kill -9 the rest."""
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in self.children:
            if self._reap(child) is None:
                child.hung = True
                os.kill(child.pid, signal.SIGKILL)
                child.status = os.waitpid(child.pid, 0)[1]
        if self._collector is not None:
            self._collector.join(10)
        return self.children


def problems_of(child: Child, label: str) -> list[str]:
    """What went wrong in ``child`` that is not in its tally: a hang, a crash, a bad exit."""
    if child.hung:
        last = json.dumps(child.report) if child.report else "nothing"
        return [f"{label} (pid {child.pid}) hung: killed at the deadline; last report: {last}"]
    if child.report is None or not child.report.get("final"):
        return [f"{label} (pid {child.pid}) exited (status {child.status}) without a report"]
    if "crashed" in child.report:
        return [f"{label} (pid {child.pid}) crashed: {child.report['crashed']}"]
    if child.status is None or os.waitstatus_to_exitcode(child.status) != 0:
        return [f"{label} (pid {child.pid}) exited with status {child.status}"]
    return []


# -- reading and tallying ------------------------------------------------------------


def owner_of(value: object) -> str:
    """Whose secret a value is (values are ``owner:index:nonce``)."""
    if isinstance(value, str) and value.count(":") == 2:
        return value.split(":", 1)[0]
    return f"<{type(value).__name__}>"


@dataclass
class Tally:
    """What a process read: how many, how many were someone else's value, which errors."""

    reads: int = 0
    wrong: int = 0
    wrong_from: Counter[str] = field(default_factory=Counter)
    wrong_samples: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def read(self, manager: KeyManager, name: str, expected: str) -> None:
        try:
            got = manager.get_secret(name)
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
            if len(self.error_samples) < SAMPLES:
                self.error_samples.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return
        finally:
            self.reads += 1
        if got != expected:
            self.wrong += 1
            self.wrong_from[owner_of(got)] += 1
            if len(self.wrong_samples) < SAMPLES:
                self.wrong_samples.append(f"{name} -> {str(got)[:80]!r}")

    def report(self) -> Report:
        return {
            "reads": self.reads,
            "wrong": self.wrong,
            "wrong_from": dict(self.wrong_from),
            "wrong_samples": self.wrong_samples,
            "errors": dict(self.errors),
            "error_samples": self.error_samples,
        }


def tally_problems(label: str, report: Report, expected_reads: int) -> list[str]:
    found = []
    if report["wrong"]:
        found.append(
            f"{label}: {report['wrong']} wrong values (owners: {report['wrong_from']}), "
            f"e.g. {report['wrong_samples']}"
        )
    if report["errors"]:
        found.append(f"{label}: errors {report['errors']}, e.g. {report['error_samples']}")
    if report["reads"] < expected_reads:
        found.append(f"{label}: only {report['reads']} of {expected_reads} reads done in time")
    return found


def merged(reports: Iterable[Report]) -> Report:
    """Several tallies' reports as one (samples: the first few)."""
    total: Report = {"reads": 0, "wrong": 0, "errors": {}, "wrong_from": {}}
    total["wrong_samples"], total["error_samples"] = [], []
    for report in reports:
        total["reads"] += report["reads"]
        total["wrong"] += report["wrong"]
        for what in ("errors", "wrong_from"):
            total[what] = dict(Counter(total[what]) + Counter(report[what]))
        for what in ("wrong_samples", "error_samples"):
            total[what] = (total[what] + report[what])[:SAMPLES]
    return total


def make_secrets(owner: str, count: int, run: str) -> dict[str, str]:
    return {f"{owner}/s{j}": f"{owner}:{j}:{run}-{uuid.uuid4().hex[:8]}" for j in range(count)}


def write_secrets(manager: KeyManager, secrets: dict[str, str]) -> None:
    """Write through the server's API with a few threads (the pool is gone before any
    fork: its threads are joined)."""
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda item: manager.set_secret(*item), secrets.items()))


def manager_for(server: DevServer, vault_path: str, **options: Any) -> KeyManager:
    return KeyManager(
        vault_url=server.address,
        vault_token=server.root_token,
        vault_path=vault_path,
        **options,
    )


# -- 1. os.fork() ----------------------------------------------------------------------


def test_forked_children_read_only_their_own_secrets(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    run = uuid.uuid4().hex[:8]
    own = {f"c{i}": make_secrets(f"c{i}", SECRETS_PER_CHILD, run) for i in range(CHILDREN)}
    own["parent"] = make_secrets("parent", PARENT_SECRETS, run)
    write_secrets(vault_manager, {k: v for secrets in own.values() for k, v in secrets.items()})

    # Two managers the children inherit: every read of one goes to Vault; the other caches.
    uncached = manager_for(bao_server, vault_path, cache_ttl=0)
    cached = manager_for(bao_server, vault_path, cache_size=4096)
    parents = own["parent"]
    # Used before the fork: each pool holds a keep-alive connection the children inherit.
    assert uncached.get_secret("parent/s0") == parents["parent/s0"]
    assert cached.get_secret("parent/s1") == parents["parent/s1"]
    passes = [("uncached", uncached), ("cached", cached), ("cache hits", cached)]

    started = time.monotonic()
    soft_deadline = started + SOFT_DEADLINE_SECONDS

    def read_own(secrets: dict[str, str]) -> Callable[[Send], Report]:
        def body(send: Send) -> Report:
            tallies = {label: Tally() for label, _ in passes}
            for label, manager in passes:
                tally = tallies[label]
                for done, (name, expected) in enumerate(secrets.items(), 1):
                    if time.monotonic() > soft_deadline:
                        break
                    tally.read(manager, name, expected)
                    if done % 500 == 0:
                        send({k: t.report() for k, t in tallies.items()})
            return {k: t.report() for k, t in tallies.items()}

        return body

    children = Children()
    for i in range(CHILDREN):
        children.fork(read_own(own[f"c{i}"]))
    children.start()

    # Meanwhile the parent reads its own, through the same two managers, until they finish.
    parent = {label: Tally() for label, _ in passes}
    rounds = 0
    while rounds < 1 or (children.running() and time.monotonic() < soft_deadline):
        for label, manager in passes[:2]:
            for name, expected in parents.items():
                parent[label].read(manager, name, expected)
        rounds += 1
    finished = children.wait(started + HARD_DEADLINE_SECONDS)
    elapsed = time.monotonic() - started

    problems = []
    for label, _ in passes[:2]:
        problems += tally_problems(
            f"parent {label}", parent[label].report(), rounds * PARENT_SECRETS
        )
    for i, child in enumerate(finished):
        problems += problems_of(child, f"child {i}")
        for label, _ in passes:
            if child.report is not None and label in child.report:
                report = child.report[label]
                problems += tally_problems(f"child {i} {label}", report, SECRETS_PER_CHILD)
    assert not problems, f"after {elapsed:.1f} s:\n" + "\n".join(problems)


# -- 2. multiprocessing, fork context --------------------------------------------------

#: What pool workers inherit: set before the pool forks them.
_INHERITED: dict[str, KeyManager] = {}
POOL_TASKS = 40
SECRETS_PER_TASK = 50
#: Pools made one after another, each forking its workers from the parent as it is then:
#: processes stop sharing a socket once one of them sees unread bytes on it, sometimes
#: before any answer went astray.
POOLS = 4
POOL_DEADLINE_SECONDS = 25.0


def _read_task(secrets: dict[str, str]) -> Report:
    """A pool task: read ``secrets`` through the manager the worker inherited."""
    tally = Tally()
    manager = _INHERITED["manager"]
    for name, expected in secrets.items():
        tally.read(manager, name, expected)
    return {**tally.report(), "pid": os.getpid()}


def test_fork_pool_workers_read_only_their_own_secrets(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    run = uuid.uuid4().hex[:8]
    tasks = [make_secrets(f"t{k}", SECRETS_PER_TASK, run) for k in range(POOL_TASKS)]
    parents = make_secrets("parent", PARENT_SECRETS, run)
    write_secrets(vault_manager, {k: v for task in [*tasks, parents] for k, v in task.items()})

    manager = manager_for(bao_server, vault_path, cache_ttl=0)
    assert manager.get_secret("parent/s0") == parents["parent/s0"]  # a keep-alive connection
    _INHERITED["manager"] = manager
    parent = Tally()
    rounds = 0
    reports: list[Report] = []
    problems: list[str] = []
    started = time.monotonic()
    deadline = started + POOL_DEADLINE_SECONDS
    try:
        for generation in range(POOLS):
            batch = tasks[generation::POOLS]
            pool = multiprocessing.get_context("fork").Pool(CHILDREN)
            try:
                pending = pool.map_async(_read_task, batch, chunksize=1)
                # Meanwhile the parent reads its own through the same manager.
                done_here = 0
                while done_here < 1 or (not pending.ready() and time.monotonic() < deadline):
                    for name, expected in parents.items():
                        parent.read(manager, name, expected)
                    done_here += 1
                rounds += done_here
                try:
                    reports += pending.get(timeout=max(1.0, deadline - time.monotonic()))
                except multiprocessing.TimeoutError:
                    problems.append(f"pool {generation}: its tasks did not finish in time")
                    break
            finally:
                pool.terminate()
                pool.join()
    finally:
        _INHERITED.clear()
    elapsed = time.monotonic() - started

    problems += tally_problems("parent", parent.report(), rounds * PARENT_SECRETS)
    if reports:
        workers = len({report["pid"] for report in reports})
        label = f"{len(reports)} tasks in {workers} workers of {POOLS} pools"
        problems += tally_problems(label, merged(reports), POOL_TASKS * SECRETS_PER_TASK)
    assert not problems, f"after {elapsed:.1f} s:\n" + "\n".join(problems)


# -- 3. a fork while another thread's load is in flight ------------------------------

#: The manager's deadline with timeout=2, retries=0 is about 2 s; this leaves room for a
#: fresh read of its own (and a slow machine), not for waiting on a load that never ends.
CHILD_SECONDS = 8.0


def test_child_does_not_wait_for_a_load_in_flight_in_the_parent(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    expected = f"x:{uuid.uuid4().hex}"
    vault_manager.set_secret("slow", expected)
    vault_manager.set_secret("warm", "up")
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            timeout=2,
            retries=0,
        )
        assert manager.get_secret("warm") == "up"  # KV version known: the next read is X's
        # Only the parent's read of the secret is slowed: one byte of the answer per 50 ms.
        proxy.inject(Fault.drip(0.05, path_prefix=f"/v1/secret/data/{vault_path}/slow"))

        def parent_read() -> None:
            with contextlib.suppress(KeyManagementError):  # cut at its deadline, most likely
                manager.get_secret("slow")

        reader = threading.Thread(target=parent_read, daemon=True)
        reader.start()
        wait_until = time.monotonic() + 5
        while not proxy.hits_for(f"{vault_path}/slow") and time.monotonic() < wait_until:
            time.sleep(0.01)
        assert proxy.hits_for(f"{vault_path}/slow"), "the parent's read never reached Vault"
        time.sleep(0.2)  # its answer is dripping now
        in_flight = reader.is_alive()

        def read_in_child(send: Send) -> Report:
            class Hung(Exception):  # noqa: N818 - the child's own alarm, never raised to pytest
                pass

            where: list[str] = []

            def alarm(signum: int, frame: FrameType | None) -> None:
                where.extend(
                    f"{Path(f.filename).name}:{f.lineno} {f.name}"
                    for f in traceback.extract_stack(frame)[-4:]
                )
                raise Hung

            signal.signal(signal.SIGALRM, alarm)
            signal.setitimer(signal.ITIMER_REAL, CHILD_SECONDS)
            began = time.monotonic()
            try:
                value = manager.get_secret("slow")
                outcome = "right value" if value == expected else f"wrong value {value!r}"
            except Hung:
                outcome = f"hung in {' < '.join(reversed(where))}"
            except KeyManagementError as exc:
                outcome = f"error {type(exc).__name__}: {exc}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            return {"outcome": outcome, "seconds": time.monotonic() - began}

        children = Children()
        child = children.fork(read_in_child)
        children.start()
        children.wait(time.monotonic() + CHILD_SECONDS + 4)
        reader.join(10)

    assert in_flight, "the parent's load ended before the fork: the test proved nothing"
    problems = problems_of(child, "child")
    assert not problems, "\n".join(problems)
    assert child.report is not None
    outcome, seconds = child.report["outcome"], child.report["seconds"]
    assert outcome == "right value" or outcome.startswith("error "), (
        f"child: {outcome} after {seconds:.1f} s"
    )
    assert seconds < CHILD_SECONDS, f"child: {outcome} only after {seconds:.1f} s"


# -- 4. encryption in parent and child, under different keys -------------------------

BLOBS = 200
#: The two processes share the inherited socket until one of them notices unread bytes
#: on it (another process's answer) and opens its own: often within a few requests. So
#: the fork is repeated, each child inheriting whatever connection the parent holds then.
FORKS = 5


def test_parent_and_child_encrypt_under_their_own_keys(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    vault_manager.generate_key("tenant-a")
    vault_manager.generate_key("tenant-b")
    run = uuid.uuid4().hex[:8]
    # Every encrypt reads the key's latest version from Vault.
    manager = manager_for(bao_server, vault_path, cache_ttl=0)
    assert manager.decrypt(manager.encrypt(b"warm", "tenant-a")) == b"warm"  # a connection

    def encrypt_some(tenant: str, fork: int) -> tuple[list[tuple[str, bytes]], Counter[str]]:
        blobs, errors = [], Counter[str]()
        for j in range(BLOBS // FORKS):
            plaintext = f"{tenant}:{fork}-{j}:{run}".encode()
            try:
                blobs.append((tenant, manager.encrypt(plaintext, tenant)))
            except Exception as exc:
                errors[type(exc).__name__] += 1
        return blobs, errors

    blobs: list[tuple[str, bytes]] = []
    problems: list[str] = []
    for fork in range(FORKS):

        def child_body(send: Send, fork: int = fork) -> Report:
            made, errors = encrypt_some("tenant-b", fork)
            return {"blobs": [blob.hex() for _, blob in made], "errors": dict(errors)}

        children = Children()
        child = children.fork(child_body)
        children.start()
        made, parent_errors = encrypt_some("tenant-a", fork)
        children.wait(time.monotonic() + HARD_DEADLINE_SECONDS)
        blobs += made
        if parent_errors:
            problems.append(f"parent, fork {fork}: encrypt errors {dict(parent_errors)}")
        found = problems_of(child, f"child {fork}")
        if child.report is not None and not found:
            if child.report["errors"]:
                found.append(f"child {fork}: encrypt errors {child.report['errors']}")
            blobs += [("tenant-b", bytes.fromhex(blob)) for blob in child.report["blobs"]]
        problems += found

    # A manager that never forked opens each blob with the key its header names.
    events: list[AccessEvent] = []
    fresh = manager_for(bao_server, vault_path, audit_hook=events.append)
    failed: Counter[str] = Counter()
    mismatched: list[str] = []
    for tenant, blob in blobs:
        try:
            plaintext = fresh.decrypt(blob)
        except Exception as exc:
            failed[f"{tenant}: {type(exc).__name__}"] += 1
            continue
        named = events[-1].name
        if not (named == tenant == plaintext.decode().split(":", 1)[0]):
            mismatched.append(f"{tenant}'s blob names {named!r}, holds {plaintext[:40]!r}")
    if failed:
        problems.append(f"{sum(failed.values())} of {len(blobs)} blobs do not open: {dict(failed)}")
    if mismatched:
        problems.append(f"{len(mismatched)} blobs under the wrong key, e.g. {mismatched[:SAMPLES]}")
    if len(blobs) < 2 * BLOBS:
        problems.append(f"only {len(blobs)} of {2 * BLOBS} blobs were made")
    assert not problems, "\n".join(problems)


# -- an event loop across a fork ---------------------------------------------------------


def test_a_loop_used_for_reads_before_a_fork_is_refused_in_the_child(
    bao_server: DevServer, vault_path: str
) -> None:
    """The child's copy of the loop polls the parent's kept-alive connections (one epoll
    between them): a read there would take the parent's answers. Refused, in one line
    that says what to do; the parent's connections are left alone."""
    import asyncio

    from secureml.key_management import AsyncKeyManager, ConfigurationError

    km = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        use_env_fallback=False,
        cache_ttl=0,
    )
    km.set_secret("x", "parent's")
    akm = AsyncKeyManager(km)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(akm.get_secret("x")) == "parent's"  # kept alive
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.close(read_fd)
                try:
                    said = f"read {loop.run_until_complete(akm.get_secret('x'))!r}"
                except ConfigurationError as exc:
                    said = str(exc)
                _write_all(write_fd, said.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        try:
            ready, _, _ = select.select([read_fd], [], [], 20)
            said = os.read(read_fd, 65536).decode() if ready else "(no answer)"
        finally:
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "cannot be shared across os.fork()" in said, said
        assert "\n" not in said
        for _ in range(20):
            assert loop.run_until_complete(akm.get_secret("x")) == "parent's"
    finally:
        loop.run_until_complete(akm.aclose())
        loop.close()
