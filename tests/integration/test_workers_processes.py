"""secureml on worker processes (issue 14): a spec crosses, each process logs in once.

The parent builds an AppRole manager with its secret id passed as a value, and ships
``km.spec(credential_env="WORKER_SECRET_ID")``: every setting, the secret id only by
the name of the variable the workers inherit. Each worker calls ``spec.manager()``.
What is counted is real: successful ``auth/<mount>/login`` answers in the audited
OpenBao server's audit log (each test has an AppRole mount of its own), so "one login
per worker process" is what Vault saw, not what the library says it did.

Keys and secrets are made by a separate root-token manager, so the logins counted on
the test's mount are the workers' (and, where said, the parent's AppRole manager's).

Worker code lives in tests/support/worker_jobs.py (spawn and forkserver import it by
name) and the gunicorn app in tests/support/worker_app.py.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from secureml._devserver import free_loopback_port
from secureml.key_management import AppRoleAuth, KeyManager, KeyManagerSpec
from tests.support import worker_jobs
from tests.support.workers import AppRole, AuditedServer

pytestmark = [
    # Python 3.12+ warns when a process with threads forks: forking is the point here.
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL_VAR = "WORKER_SECRET_ID"
WORKERS = 4
#: Seconds any one wait on a worker (a result, a request, a readiness) may take.
WAIT_SECONDS = 60.0


@dataclass
class Setup:
    """One test's Vault side: its AppRole, the parent's managers and the spec."""

    role: AppRole
    root: KeyManager  # makes keys and secrets, logs in to no counted mount
    km: KeyManager  # the parent's AppRole manager (secret id passed as a value)
    spec: KeyManagerSpec  # km.spec(credential_env=...), login_jitter=0
    secrets: dict[str, str]  # name -> value, each value unique to its name


@pytest.fixture
def setup(audited_bao: AuditedServer, vault_path: str, monkeypatch: pytest.MonkeyPatch) -> Setup:
    role = audited_bao.approle(vault_path)
    root = KeyManager(
        vault_url=audited_bao.address, vault_token=audited_bao.root_token, vault_path=vault_path
    )
    nonce = uuid.uuid4().hex[:8]
    secrets = {f"app/s{i:02d}": f"value-{i:02d}-{nonce}" for i in range(16)}
    for name, value in secrets.items():
        root.set_secret(name, value)
    # The workers (children of this process) inherit the variable the spec names.
    monkeypatch.setenv(CREDENTIAL_VAR, role.secret_id)
    # Children import tests.support.worker_jobs by name: spawn's get this process's
    # sys.path; the forkserver (started once), gunicorn and `python -c` get PYTHONPATH.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("PYTHONPATH", _with_repo(os.environ.get("PYTHONPATH")))
    km = KeyManager(
        vault_url=audited_bao.address,
        vault_auth=AppRoleAuth(role.role_id, role.secret_id, mount=role.mount),
        vault_path=vault_path,
    )
    spec = km.spec(credential_env=CREDENTIAL_VAR)
    assert role.secret_id.encode() not in pickle.dumps(spec)
    return Setup(role, root, km, spec.replace(login_jitter=0), secrets)


def _with_repo(path: str | None) -> str:
    """``path`` (a PYTHONPATH) with the repository first, so ``tests.support`` imports."""
    parts = [str(REPO_ROOT), *(p for p in (path or "").split(os.pathsep) if p)]
    return os.pathsep.join(dict.fromkeys(parts))


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment (the fixture put the repository on PYTHONPATH)."""
    return {**os.environ, "PYTHONPATH": _with_repo(os.environ.get("PYTHONPATH")), **extra}


# -- 1. PyTorch DataLoader ---------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "parent_uses_spec"),
    [("fork", False), ("fork", True), ("spawn", False)],
    ids=["fork", "fork-after-parent-used-spec", "spawn"],
)
# Four workers on a two-core machine is the point (more workers than cores).
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_dataloader_workers_decrypt_with_one_login_each(
    setup: Setup, audited_bao: AuditedServer, context: str, parent_uses_spec: bool
) -> None:
    """A Dataset holding the spec and blobs encrypted in the parent: 4 DataLoader
    workers decrypt every sample right, and Vault saw exactly one login per worker.

    The parent's own AppRole manager logs in once to encrypt (counted before the
    workers start). Plain ``fork``: the parent never calls ``spec.manager()``, so there
    is no spec manager to inherit. ``fork-after-parent-used-spec``: the parent decrypts
    one sample through ``spec.manager()`` first (one more login, counted before the
    workers start); each forked worker must still build and log in its own."""
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    for key in ("data/key-a", "data/key-b"):
        setup.root.generate_key(key)
    plaintexts = [f"sample-{i:03d}-{uuid.uuid4().hex}".encode() for i in range(64)]
    blobs = [
        setup.km.encrypt(p, key_name="data/key-a" if i % 2 else "data/key-b")
        for i, p in enumerate(plaintexts)
    ]
    if parent_uses_spec:
        assert setup.spec.manager().decrypt(blobs[0]) == plaintexts[0]
    before = audited_bao.logins(setup.role.mount)
    # The parent's AppRole manager logged in once, to encrypt (and its spec manager
    # once more, if it was used).
    assert before == 1 + parent_uses_spec

    loader = DataLoader(
        worker_jobs.EncryptedSamples(setup.spec, blobs),
        batch_size=None,  # one sample at a time: (index, pid, plaintext)
        num_workers=WORKERS,
        multiprocessing_context=context,
        timeout=WAIT_SECONDS,
    )
    got = list(loader)

    assert sorted(index for index, _, _ in got) == list(range(len(plaintexts)))
    wrong = [index for index, _, plain in got if plain != plaintexts[index]]
    assert wrong == [], f"{len(wrong)} samples decrypted wrong"
    pids = {pid for _, pid, _ in got}
    assert len(pids) == WORKERS
    assert os.getpid() not in pids
    assert audited_bao.logins(setup.role.mount) - before == WORKERS
    assert audited_bao.failed_logins(setup.role.mount) == 0


# -- 2. multiprocessing.Pool -----------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_pool_tasks_share_one_login_per_process(
    setup: Setup, audited_bao: AuditedServer, context: str
) -> None:
    """64 tasks on a 4-process pool each read a secret through ``spec.manager()``:
    every value is the one of its name, and logins == the pool's distinct pids."""
    import multiprocessing

    names = [name for _ in range(4) for name in setup.secrets]  # 64 tasks
    ctx = multiprocessing.get_context(context)
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap_async(
            worker_jobs.read_secret, [(setup.spec, name) for name in names], chunksize=1
        ).get(timeout=WAIT_SECONDS)

    assert [name for _, name, _ in results] == names
    wrong = [(name, value) for _, name, value in results if value != setup.secrets[name]]
    assert wrong == []
    pids = {pid for pid, _, _ in results}
    assert 1 <= len(pids) <= WORKERS
    assert os.getpid() not in pids
    # The parent's manager never talked to Vault: every counted login is a worker's.
    assert audited_bao.logins(setup.role.mount) == len(pids)
    assert audited_bao.failed_logins(setup.role.mount) == 0


# -- 3. gunicorn --preload -------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``gunicorn --preload`` with 4 sync workers on a free loopback port, ready;
    stopped by its PID (SIGTERM, then SIGKILL of its process group) afterwards."""
    port = free_loopback_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "gunicorn", "--preload",
        "--workers", str(WORKERS), "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--timeout", "30", "--graceful-timeout", "5",
        "--log-level", "info", "tests.support.worker_app:app",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if _get(f"{base}/ready", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn not ready in 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, *, timeout: float) -> tuple[int, dict[str, str], str]:
    """GET ``url`` (never through a proxy): status, headers, body."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def test_gunicorn_preload_workers_read_their_own(
    setup: Setup, audited_bao: AuditedServer, vault_path: str, tmp_path: Path
) -> None:
    """gunicorn --preload: the master imports the app, whose import reads a secret
    through ``spec.manager()`` (a logged-in manager before the fork); 4 sync workers
    then answer 400 requests from 8 threads. Every answer is the value of the name
    asked for (values differ per name: cross-talk would show), none fails or hangs,
    every worker answered, and Vault saw one login in the master and one per worker
    (each forked worker replaced the inherited manager with its own)."""
    names = sorted(setup.secrets)
    env = subprocess_env(
        WORKER_APP_VAULT_URL=audited_bao.address,
        WORKER_APP_ROLE_ID=setup.role.role_id,
        WORKER_APP_ROLE_MOUNT=setup.role.mount,
        WORKER_APP_VAULT_PATH=vault_path,
        WORKER_APP_WARMUP_SECRET=names[0],
        WORKER_APP_SECRET_ID=setup.role.secret_id,
    )
    requests = [names[i % len(names)] for i in range(400)]
    log = tmp_path / "gunicorn.log"

    def ask(name: str) -> tuple[str, int | None, str, str | None, str | None]:
        try:
            status, headers, body = _get(f"{base}/secret?name={name}", timeout=10)
        except OSError as exc:  # a timeout is an OSError too: counted as a failure
            return name, None, f"{type(exc).__name__}: {exc}", None, None
        return name, status, body, headers.get("X-Worker-Pid"), headers.get("X-Master-Pid")

    with gunicorn(env, log) as (proc, base):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, requests))
        master_pid = proc.pid

    failed = [a for a in answers if a[1] != 200]
    assert failed == [], f"{len(failed)} failed, e.g. {failed[:3]}\n{log.read_text()[-2000:]}"
    wrong = [(name, body) for name, _, body, _, _ in answers if body != setup.secrets[name]]
    assert wrong == [], f"{len(wrong)} answers carried another name's value: {wrong[:3]}"
    assert {a[4] for a in answers} == {str(master_pid)}, "the app was imported in the master"
    workers = Counter(a[3] for a in answers)
    assert len(workers) == WORKERS, f"not every worker answered: {dict(workers)}"
    assert str(master_pid) not in workers
    logins = audited_bao.logins(setup.role.mount)
    assert logins <= 1 + WORKERS
    assert logins == 1 + len(workers), "one login in the master, one in each worker"
    assert audited_bao.failed_logins(setup.role.mount) == 0


# -- 4. 32 processes at once -----------------------------------------------------------


def _login_times(server: AuditedServer, mount: str) -> list[float]:
    """When each successful login at ``auth/<mount>/login`` was answered (epoch s)."""
    import json

    times = []
    for line in server.audit_log.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        request = entry.get("request", {})
        if (
            entry.get("type") == "response"
            and request.get("path") == f"auth/{mount}/login"
            and not entry.get("error")
        ):
            stamp = entry["time"].rstrip("Z")
            head, _, fraction = stamp.partition(".")
            times.append(datetime.fromisoformat(f"{head}.{fraction[:6]:0<6}+00:00").timestamp())
    return times


def test_32_processes_at_once_log_in_once_each(setup: Setup, audited_bao: AuditedServer) -> None:
    """32 fresh interpreters (``python -c``), the spec pickled to each on stdin, each
    building ``spec.manager()`` and then held until all are ready, then released at
    once: every read succeeds, and Vault saw exactly 32 logins, all after the release
    (building a manager does not log in), and no failed one. The spec keeps its
    default login_jitter (0.5 s), which spreads the 32 first logins."""
    spec = setup.km.spec(credential_env=CREDENTIAL_VAR)
    assert spec.login_jitter == 0.5
    names = sorted(setup.secrets)
    code = "from tests.support.worker_jobs import subprocess_main; subprocess_main()"
    env = subprocess_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(32)
    ]
    try:
        for i, proc in enumerate(procs):
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps((spec, names[i % len(names)])))
            proc.stdin.flush()
        with ThreadPoolExecutor(len(procs)) as pool:
            ready = [pool.submit(p.stdout.readline) for p in procs]  # type: ignore[union-attr]
            _, late = wait(ready, timeout=WAIT_SECONDS)
        assert not late, f"{len(late)} of 32 processes never got ready"
        assert [f.result() for f in ready] == [b"ready\n"] * len(procs)
        released = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + WAIT_SECONDS
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((proc.returncode, out.decode().strip(), err.decode()[-500:]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    bad = [o for o in outputs if o[0] != 0 or not o[1].startswith("ok ")]
    assert bad == [], f"{len(bad)} processes failed, e.g. {bad[:2]}"
    results = [o[1].split(" ", 3) for o in outputs]
    assert [value for _, _, _, value in results] == [
        setup.secrets[names[i % len(names)]] for i in range(len(procs))
    ]
    assert len({pid for _, pid, _, _ in results}) == len(procs)
    assert audited_bao.logins(setup.role.mount) == len(procs)
    assert audited_bao.failed_logins(setup.role.mount) == 0
    times = _login_times(audited_bao, setup.role.mount)
    assert len(times) == len(procs)
    # Same clock (this machine's); 50 ms for the audit stamp's rounding and writing.
    assert min(times) >= released - 0.05, "a login before the release: not at first use"
    # 32 uniform waits in 0..0.5 s span less than 0.15 s with probability ~1e-15. (One
    # way only: on a busy machine the logins spread out even without the jitter.)
    assert max(times) - min(times) > 0.15, "the logins were not spread"


# -- 5. a worker without its credential ------------------------------------------------


def test_worker_without_credential_variable_gets_one_clear_error(
    setup: Setup, audited_bao: AuditedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned worker that lacks the variable the spec names: ``spec.manager()``
    raises one ConfigurationError naming the variable, carrying neither the secret id
    nor the role id, before any login is tried. Once the worker sets the variable, the
    next ``spec.manager()`` works (the failure was not remembered)."""
    import multiprocessing

    monkeypatch.delenv(CREDENTIAL_VAR)
    monkeypatch.setenv("WORKER_SECRET_ID_LATER", setup.role.secret_id)
    name = sorted(setup.secrets)[0]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        outcome = pool.apply_async(
            worker_jobs.read_without_credential,
            (setup.spec, name, CREDENTIAL_VAR, "WORKER_SECRET_ID_LATER"),
        ).get(timeout=WAIT_SECONDS)

    assert outcome["had_variable"] is False
    assert outcome["pid"] != os.getpid()
    assert outcome["error_type"] == "ConfigurationError", outcome
    message = outcome["message"]
    assert CREDENTIAL_VAR in message
    assert setup.role.secret_id not in message
    assert setup.role.role_id not in message
    assert outcome["cause"] is None
    assert outcome["then"] == setup.secrets[name]
    # No login was tried without the credential; the one after setting it succeeded.
    assert audited_bao.failed_logins(setup.role.mount) == 0
    assert audited_bao.logins(setup.role.mount) == 1
