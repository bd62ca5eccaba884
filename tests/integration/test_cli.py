"""The `secureml` command line against the real dev server: every command and exit code
through click's runner, and real subprocesses for pipes, hygiene and the dev server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from secureml._devserver import DevServer
from secureml.cli import cli, parse_duration

SECUREML = str(Path(sys.executable).with_name("secureml"))


@pytest.fixture
def env(bao_server: DevServer) -> dict[str, str]:
    return {"VAULT_ADDR": bao_server.address, "VAULT_TOKEN": bao_server.root_token}


@pytest.fixture
def folder(vault_path: str) -> list[str]:
    """The global option that keeps each test in a folder of its own."""
    return ["--vault-path", vault_path]


@pytest.fixture
def run(env: dict[str, str], folder: list[str]):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, code: int = 0) -> str:
        argv = [*folder, *args]
        result = runner.invoke(cli, argv, input=input, env=env, catch_exceptions=False)
        assert result.exit_code == code, (result.exit_code, result.output)
        return result.output

    return invoke


def test_secrets_round_trip_and_list(run) -> None:  # type: ignore[no-untyped-def]
    assert run("set", "api_key", input="s3cr3t\n") == "stored api_key\n"
    assert run("get", "api_key") == "s3cr3t\n"
    data = json.loads(run("--json", "get", "api_key"))
    assert data.pop("created_time").endswith("Z")
    assert data == {
        "name": "api_key",
        "value": "s3cr3t",
        "encoding": "text",
        "version": 1,
        "source": data["source"],
    }
    assert data["source"].startswith("vault:secret/")
    run("set", "models/weights-key", "--binary", input=b"\x00\x01\x02")
    assert run("get", "models/weights-key") == "AAEC\n"  # bytes print as base64
    assert run("list") == "api_key\nmodels/weights-key\n"
    assert json.loads(run("--json", "list", "models/")) == ["models/weights-key"]


def test_set_from_a_file_and_value_warns(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "token.txt"
    source.write_text("from-file")
    run("set", "from_file", "--file", str(source))
    assert run("get", "from_file") == "from-file\n"
    output = run("set", "visible", "--value", "in-argv")
    assert "visible to other users" in output
    run("set", "x", "--value", "a", "--file", str(source), code=2)


def test_delete_asks_unless_yes(run) -> None:  # type: ignore[no-untyped-def]
    run("set", "doomed", input="x")
    assert "without --yes" in run("delete", "doomed", code=2)
    run("delete", "doomed", "--yes")
    run("get", "doomed", code=3)


def test_keys_commands(run) -> None:  # type: ignore[no-untyped-def]
    assert run("keys", "generate", "k", "--label", "owner=ml") == "k: version 1\n"
    run("keys", "generate", "k", code=2)  # exists: a usage problem, says overwrite
    assert run("keys", "rotate", "k") == "k: version 2\n"
    assert "not rotated" in run("keys", "rotate", "k", "--older-than", "90d")
    rows = json.loads(run("--json", "keys", "versions", "k"))
    assert [(r["version"], r["is_current"]) for r in rows] == [(1, False), (2, True)]
    hex_key = run("keys", "get", "k").strip()
    assert len(bytes.fromhex(hex_key)) == 32
    assert run("keys", "get", "k", "--version", "2") == hex_key + "\n"
    assert run("keys", "get", "k", "--version", "1").strip() != hex_key
    derived = run("keys", "derive", "k", "--purpose", "features", "--bytes", "16").strip()
    assert len(bytes.fromhex(derived)) == 16
    run("keys", "rotate", "k", "--older-than", "soon", code=2)


def test_encrypt_decrypt_reencrypt_files(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("keys", "generate", "files")
    plain, sealed, back = tmp_path / "a.csv", tmp_path / "a.csv.sml", tmp_path / "b.csv"
    plain.write_bytes(os.urandom(100_000))
    run("encrypt", str(plain), str(sealed), "--key", "files", "--aad", "t=1")
    run("keys", "rotate", "files")
    run("decrypt", str(sealed), str(back), "--aad", "t=1")
    assert back.read_bytes() == plain.read_bytes()
    run("reencrypt", str(sealed), str(sealed), "--aad", "t=1")
    run("decrypt", str(sealed), str(back), "--aad", "wrong", "--force", code=6)
    sealed.write_bytes(sealed.read_bytes()[:-1])
    run("decrypt", str(sealed), str(tmp_path / "c.csv"), "--aad", "t=1", code=6)
    assert not (tmp_path / "c.csv").exists()


def test_encrypt_with_a_segment_size(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from secureml.key_management import _envelope as envelope

    run("keys", "generate", "seg")
    plain, sealed = tmp_path / "a.bin", tmp_path / "a.bin.sml"
    plain.write_bytes(os.urandom(200_000))
    for given, size in (("64KiB", 65536), ("100000", 100_000), ("4M", 4 << 20)):
        run("encrypt", str(plain), str(sealed), "--key", "seg", "--segment-size", given, "--force")
        assert envelope.parse_header(sealed.read_bytes())[0].segment_bytes == size
    run("decrypt", str(sealed), str(tmp_path / "b.bin"))
    assert (tmp_path / "b.bin").read_bytes() == plain.read_bytes()
    for bad in ("63KiB", "5MiB", "1GiB", "lots", ""):
        out = run("encrypt", str(plain), str(tmp_path / "x"), "--segment-size", bad, code=2)
        assert "--segment-size" in out
    assert not (tmp_path / "x").exists()


def test_transit_commands(run, bao_server: DevServer) -> None:  # type: ignore[no-untyped-def]
    mount = f"transit-{uuid.uuid4().hex[:6]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "transit")
    bao_server.bao("write", "-f", f"{mount}/keys/cli")
    token = run("transit", "--transit-mount", mount, "encrypt", "cli", input=b"plain").strip()
    assert token.startswith("vault:v1:")
    assert run("transit", "--transit-mount", mount, "decrypt", "cli", input=token) == "plain"
    assert run("transit", "--transit-mount", mount, "rotate", "cli") == "cli: version 2\n"
    assert run("transit", "--transit-mount", mount, "rewrap", "cli", input=token).startswith(
        "vault:v2:"
    )
    run("transit", "--transit-mount", mount, "decrypt", "cli", input="vault:v1:AAAA", code=6)


def test_exit_codes(run, env: dict[str, str], black_hole: str) -> None:  # type: ignore[no-untyped-def]
    run("get", "missing", code=3)
    run("get", "bad..name", code=2)
    run("no-such-command", code=2)
    runner = CliRunner()
    denied = runner.invoke(cli, ["get", "x"], env={**env, "VAULT_TOKEN": "not-a-token"})
    assert denied.exit_code == 4
    down = runner.invoke(
        cli, ["--no-env-fallback", "get", "x"], env={**env, "VAULT_ADDR": "http://127.0.0.1:9"}
    )
    assert down.exit_code == 5
    bad = runner.invoke(cli, ["decrypt", "-", "-"], input=b"garbage", env=env)
    assert bad.exit_code == 6


def test_status(run) -> None:  # type: ignore[no-untyped-def]
    report = json.loads(run("--json", "status"))
    assert report["reachable"] is True
    assert report["kv_version"] == 2
    assert "reachable" in run("status")


def test_durations() -> None:
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("45") == 45


# -- real processes ------------------------------------------------------------------------


def secureml(
    env: dict[str, str], *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SECUREML, *args],
        input=input,
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_pipes_through_real_processes(env: dict[str, str]) -> None:
    assert secureml(env, "keys", "generate", "pipe-key").returncode == 0
    data = os.urandom(3 * (1 << 20) + 1)
    sealed = secureml(env, "encrypt", "-", "-", "--key", "pipe-key", input=data)
    assert sealed.returncode == 0, sealed.stderr
    assert secureml(env, "keys", "rotate", "pipe-key").returncode == 0
    opened = secureml(env, "decrypt", "-", "-", input=sealed.stdout)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == data
    assert opened.stderr == b""  # no progress bar on a pipe


def test_failing_commands_never_print_a_secret(env: dict[str, str]) -> None:
    secret = "hunter2-" + uuid.uuid4().hex
    assert secureml(env, "set", "db_password", input=secret.encode()).returncode == 0
    failures = [
        secureml(env, "keys", "get", "db_password"),  # not key material
        secureml(env, "keys", "derive", "db_password", "--purpose", "x"),
        secureml(env, "get", "db_password", "--version", "7"),
        secureml({**env, "VAULT_TOKEN": secret}, "get", "db_password"),  # the token itself
        secureml(env, "decrypt", "-", "-", input=secret.encode()),
    ]
    for done in failures:
        assert done.returncode != 0
        assert secret.encode() not in done.stderr + done.stdout
        assert done.stderr.startswith(b"secureml: error: ")
        assert b"Traceback" not in done.stderr


def test_help_does_not_import_the_library() -> None:
    code = "import sys, secureml.cli; print('secureml.key_management' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert subprocess.run([SECUREML, "--help"], capture_output=True, check=True).stdout


def test_dev_server_starts_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [SECUREML, "dev-server"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [process.stdout.readline() for _ in range(5)]  # type: ignore[union-attr]
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert exports["VAULT_ADDR"].startswith("http://127.0.0.1:")
        assert exports["BAO_ADDR"] == exports["VAULT_ADDR"]
        done = secureml(exports, "--json", "status")
        assert json.loads(done.stdout)["reachable"] is True
        server_pid = int(lines[0].split("pid ")[1].split(")")[0])
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)  # also closes the pipes
    assert process.returncode == 0
    assert "stopped" in stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the bao server outlived the dev-server command")


def test_dev_server_refuses_other_interfaces() -> None:
    everywhere = ".".join(["0"] * 4)  # all interfaces: refused, never bound
    done = subprocess.run(
        [SECUREML, "dev-server", "--host", everywhere],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"loopback" in done.stderr


def test_set_refuses_an_empty_value_and_derives_from_any_length(run) -> None:  # type: ignore[no-untyped-def]
    assert "empty value" in run("set", "blank", input="", code=2)
    run("set", "blank", "--allow-empty", input="")
    assert run("get", "blank") == "\n"
    run("keys", "generate", "wide", "--bytes", "64")
    assert len(bytes.fromhex(run("keys", "derive", "wide", "--purpose", "p").strip())) == 32
    derived = run("keys", "derive", "wide", "--purpose", "p", "--base-bytes", "64").strip()
    assert len(bytes.fromhex(derived)) == 32


def test_status_exit_codes_for_scripts(env: dict[str, str], black_hole: str) -> None:
    runner = CliRunner()
    down = runner.invoke(
        cli, ["--timeout", "0.5", "--retries", "0", "status"], env={**env, "VAULT_ADDR": black_hole}
    )
    assert down.exit_code == 5
    refused = runner.invoke(cli, ["status"], env={**env, "VAULT_TOKEN": "not-a-token"})
    assert refused.exit_code == 4


def test_a_file_destination_is_all_or_nothing_with_stdin(
    run,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    run("keys", "generate", "stdin-key")
    data = os.urandom(2 * (1 << 20) + 3)
    (tmp_path / "in").write_bytes(data)
    run("encrypt", str(tmp_path / "in"), str(tmp_path / "in.sml"), "--key", "stdin-key")
    sealed = (tmp_path / "in.sml").read_bytes()
    keep = tmp_path / "existing"
    keep.write_bytes(b"keep me")
    for broken in (sealed[: 1 << 20], b"garbage"):
        run("decrypt", "-", str(keep), "--force", input=broken, code=6)
        assert keep.read_bytes() == b"keep me"
        run("decrypt", "-", str(tmp_path / "new"), input=broken, code=6)
        assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "in", "in.sml"]
    run("decrypt", "-", str(tmp_path / "new"), input=sealed)
    assert (tmp_path / "new").read_bytes() == data


def test_a_reader_that_goes_away_is_not_an_error(env: dict[str, str], tmp_path: Path) -> None:
    plain, sealed = tmp_path / "p", tmp_path / "p.sml"
    plain.write_bytes(os.urandom(8 * (1 << 20)))
    assert secureml(env, "keys", "generate", "epipe-key").returncode == 0
    assert secureml(env, "encrypt", str(plain), str(sealed), "--key", "epipe-key").returncode == 0
    with subprocess.Popen(
        [SECUREML, "decrypt", str(sealed), "-"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.read(10)
        process.stdout.close()  # `| head -c 10`
        stderr = process.stderr.read() if process.stderr else b""
        process.wait(timeout=30)
    assert process.returncode == 1
    assert stderr == b""


def test_dev_server_stops_on_sigterm_and_refuses_a_busy_port() -> None:
    process = subprocess.Popen(
        [SECUREML, "dev-server"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = process.stdout.readline()  # type: ignore[union-attr]
        port = int(first.split("127.0.0.1:")[1].split(" ")[0])
        server_pid = int(first.split("pid ")[1].split(")")[0])
        busy = subprocess.run(
            [SECUREML, "dev-server", "--port", str(port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert busy.returncode == 1
        assert b"in use" in busy.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("the bao server outlived SIGTERM")


def test_errors_are_one_line(env: dict[str, str], black_hole: str) -> None:
    done = secureml(
        {**env, "VAULT_ADDR": black_hole}, "--timeout", "0.5", "--retries", "0", "get", "absent"
    )
    assert done.returncode == 5
    assert done.stderr.count(b"\n") == 1
    assert done.stderr.startswith(b"secureml: error: ")


def test_keys_rotate_refuses_an_ordinary_secret_unless_forced(run) -> None:  # type: ignore[no-untyped-def]
    run("set", "api_key", "--value", "abc")
    run("keys", "rotate", "api_key", code=2)
    assert run("get", "api_key") == "abc\n"
    assert run("keys", "rotate", "api_key", "--force") == "api_key: version 2\n"
