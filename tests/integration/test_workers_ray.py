"""secureml on Ray tasks (issue 14): a KeyManagerSpec crosses as a task argument, each
Ray worker process builds one manager from it (one AppRole login, counted in the real
OpenBao audit log) and encrypts its chunk of a column with a column cipher; the driver
decrypts.

A local Ray instance of two CPUs, started once per recipe: the manager built by the
task's first ``spec.manager()``, or built as each worker process starts by
``ray.init(runtime_env={"worker_process_setup_hook": spec.manager})``. The secret id
reaches the workers in their environment: it is in this process's environment while
``ray.init`` starts the raylet, whose workers inherit it, and removed right after. So it
is in no runtime env (``runtime_env={"env_vars": ...}`` would show it to every task
in ``get_runtime_context().runtime_env``), in nothing Ray keeps in its GCS key-value
store (the exported functions and setup hook), and in no file of its session directory.
The setup hook builds each worker's manager as the worker starts (reading the secret id
there); the login, as for any manager, waits for the first use.

Ray replaces a loopback ``_node_ip_address`` by the machine's own address, and its
servers then listen on every interface. With ``ENABLE_RAY_CLUSTER`` off (what
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets when Ray is imported) the node keeps
127.0.0.1 and every server of it listens on loopback only, as checked here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR  # noqa: E402
from ray._private.runtime_env.setup_hook import _encode_function_key  # noqa: E402
from ray.experimental import internal_kv  # noqa: E402

from secureml.key_management import KeyManagerSpec  # noqa: E402
from tests.support.workers import AuditedServer, WorkerSetup, worker_setup  # noqa: E402

TASKS = 16
PER_TASK = 500
ROWS = TASKS * PER_TASK
CPUS = 2
KEY = "pii"
SECRET_VAR = "WORKER_SECRET_ID"
EMAILS = [f"user{i:05d}@example.com" for i in range(ROWS)]
#: Seconds any one ray.get may take.
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Cluster:
    """One local Ray instance and the worker setup (fresh AppRole) it was started for."""

    setup: WorkerSetup
    hook: bool  # started with worker_process_setup_hook=spec.manager
    temp_dir: Path
    listeners_before: frozenset[int]  # socket inodes listening before ray.init


@pytest.fixture(scope="module", params=[False, True], ids=["spec-in-task", "setup-hook"])
def cluster(request: pytest.FixtureRequest, audited_bao: AuditedServer) -> Iterator[Cluster]:
    setup = worker_setup(audited_bao, key=KEY, credential_env=SECRET_VAR)
    hook: bool = request.param
    runtime_env = {"worker_process_setup_hook": setup.spec.manager} if hook else None
    # Short: Ray's Unix socket paths under it must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    before = frozenset(_listening(_process_tree()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # Keep 127.0.0.1 as the node's address: the variable for Ray's processes, the
        # constant for this one (whose Ray read the variable when it was imported).
        patch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        try:
            with pytest.MonkeyPatch.context() as secret:
                # The raylet starts with this environment and its workers inherit it.
                secret.setenv(SECRET_VAR, setup.role.secret_id)
                ray.init(
                    num_cpus=CPUS,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=str(temp_dir),
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    runtime_env=runtime_env,
                )
            yield Cluster(setup, hook, temp_dir, before)
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def encrypt_job() -> Callable[[KeyManagerSpec, list[str]], tuple[int, list[bytes]]]:
    """The Ray task: the spec arrives as an argument (a local function, so shipped by
    value, as a driver script's are)."""

    def encrypt(spec: KeyManagerSpec, emails: list[str]) -> tuple[int, list[bytes]]:
        import os

        cipher = spec.manager().column_cipher("pii", column="email")
        return os.getpid(), cipher.encrypt(emails)

    return encrypt


def look_job() -> Callable[[KeyManagerSpec], tuple[int, bool, bool]]:
    """A Ray task that never calls spec.manager(): its worker's pid, whether the worker
    holds a manager for the spec already (the setup hook's), and whether it has the
    secret id's variable."""

    def look(spec: KeyManagerSpec) -> tuple[int, bool, bool]:
        import os

        # The registry is private: looked at only to tell the hook's work from a task's.
        from secureml.key_management._spec import _managers

        built = any(key[0] == spec for key in _managers._managers)
        return os.getpid(), built, "WORKER_SECRET_ID" in os.environ

    return look


def _chunks() -> list[list[str]]:
    return [EMAILS[t * PER_TASK : (t + 1) * PER_TASK] for t in range(TASKS)]


def test_each_worker_process_logs_in_once(cluster: Cluster, audited_bao: AuditedServer) -> None:
    setup = cluster.setup
    spec_ref = ray.put(setup.spec)
    look = ray.remote(look_job())
    looks = ray.get([look.remote(spec_ref) for _ in range(CPUS * 2)], timeout=WAIT_SECONDS)
    # The hook builds each worker's manager as the worker starts (reading the secret id
    # there); like any manager it logs in on first use, so no login yet either way.
    assert {built for _, built, _ in looks} == {cluster.hook}
    assert audited_bao.logins(setup.role.mount, settle=0) == 0

    task = ray.remote(encrypt_job())
    results = ray.get([task.remote(spec_ref, c) for c in _chunks()], timeout=WAIT_SECONDS)
    pids = {pid for pid, _ in results}
    cells = [cell for _, chunk in results for cell in chunk]
    assert len(cells) == ROWS
    assert all(e.encode() not in c for e, c in zip(EMAILS, cells, strict=True))
    assert setup.root.column_cipher(KEY, column="email").decrypt(cells, text=True) == EMAILS
    # 16 tasks on 2 CPUs: a few worker processes, reused from task to task, each with
    # one manager and so one login.
    assert os.getpid() not in pids
    assert 1 <= len(pids) < TASKS
    assert audited_bao.logins(setup.role.mount) == len(pids)
    assert audited_bao.failed_logins(setup.role.mount) == 0


def test_the_secret_id_travels_only_in_the_workers_environment(cluster: Cluster) -> None:
    setup = cluster.setup
    secret = setup.role.secret_id.encode()
    # What is shipped: the task functions and their arguments, as Ray pickles them.
    for function in (encrypt_job(), look_job()):
        assert secret not in cloudpickle.dumps(function)
    shipped = cloudpickle.dumps((setup.spec, _chunks()[0]))
    assert secret not in shipped
    assert SECRET_VAR.encode() in shipped  # the reference travels, not the value
    if cluster.hook:
        assert secret not in cloudpickle.dumps(setup.spec.manager)

    # The workers have the variable; this process no longer does, nor does the job's
    # runtime env (the hook's is only a key to the hook in the GCS).
    looks = ray.get([ray.remote(look_job()).remote(setup.spec)], timeout=WAIT_SECONDS)
    assert [has_secret for _, _, has_secret in looks] == [True]
    assert SECRET_VAR not in os.environ
    runtime_env = ray.get_runtime_context().runtime_env
    assert secret not in repr(runtime_env).encode()
    assert SECRET_VAR not in repr(runtime_env)
    assert ("worker_process_setup_hook" in runtime_env) == cluster.hook

    # Nothing Ray keeps: its GCS key-value store (the exported functions and setup
    # hook, job and cluster data) and its session directory (logs, config).
    namespaces = {
        value for name, value in vars(ray_constants).items() if name.startswith("KV_NAMESPACE_")
    }
    stored: dict[tuple[bytes | None, bytes], bytes] = {}
    for namespace in namespaces:
        for key in internal_kv._internal_kv_list(b"", namespace=namespace):
            stored[namespace, key] = internal_kv._internal_kv_get(key, namespace=namespace) or b""
    assert [k for k, v in stored.items() if secret in k[1] + v] == []
    functions = ray_constants.KV_NAMESPACE_FUNCTION_TABLE
    assert any(n == functions and k.startswith(b"RemoteFunction:") for n, k in stored)
    if cluster.hook:  # the hook, pickled, under the key its variable names
        hook_key = _encode_function_key(runtime_env["env_vars"][WORKER_PROCESS_SETUP_HOOK_ENV_VAR])
        assert stored[functions, hook_key]
    files = [p for p in cluster.temp_dir.rglob("*") if p.is_file() and not p.is_socket()]
    assert files
    for path in files:
        assert secret not in path.read_bytes(), path


def test_ray_listens_on_loopback_only(cluster: Cluster) -> None:
    ray.get([ray.remote(look_job()).remote(cluster.setup.spec)], timeout=WAIT_SECONDS)
    new = {
        inode: address
        for inode, address in _listening(_process_tree()).items()
        if inode not in cluster.listeners_before
    }
    assert len(new) >= 3  # the GCS, the raylet, this driver's and each worker's core
    assert [a for a in new.values() if not a.is_loopback] == []
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"


# -- which sockets the processes of this test session listen on (Linux /proc) ----------


def _process_tree() -> set[int]:
    """This process and its descendants (Ray's GCS, raylet, agents and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree: set[int] = set()
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _listening(pids: set[int]) -> dict[int, Any]:
    """Inode -> local address of every TCP socket in LISTEN that ``pids`` hold."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    listening: dict[int, Any] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # Each 32-bit word is in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            listening[int(fields[9])] = address
    held: dict[int, Any] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listening:
                    held[inode] = listening[inode]
    return held
