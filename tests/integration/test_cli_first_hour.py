"""The command line as a newcomer meets it (issue 16): global options before or after the
sub-command, every usage error one ``secureml: error:`` line with exit code 2, durations
as the variables take them. Real subprocesses where stderr's exact shape matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer

pytestmark = pytest.mark.integration

SECUREML = str(Path(sys.executable).with_name("secureml"))


@pytest.fixture
def env(bao_server: DevServer, vault_path: str) -> dict[str, str]:
    return {
        "VAULT_ADDR": bao_server.address,
        "VAULT_TOKEN": bao_server.root_token,
        "SECUREML_TEST_PATH": vault_path,
    }


def invoke(env: dict[str, str], *args: str, input: str | None = None, code: int = 0) -> str:
    """Standard output of ``secureml ARGS`` (its stderr: :func:`invoked`)."""
    return invoked(env, *args, input=input, code=code)[0]


def invoked(
    env: dict[str, str], *args: str, input: str | None = None, code: int = 0
) -> tuple[str, str]:
    """``secureml ARGS`` as a real process (``env`` over this one's environment): its
    stdout and stderr, once it exited with ``code``."""
    done = subprocess.run(
        [SECUREML, *args],
        input=input,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    return done.stdout, done.stderr


def run(
    env: dict[str, str], *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SECUREML, *args],
        input=None if input is None else input.decode(),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_global_options_work_before_or_after_the_sub_command(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "set", "api", "--vault-path", path, input="s3cr3t")
    before = json.loads(invoke(env, "--json", "--vault-path", path, "get", "api"))
    after = json.loads(invoke(env, "get", "api", "--json", "--vault-path", path))
    between = json.loads(invoke(env, "--vault-path", path, "get", "--json", "api"))
    assert before == after == between
    assert before["value"] == "s3cr3t"
    assert json.loads(invoke(env, "status", "--json"))["reachable"] is True
    invoke(env, "keys", "generate", "k", "--vault-path", path)
    shown = json.loads(invoke(env, "keys", "get", "k", "--vault-path", path, "--json"))
    assert len(bytes.fromhex(shown["key"])) == 32
    # A group in between takes them too, and a flag given after overrides the default.
    assert json.loads(invoke(env, "keys", "--json", "versions", "k", "--vault-path", path))
    invoke(env, "get", "api", "--vault-path", path, "--timeout", "5s", "--retries", "0")


def test_a_late_flag_turns_off_the_env_fallback(env: dict[str, str]) -> None:
    down = {**env, "VAULT_ADDR": "http://127.0.0.1:9", "SECUREML_ONLY_ENV": "from-env"}
    out, err = invoked(down, "get", "only_env")
    assert out == "from-env\n"
    # Served from the environment while Vault is down: said, in one line on stderr.
    assert err.count("\n") == 1
    assert err.startswith("secureml: warning: Vault at http://127.0.0.1:9 is unreachable")
    assert "falling back" in err
    out, err = invoked(down, "get", "only_env", "--no-env-fallback", code=5)
    assert out == ""
    assert err.startswith("secureml: error: ")
    assert err.count("\n") == 1  # the held warning is not said when the command fails


def test_the_kv_mount_and_the_transit_mount_are_two_options(
    env: dict[str, str], bao_server: DevServer
) -> None:
    bao_server.bao("secrets", "enable", "-path=transit-cli16", "transit")
    bao_server.bao("write", "-f", "transit-cli16/keys/t")
    token = invoke(env, "transit", "--transit-mount", "transit-cli16", "encrypt", "t", input="x")
    assert token.startswith("vault:v1:")
    after = invoke(env, "transit", "encrypt", "t", "--transit-mount", "transit-cli16", input="x")
    assert after.startswith("vault:v1:")
    # --mount is the KV mount's, wherever it is given: never the Transit engine's.
    wrong = run(env, "transit", "--mount", "transit-cli16", "encrypt", "t", input=b"x")
    assert wrong.returncode == 2
    assert "--mount is the KV mount; the Transit engine's is --transit-mount" in wrong.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("get",),  # a missing argument
        ("no-such-command",),
        ("get", "x", "--no-such-option"),
        ("delete", "x"),  # no --yes and no terminal to ask
        ("set", "x", "--value", "a", "--file", "/etc/hostname"),
        ("keys", "rotate", "k", "--older-than", "soon"),
        ("keys", "generate", "k", "--label", "no-equals-sign"),
        ("keys", "generate", "k", "--bytes", "3"),  # a range
        ("keys", "generate", "k", "--bytes", "9000"),  # past HKDF's limit: --bytes, not key_bytes
        ("set", "x"),  # an empty value on stdin
        ("--timeout", "5x", "status"),
        ("status", "--timeout", "0.01"),
        ("--retries", "-1", "status"),
    ],
    ids=lambda args: "-".join(args)[:40],
)
def test_every_usage_error_is_one_line_and_exit_2(
    env: dict[str, str], args: tuple[str, ...]
) -> None:
    done = run(env, "--vault-path", env["SECUREML_TEST_PATH"], *args, input=b"")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("secureml: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Usage:" not in done.stderr
    assert "--help" in done.stderr  # where to look next
    assert "key_bytes" not in done.stderr  # the option's name, never the argument's


def test_help_lists_the_exit_codes_and_says_globals_work_everywhere() -> None:
    top = run({}, "--help")
    assert "Exit codes: 0 ok" in " ".join(top.stdout.split())
    sub = run({}, "get", "--help")
    assert "global options" in sub.stdout
    assert "--vault-url" not in sub.stdout  # hidden there: listed once, at the top


def test_help_and_version_still_exit_0() -> None:
    assert run({}, "--help").returncode == 0
    assert run({}, "keys", "--help").returncode == 0
    version = run({}, "--version")
    assert version.returncode == 0
    assert "secureml" in version.stdout


def test_status_without_an_address_fails_and_shows_the_ttl_in_days(
    env: dict[str, str], tmp_path: Path
) -> None:
    bare = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [SECUREML, "status"], env=bare, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.startswith("secureml: error: no Vault address is configured")
    assert "--vault-url" in done.stderr
    shown = invoke(env, "status")
    ttl = next(line for line in shown.splitlines() if line.strip().startswith("token_ttl"))
    assert "." not in ttl  # 31d 23h, never 2764799.0 (a root token: never expires, "-")


def test_deleting_what_is_not_there_is_exit_3(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    _, err = invoked(env, "delete", "nosuch", "--yes", "--vault-path", path, code=3)
    assert err == "secureml: error: nosuch is not in Vault: nothing to delete\n"
    invoke(env, "set", "there", "--vault-path", path, input="v")
    _, err = invoked(
        env, "delete", "there", "--version", "7", "--yes", "--vault-path", path, code=3
    )
    assert err == "secureml: error: there has no version 7\n"
    invoke(env, "delete", "there", "--yes", "--vault-path", path)


def test_durations_show_the_two_largest_units() -> None:
    from secureml.cli import _duration

    assert _duration(2764799.0) == "31d 23h"
    assert _duration(90061) == "1d 1h"
    assert _duration(3600) == "1h"
    assert _duration(59.9) == "59s"


def test_keys_are_read_at_the_length_they_are_stored_at(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "wide", "--bytes", "64", "--vault-path", path)
    assert len(bytes.fromhex(invoke(env, "keys", "get", "wide", "--vault-path", path))) == 64
    derived = invoke(env, "keys", "derive", "wide", "--purpose", "p", "--vault-path", path)
    assert len(bytes.fromhex(derived)) == 32
    _, err = invoked(env, "keys", "get", "wide", "--bytes", "32", "--vault-path", path, code=2)
    assert "64 bytes long; 32 were requested; pass --bytes 64" in err
    _, err = invoked(
        env,
        "keys",
        "derive",
        "wide",
        "--purpose",
        "p",
        "--base-bytes",
        "32",
        "--vault-path",
        path,
        code=2,
    )
    assert "pass --base-bytes 64" in err


def test_key_ages_name_their_option_and_take_years(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "aged", "--vault-path", path)
    _, err = invoked(
        env, "keys", "rotate", "aged", "--older-than", "0", "--vault-path", path, code=2
    )
    assert err.startswith(
        "secureml: error: Invalid value for '--older-than': '0' is not a positive"
    )
    assert "not rotated (younger than 365d)" in invoke(
        env, "keys", "rotate", "aged", "--older-than", "1y", "--vault-path", path
    )


def test_destinations_are_checked_before_any_work(env: dict[str, str], tmp_path: Path) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "files", "--vault-path", path)
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"a,b\n1,2\n")
    sealed = tmp_path / "plain.csv.sml"
    args = ("--vault-path", path, "--key", "files")
    _, err = invoked(env, "encrypt", str(plain), str(tmp_path / "no" / "x.sml"), *args, code=1)
    assert err == f"secureml: error: the folder {tmp_path / 'no'} does not exist; create it first\n"
    assert ".part" not in err
    _, err = invoked(env, "encrypt", str(plain), str(tmp_path), *args, code=2)
    assert err == f"secureml: error: {tmp_path} is a folder; give a file name for the output\n"
    invoke(env, "encrypt", str(plain), str(sealed), *args)
    before = sealed.read_bytes()
    _, err = invoked(env, "encrypt", str(plain), str(sealed), *args, code=2)
    assert err == f"secureml: error: {sealed} exists; pass --force to replace it\n"
    assert sealed.read_bytes() == before  # untouched
    invoke(env, "encrypt", str(plain), str(sealed), *args, "--force")
    assert sealed.read_bytes() != before  # a fresh data key: other bytes
    invoke(env, "reencrypt", str(sealed), str(sealed), "--vault-path", path)  # in place: explicit
    _, err = invoked(env, "decrypt", str(sealed), str(plain), "--vault-path", path, code=2)
    assert "exists; pass --force" in err


def test_binary_ciphertext_is_never_written_to_a_terminal(
    env: dict[str, str], tmp_path: Path
) -> None:
    import pty

    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "tty-key", "--vault-path", path)
    plain = tmp_path / "p"
    plain.write_bytes(b"secret rows")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [SECUREML, "--vault-path", path, "encrypt", str(plain), "-", "--key", "tty-key"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 2
    assert done.stderr.decode().startswith(
        "secureml: error: refusing to write binary ciphertext to a terminal"
    )


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda sealed: b"PK\x03\x04" + sealed[4:], "is not a secureml file"),
        (lambda sealed: sealed[:20], "is truncated: it ends inside the secureml header"),
        (lambda sealed: sealed[:-1], "authentication failed: wrong --aad, wrong key, or the data"),
        (lambda sealed: sealed[:-40] + bytes(40), "authentication failed"),
    ],
    ids=["not-ours", "cut-in-header", "cut-at-end", "altered"],
)
def test_each_bad_ciphertext_says_what_can_be_told(
    env: dict[str, str], tmp_path: Path, damage: Any, says: str
) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "k6", "--vault-path", path)
    plain, sealed, back = tmp_path / "p", tmp_path / "p.sml", tmp_path / "back"
    plain.write_bytes(os.urandom(5000))
    invoke(env, "encrypt", str(plain), str(sealed), "--key", "k6", "--vault-path", path)
    sealed.write_bytes(damage(sealed.read_bytes()))
    _, err = invoked(env, "decrypt", str(sealed), str(back), "--vault-path", path, code=6)
    assert says in err
    assert err.count("\n") == 1
    assert not back.exists()
    _, err = invoked(
        env, "decrypt", str(sealed), str(back), "--aad", "x", "--vault-path", path, code=6
    )
    assert says in err  # a wrong aad on top changes nothing it says


def test_reencrypt_says_the_new_version(env: dict[str, str], tmp_path: Path) -> None:
    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "moving", "--vault-path", path)
    plain, sealed = tmp_path / "p", tmp_path / "p.sml"
    plain.write_bytes(b"x" * 3000)
    invoke(env, "encrypt", str(plain), str(sealed), "--key", "moving", "--vault-path", path)
    invoke(env, "keys", "rotate", "moving", "--vault-path", path)
    out, err = invoked(env, "reencrypt", str(sealed), str(sealed), "--vault-path", path)
    assert out == ""
    assert err.startswith(f"secureml: reencrypted {sealed} -> {sealed}: 2.9 KiB in ")
    assert err.endswith(", key moving version 2 (was version 1)\n")


def test_a_file_command_on_a_terminal_ends_with_one_summary_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    """In a real terminal (a pty, its screen kept by pyte): the progress bar is drawn
    while a large file is encrypted, the terminal is made narrower mid-run, and at the
    end the screen holds one summary line and no stale copy of the bar."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    import pyte

    path = env["SECUREML_TEST_PATH"]
    invoke(env, "keys", "generate", "big", "--vault-path", path)
    plain, sealed = tmp_path / "big.bin", tmp_path / "big.bin.sml"
    with open(plain, "wb") as out:
        out.truncate(256 << 20)  # sparse: quick to read, long enough to draw frames
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [SECUREML, "--vault-path", path, "encrypt", str(plain), str(sealed), "--key", "big"],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, **env, "TERM": "xterm"},
    )
    os.close(follower)
    screen = pyte.Screen(100, 24)
    stream = pyte.ByteStream(screen)
    drawn_mid_run = resized = False
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            stream.feed(chunk)
            if not resized and any("MiB" in line or "MB" in line for line in screen.display):
                drawn_mid_run = True  # a frame of the bar, while the file is encrypted
                fcntl.ioctl(leader, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
                screen.resize(24, 50)
                process.send_signal(signal.SIGWINCH)
                resized = True
    finally:
        os.close(leader)
        assert process.wait(120) == 0
    assert drawn_mid_run
    shown = "".join(line.rstrip() for line in screen.display if line.strip())
    # Compared without spaces: a space at a wrap point cannot be told from the padding.
    squashed = shown.replace(" ", "")
    expected = f"secureml: encrypted {plain} -> {sealed}: 256.0 MiB in ".replace(" ", "")
    assert squashed.startswith(expected), shown
    assert squashed.endswith(",keybigversion1"), shown
    assert shown.count("MiB/s") == 1  # the summary's rate only
    assert "MB/s" not in shown  # and nothing of the bar (rich counts in MB), no stale copy
    assert "━" not in shown


def test_review_fixes_for_the_first_hour(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    bare = run({})
    assert "Usage: secureml" in bare.stdout + bare.stderr  # its help, not an error line
    assert "secureml: error" not in bare.stderr
    leaked = run(env, "set", "DB_PASS", "hunter2-not-shown")
    assert leaked.returncode == 2
    assert "hunter2" not in leaked.stderr + leaked.stdout
    old_spelling = run(env, "transit", "--mount", "transit", "rotate", "t")
    assert old_spelling.returncode == 2
    assert "--transit-mount" in old_spelling.stderr
    # A binary secret that is not a key is not read at whatever length it has.
    invoke(env, "set", "cert", "--binary", "--vault-path", path, input=os.urandom(100).hex())
    _, err = invoked(env, "keys", "get", "cert", "--vault-path", path, code=2)
    assert "pass --bytes 200" in err


def test_without_the_cli_extra_the_command_says_how_to_install_it() -> None:
    blocked = (
        "import sys; sys.modules['click'] = None; sys.argv = ['secureml', '--help']; "
        "from secureml._entry import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr == (
        "secureml: error: the command line needs click, which come with its extra: "
        "pip install 'secureml[cli]'\n"
    )
    assert "Traceback" not in done.stderr


def test_the_dev_server_mounts_transit_seeds_the_readme_and_names_its_ports() -> None:
    from tests.support.cli_dev_server import dev_server

    with dev_server("--seed") as (exports, lines):
        port = int(exports["BAO_ADDR"].rsplit(":", 1)[1])
        assert f"# cluster traffic on 127.0.0.1:{port + 1}\n" in lines
        assert "# KV v2 at secret/, Transit at transit/\n" in lines
        seeded = next(line for line in lines if line.startswith("# seeded: "))
        assert "db/password" in seeded
        assert "transit key features" in seeded
        env = dict(exports)
        # The README's commands work right after it.
        assert run(env, "get", "db/password").stdout == "dev-password\n"
        sealed = run(env, "transit", "encrypt", "features", input=b"row 42")
        assert sealed.returncode == 0, sealed.stderr
        assert sealed.stdout.startswith("vault:v1:")
        assert run(env, "keys", "versions", "datasets/key").returncode == 0


def test_what_vault_and_bao_users_expect(
    env: dict[str, str], bao_server: DevServer, tmp_path: Path
) -> None:
    path = env["SECUREML_TEST_PATH"]
    # ~/.vault-token, as `bao login` leaves it: used when the environment has no token.
    home = tmp_path / "home"
    home.mkdir()
    token_file = home / ".vault-token"
    token_file.write_text(bao_server.root_token + "\n")
    token_file.chmod(0o600)
    logged_in = {"HOME": str(home), "PATH": os.environ["PATH"], "VAULT_ADDR": bao_server.address}
    invoke(env, "set", "via_file", "--vault-path", path, input="ok")
    assert invoke(logged_in, "get", "via_file", "--vault-path", path) == "ok\n"
    token_file.chmod(0o644)
    _, err = invoked(logged_in, "get", "via_file", "--vault-path", path, code=2)
    assert "no credentials" in err
    # Several fields at once, as `vault kv put` takes them; one field back.
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-a-file")
    _out, err = invoked(
        env,
        "set",
        "db",
        "user=ml",
        f"password=@{secret_file}",
        "note=-",
        "--vault-path",
        path,
        input="from-stdin\n",
    )
    assert "visible to other users" in err
    assert invoke(env, "get", "db", "--field", "password", "--vault-path", path) == "from-a-file\n"
    assert invoke(env, "get", "db", "--field", "note", "--vault-path", path) == "from-stdin\n"
    _, err = invoked(env, "get", "db", "--field", "nope", "--vault-path", path, code=3)
    assert "its fields: note, password, user" in err
    # --json: the version and when it was written, in RFC 3339.
    shown = json.loads(invoke(env, "get", "db", "--json", "--vault-path", path))
    assert shown["version"] == 1
    assert shown["source"] == f"vault:secret/{path}/db"
    assert shown["created_time"].endswith("Z")
    assert "T" in shown["created_time"]
    # undelete, as `bao kv undelete` does.
    invoke(env, "delete", "db", "--yes", "--vault-path", path)
    invoke(env, "get", "db", "--vault-path", path, "--no-env-fallback", code=3)
    assert invoke(env, "undelete", "db", "--vault-path", path) == "undeleted: db version 1\n"
    assert invoke(env, "get", "db", "--field", "user", "--vault-path", path) == "ml\n"
    # Labels given to `keys generate` can be seen again.
    invoke(env, "keys", "generate", "labelled", "--label", "owner=ml", "--vault-path", path)
    assert "owner=ml" in invoke(env, "keys", "versions", "labelled", "--vault-path", path)
    rows = json.loads(invoke(env, "keys", "versions", "labelled", "--json", "--vault-path", path))
    assert rows[0]["created_at"].endswith("Z")
    # A bare value after NAME is never echoed back.
    _, err = invoked(env, "set", "db", "hunter2-bare", "--vault-path", path, code=2)
    assert "hunter2" not in err


def test_messages_speak_the_command_lines_language(
    env: dict[str, str], bao_server: DevServer, tmp_path: Path
) -> None:
    """The library's errors carry their command-line words (cli_message): options,
    commands and variables, never Python arguments."""
    path = env["SECUREML_TEST_PATH"]
    python_words = (
        "overwrite=True",
        "generate_key(",
        "delete_secret(",
        "vault_token=",
        "AppRoleAuth",
        "vault_client_cert=",
        "key_bytes",
    )
    invoke(env, "keys", "generate", "once", "--vault-path", path)
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    errors = [
        invoked(env, "keys", "generate", "once", "--vault-path", path, code=2)[1],
        invoked(env, "keys", "versions", "never-made", "--vault-path", path, code=3)[1],
        invoked(
            env,
            "encrypt",
            str(plain),
            str(tmp_path / "p.sml"),
            "--key",
            "never-made",
            "--vault-path",
            path,
            code=3,
        )[1],
        invoked({"VAULT_ADDR": bao_server.address, "HOME": str(tmp_path)}, "get", "x", code=2)[1],
        invoked(
            {**env, "VAULT_TOKEN": "hvs.not-a-real-token"}, "get", "x", "--no-env-fallback", code=4
        )[1],
    ]
    for err in errors:
        assert err.startswith("secureml: error: "), err
        for word in python_words:
            assert word not in err, (word, err)
    assert "pass --overwrite" in errors[0]
    assert "secureml keys generate never-made" in errors[1]
    assert "secureml keys generate never-made" in errors[2]
    assert "BAO_TOKEN" in errors[3]
    assert "bao login" in errors[4]


def test_the_library_keeps_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    from secureml.key_management import KeyManager
    from secureml.key_management.errors import ConfigurationError

    for variable in ("SECUREML_VAULT_TOKEN", "BAO_TOKEN", "VAULT_TOKEN", "VAULT_ROLE_ID"):
        monkeypatch.delenv(variable, raising=False)

    with pytest.raises(ConfigurationError) as caught:
        KeyManager(vault_url="http://127.0.0.1:9", use_env_fallback=False)
    assert "vault_token=" in str(caught.value)
    assert "BAO_TOKEN" in (caught.value.cli_message or "")


def test_diagnoses_name_the_real_problem(env: dict[str, str], bao_server: DevServer) -> None:
    import http.server
    import threading

    _, err = invoked(env, "--mount", "nomount", "get", "x", "--no-env-fallback", code=2)
    assert err.startswith("secureml: error: no KV engine is mounted at 'nomount'")
    assert "denied" not in err
    assert "--mount" in err
    tls_to_plain = {**env, "VAULT_ADDR": bao_server.address.replace("http://", "https://")}
    _, err = invoked(tls_to_plain, "get", "x", "--no-env-fallback", code=1)
    assert "does not speak TLS" in err
    assert "client certificate" not in err

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        not_vault = {**env, "VAULT_ADDR": f"http://127.0.0.1:{other.server_address[1]}"}
        _, err = invoked(not_vault, "get", "x", "--no-env-fallback", code=1)
        assert "is not a Vault or OpenBao server (404 on /v1/auth/token/lookup-self)" in err
        out = run(not_vault, "status", "--json")
        assert "404 on /v1/sys/health" in json.loads(out.stdout)["error"]
    finally:
        other.shutdown()
        other.server_close()
    down = {**env, "VAULT_ADDR": "http://127.0.0.1:9"}
    _, err = invoked(down, "get", "x", "--no-env-fallback", code=5)
    assert "is unreachable" in err
    assert "cannot log in" not in err


def test_second_review_fixes(env: dict[str, str], tmp_path: Path) -> None:
    path = env["SECUREML_TEST_PATH"]
    # A field name chosen by whoever wrote the secret never reaches the terminal raw.
    hostile = "a\x1b]52;c;ZXZpbA==\x07"
    from secureml.key_management import KeyManager

    KeyManager(
        vault_url=env["VAULT_ADDR"], vault_token=env["VAULT_TOKEN"], vault_path=path
    ).set_secret("evil", {hostile: "1", "b": "2"})
    _, err = invoked(env, "get", "evil", "--field", "nope", "--vault-path", path, code=3)
    assert "\x1b" not in err
    assert "\\x1b" in err  # escaped, visibly
    # undelete: nothing to restore is no success.
    invoked(env, "undelete", "never-made", "--vault-path", path, code=3)
    invoke(env, "set", "gone", "--vault-path", path, input="v")
    invoked(env, "undelete", "gone", "--version", "9", "--vault-path", path, code=3)
    invoke(env, "delete", "gone", "--version", "1", "--destroy", "--yes", "--vault-path", path)
    _, err = invoked(env, "undelete", "gone", "--vault-path", path, code=3)
    assert "destroyed" in err
    # Field values that are not text print as JSON; --field value reads a single value.
    KeyManager(
        vault_url=env["VAULT_ADDR"], vault_token=env["VAULT_TOKEN"], vault_path=path
    ).set_secret("typed", {"flag": True, "none": None, "list": ["a", 1]})
    assert invoke(env, "get", "typed", "--field", "flag", "--vault-path", path) == "true\n"
    assert invoke(env, "get", "typed", "--field", "list", "--vault-path", path) == '["a", 1]\n'
    invoke(env, "set", "single", "--vault-path", path, input="one")
    assert invoke(env, "get", "single", "--field", "value", "--vault-path", path) == "one\n"
    # Fields: stdin read once, an empty one refused.
    _, err = invoked(env, "set", "f", "a=-", "b=-", "--vault-path", path, input="x", code=2)
    assert "only one field can be read from stdin" in err
    _, err = invoked(env, "set", "f", "a=", "--vault-path", path, code=2)
    assert "empty" in err
    # A ~/.vault-token that is not used says why, on the error's own line.
    home = tmp_path / "home"
    home.mkdir()
    os.mkfifo(home / ".vault-token", 0o600)  # a FIFO must not hang the command
    logged = {"HOME": str(home), "PATH": os.environ["PATH"], "VAULT_ADDR": env["VAULT_ADDR"]}
    _, err = invoked(logged, "get", "x", code=2)
    assert err.count("\n") == 1
    assert "was not used: it is not a regular file" in err


def test_debug_after_the_command_shows_the_traceback(env: dict[str, str]) -> None:
    path = env["SECUREML_TEST_PATH"]
    _, quiet = invoked(env, "get", "nope", "--vault-path", path, "--no-env-fallback", code=3)
    assert "Traceback" not in quiet
    done = run(env, "get", "nope", "--vault-path", path, "--no-env-fallback", "--debug")
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "SecretNotFoundError" in done.stderr


def test_the_cli_bounds_lengths_as_the_library_does() -> None:
    """The CLI states HKDF's limit itself (importing the library would slow --help)."""
    from secureml.cli import _MAX_BYTES
    from secureml.key_management._encoding import MAX_KEY_BYTES

    assert _MAX_BYTES == MAX_KEY_BYTES
