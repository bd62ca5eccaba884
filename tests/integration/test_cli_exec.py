"""``secureml exec`` against the dev server, in real processes: secrets reach the command
through its environment or private files and never its argv, signals sent to secureml
reach the command, its exit code is passed through, and the private folder is gone after.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secureml._devserver import DevServer

pytestmark = pytest.mark.integration

SECUREML = str(Path(sys.executable).with_name("secureml"))
PYTHON = sys.executable


@pytest.fixture
def env(bao_server: DevServer, vault_path: str) -> dict[str, str]:
    return {
        **os.environ,
        "VAULT_ADDR": bao_server.address,
        "VAULT_TOKEN": bao_server.root_token,
        "SECUREML_TEST_PATH": vault_path,
    }


def secureml(
    env: dict[str, str], *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [SECUREML, "--vault-path", env["SECUREML_TEST_PATH"], *args],
        input=input,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_secrets_reach_the_environment_and_files_never_argv(env: dict[str, str]) -> None:
    secret = "pa55-" + os.urandom(8).hex()
    assert secureml(env, "set", "db/password", input=secret.encode()).returncode == 0
    assert secureml(env, "set", "tls/key", "--binary", input=b"\x00\x01key-bytes").returncode == 0
    probe = (
        "import os, sys, stat, json;"
        "d = os.environ['SECUREML_SECRETS_DIR'];"
        "p = os.path.join(d, 'certs/tls.key');"
        "mode = lambda f: oct(stat.S_IMODE(os.stat(f).st_mode));"
        "print(json.dumps({'env': os.environ['DB_PASSWORD'], 'file': open(p, 'rb').read().hex(),"
        " 'mode': mode(p), 'dir': mode(d), 'argv': sys.argv, 'folder': d}))"
    )
    done = secureml(
        env,
        "exec",
        "--env",
        "DB_PASSWORD=db/password",
        "--file",
        "certs/tls.key=tls/key",
        "--",
        PYTHON,
        "-c",
        probe,
    )
    assert done.returncode == 0, done.stderr
    import json

    seen = json.loads(done.stdout)
    assert seen["env"] == secret
    assert bytes.fromhex(seen["file"]) == b"\x00\x01key-bytes"
    assert seen["mode"] == "0o600"
    assert seen["dir"] == "0o700"
    assert secret not in " ".join(seen["argv"])
    assert not os.path.exists(seen["folder"])  # removed once the command ended
    assert secret not in done.stderr


def test_the_exit_code_is_passed_through(env: dict[str, str]) -> None:
    assert secureml(env, "set", "x", input=b"v").returncode == 0
    done = secureml(env, "exec", "--env", "X=x", "--", PYTHON, "-c", "raise SystemExit(7)")
    assert done.returncode == 7
    killed = secureml(
        env,
        "exec",
        "--env",
        "X=x",
        "--",
        PYTHON,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    )
    assert killed.returncode == 128 + signal.SIGTERM


def test_a_signal_sent_to_secureml_reaches_the_command(env: dict[str, str], tmp_path: Path) -> None:
    assert secureml(env, "set", "x", input=b"v").returncode == 0
    marker = tmp_path / "got"
    script = (
        "import signal, sys, time, pathlib\n"
        "def on(signum, frame):\n"
        f"    pathlib.Path({str(marker)!r}).write_text(str(signum)); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, on)\n"
        f"pathlib.Path({str(marker)!r} + '.ready').write_text('1')\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen(
        [
            SECUREML,
            "--vault-path",
            env["SECUREML_TEST_PATH"],
            "exec",
            "--env",
            "X=x",
            "--",
            PYTHON,
            "-c",
            script,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not Path(str(marker) + ".ready").exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr  # the command's own code, after its handler ran
    assert marker.read_text() == str(int(signal.SIGTERM))


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("--env", "X=x", "--", "no-such-program-here"), 127, "command not found"),
        (("--env", "1X=x", "--", "true"), 2, "not a variable name"),
        (("--file", "../x=x", "--", "true"), 2, "relative file name"),
        (("--file", "/etc/x=x", "--", "true"), 2, "relative file name"),
        (("--env", "X", "--", "true"), 2, "TARGET=NAME"),
        (("--", "true"), 2, "at least one"),
        (("--env", "X=missing", "--", "true"), 3, "not found"),
        (("--env", "LD_PRELOAD=x", "--", "true"), 2, "changes how programs load"),
        (("--env", "PATH=x", "--", "true"), 2, "changes how programs load"),
        (("--file", "a=x", "--file", "./a=x", "--", "true"), 2, "binds a twice"),
        (("--file", "a=x", "--file", "a/b=x", "--", "true"), 2, "lies inside --file a"),
        (("--file", ".=x", "--", "true"), 2, "relative file name"),
        (("--env", "X=x", "--bogus"), 2, "the command goes after --"),
        (("--env", "X=x", "--", "/etc/hostname"), 126, "secureml: error: /etc/hostname: "),
        (("--env", "X=x", "--", "/"), 126, "not a runnable file"),
        (("--env", "X=x", "--", "./no/such/file"), 127, "no such file"),
        (("--env", "B=blob", "--", "true"), 2, "--file instead"),
    ],
    ids=[
        "not-found",
        "bad-var",
        "climbs",
        "absolute",
        "no-equals",
        "nothing",
        "missing",
        "ld-preload",
        "path",
        "same-file-twice",
        "file-in-file",
        "dot",
        "unknown-option",
        "not-executable",
        "a-folder",
        "no-such-path",
        "bytes",
    ],
)
def test_bad_bindings_are_one_line_errors(
    env: dict[str, str], args: tuple[str, ...], code: int, says: str
) -> None:
    assert secureml(env, "set", "x", input=b"v").returncode == 0
    assert secureml(env, "set", "blob", "--binary", input=b"\x00\xff").returncode == 0
    done = secureml(env, "--no-env-fallback", "exec", *args)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("secureml: error: ")
    assert done.stderr.count("\n") == 1
    assert says in done.stderr


def test_a_file_binding_never_follows_a_planted_link(env: dict[str, str]) -> None:
    """The private folder is fresh (mkdtemp, 0700): nothing can be planted in it first,
    and files are created with O_EXCL | O_NOFOLLOW."""
    from secureml import _exec

    with _exec._private_folder() as folder:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        os.symlink("/etc/passwd", os.path.join(folder, "planted"))
        with pytest.raises(_exec.ExecError, match="File exists"):
            _exec._write_private(folder, "planted", b"x")
        assert os.readlink(os.path.join(folder, "planted")) == "/etc/passwd"  # not followed
    assert not os.path.exists(folder)


def test_the_command_never_gets_secureml_s_own_vault_token(env: dict[str, str]) -> None:
    assert secureml(env, "set", "x", input=b"v").returncode == 0
    done = secureml(
        env,
        "exec",
        "--env",
        "X=x",
        "--",
        PYTHON,
        "-c",
        "import os; print(sorted(k for k in os.environ if k.endswith('TOKEN')), os.environ['X'])",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[] v\n"
    assert env["VAULT_TOKEN"] not in done.stdout


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGQUIT", "SIGTERM"])
def test_a_signal_before_the_command_starts_leaves_no_secret_behind(
    env: dict[str, str], bao_server: DevServer, signame: str
) -> None:
    """A signal while the secrets are read (a slow Vault, here a proxy that holds the
    second read) must neither kill secureml before it removes the folder nor leave a
    command running without it."""
    from tests.support.fault_proxy import Fault, FaultProxy

    assert secureml(env, "set", "a", input=b"first-secret").returncode == 0
    assert secureml(env, "set", "b", input=b"second").returncode == 0
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with FaultProxy(bao_server.address) as proxy:
        path = env["SECUREML_TEST_PATH"]
        # About a second for the second read: the signal lands while it is under way.
        proxy.inject(Fault.drip(0.004, path_prefix=f"/v1/secret/data/{path}/b"))
        slow = {**env, "VAULT_ADDR": proxy.origin}
        process = subprocess.Popen(
            [
                SECUREML,
                "--vault-path",
                path,
                "exec",
                "--file",
                "a=a",
                "--file",
                "b=b",
                "--",
                "true",
            ],
            env=slow,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not proxy.hits_for(f"/v1/secret/data/{path}/b"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(getattr(signal, signame))
        _, stderr = process.communicate(timeout=30)
    left = (set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()) - before
    assert not [name for name in left if name.startswith("secureml-exec-")]
    if signame == "SIGUSR1":  # not a stopping signal: the command still ran
        assert process.returncode == 0, stderr
    else:
        assert process.returncode == 128 + getattr(signal, signame), stderr
