"""Trust-boundary checks on configuration (issue 12): credentials never pickle,
usernames cannot rewrite the login path, URLs cannot forge log lines."""

from __future__ import annotations

import pickle

import pytest

from secureml.key_management import (
    AppRoleAuth,
    ConfigurationError,
    KeyManager,
    TokenAuth,
    UserpassAuth,
)
from secureml.key_management._config import VaultSettings


@pytest.mark.parametrize(
    "credential",
    [
        TokenAuth("s.secret-token"),
        AppRoleAuth("role", "secret-id-value"),
        UserpassAuth("alice", "hunter2"),
        VaultSettings("https://vault.example.com:8200", TokenAuth("s.secret-token")),
    ],
    ids=["token", "approle", "userpass", "settings"],
)
def test_credential_objects_refuse_pickling(credential: object) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(credential)


@pytest.mark.parametrize(
    "username", ["alice/../../../sys/health?x=", "a/b", "..", "a..b", "al ice", "a?b", "a#b"]
)
def test_a_userpass_username_cannot_rewrite_the_login_path(username: str) -> None:
    with pytest.raises(ConfigurationError, match="username"):
        UserpassAuth(username, "hunter2")


@pytest.mark.parametrize("username", ["alice", "etl-bot", "svc.reader", "a_b", "me@example.com"])
def test_ordinary_usernames_are_fine(username: str) -> None:
    UserpassAuth(username, "hunter2")


@pytest.mark.parametrize(
    "url",
    [
        "https://vault.example.com:8200\nFAKE LOG LINE",
        "https://vault.example.com:8200/\x1b[2J",
        "https://vault.exa mple.com:8200",
    ],
)
def test_control_characters_in_a_vault_url_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="control or space"):
        KeyManager(vault_url=url, vault_token="s.token")


TOKEN = "hvs.the-real-vault-token-value"


@pytest.mark.parametrize(
    "name", ["vault_token", "vault/token", "VAULT.TOKEN", "vault-secret-id", "vault", "env"]
)
def test_a_setting_never_answers_a_secret_lookup(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", TOKEN)
    monkeypatch.setenv("SECUREML_VAULT_SECRET_ID", TOKEN)
    monkeypatch.setenv("SECUREML_VAULT", TOKEN)
    monkeypatch.setenv("SECUREML_ENV", "dev")
    manager = KeyManager(backend=_Empty())
    with pytest.raises(ValueError, match="reserved"):
        manager.get_secret(name)
    with pytest.raises(ValueError, match="reserved"):
        manager.get_encryption_key(name, 27)
    with pytest.raises(ValueError, match="reserved"):
        manager.encrypt(b"x", name)


def test_a_ciphertext_cannot_name_a_setting_as_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import traceback

    from secureml.key_management import InvalidCiphertextError
    from secureml.key_management import _envelope as envelope

    monkeypatch.setenv("SECUREML_VAULT_TOKEN", "base64:" + "QUFB" * 11)  # decodes as a key
    manager = KeyManager(backend=_Empty())
    forged = envelope.Header(envelope.MODE_MANAGED_KEY, "vault_token", 0).encode()
    with pytest.raises(InvalidCiphertextError) as caught:
        manager.decrypt(forged + bytes(32))
    rendered = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )
    assert "QUFB" not in rendered


def test_a_huge_name_is_refused_at_once_and_never_quoted_whole() -> None:
    import time

    manager = KeyManager(backend=_Empty())
    started = time.monotonic()
    with pytest.raises(ValueError, match="longer than 512 bytes") as caught:
        manager.get_secret("a" * 65_000)
    assert time.monotonic() - started < 0.5
    assert len(str(caught.value)) < 200
    manager.get_secret("a" * 512, default="fits")  # the format's own cap still fits


class _Empty:
    """A primary source that has nothing (so lookups reach the environment)."""

    source = "empty"

    def locate(self, name: str) -> str:
        return f"empty:{name}"

    def get(self, name: str, version: int | None = None) -> None:
        return None

    def put(self, name: str, value: object) -> None:
        raise AssertionError("never written")

    def delete(self, name: str) -> None:
        raise AssertionError("never deleted")


def _store_with(name: str) -> object:
    from tests.support.memory_backend import MemoryVersions

    store = MemoryVersions()
    store.put_version(name, b"v" * 32)
    store.set_custom_metadata(name, {"secureml-key": "1"})  # as generate_key labels it
    return store


def test_a_missing_key_never_seals_new_data_under_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo in vault_path or a 404 used to make encrypt() seal under SECUREML_<NAME>."""
    from secureml.key_management import SecretNotFoundError

    monkeypatch.setenv("SECUREML_MODEL_KEY", "hex:" + "11" * 32)
    manager = KeyManager(backend=_store_with("other"))  # type: ignore[arg-type]
    with pytest.raises(SecretNotFoundError, match="never sealed under an environment key"):
        manager.encrypt(b"x", "model_key")
    # The spec's lookup chain still serves the key itself.
    assert manager.get_encryption_key("model_key") == bytes.fromhex("11" * 32)


def test_a_deleted_latest_version_never_seals_under_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secureml.key_management import SecretNotFoundError

    monkeypatch.setenv("SECUREML_MODEL_KEY", "hex:" + "11" * 32)
    store = _store_with("model_key")
    manager = KeyManager(backend=store)  # type: ignore[arg-type]
    manager.delete_secret("model_key")  # soft-deletes the latest (and only) version
    with pytest.raises(SecretNotFoundError, match="latest version is deleted"):
        manager.encrypt(b"x", "model_key")


def test_without_vault_the_environment_key_still_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_MODEL_KEY", "hex:" + "11" * 32)
    manager = KeyManager(declared_keys=["model_key"])
    assert manager.decrypt(manager.encrypt(b"x", "model_key")) == b"x"


def test_a_special_file_is_never_replaced_by_output(tmp_path: object) -> None:
    import os
    from pathlib import Path

    from secureml.key_management import atomic_output

    link = Path(str(tmp_path)) / "to-null"
    link.symlink_to(os.devnull)
    for special in (Path(os.devnull), link):
        with pytest.raises(ValueError, match="not a regular file"), atomic_output(special):
            pass
    assert link.is_symlink()
    assert Path(os.devnull).exists()
    assert not Path(os.devnull).is_file()


def test_a_destination_name_as_long_as_the_file_system_allows_works(tmp_path: object) -> None:
    from pathlib import Path

    from secureml.key_management import atomic_output

    target = Path(str(tmp_path)) / ("n" * 255)  # NAME_MAX on Linux file systems
    with atomic_output(target) as out:
        out.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_the_cli_writes_to_dev_stdout_as_to_a_pipe() -> None:
    import os
    import subprocess
    import sys

    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECUREML_", "VAULT_", "BAO_"))
    }
    environ["SECUREML_MASTER_KEY"] = "hex:" + "22" * 32
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secureml",
            "--declared-key=master_key",
            "encrypt",
            "-",
            "/dev/stdout",
        ],
        input=b"plain",
        capture_output=True,
        env=environ,
        check=True,
        timeout=60,
    )
    assert done.stdout.startswith(b"SMLE")


def test_a_remote_vault_goes_through_the_proxy_and_plain_http_warns_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from secureml.key_management import SecurityWarning
    from secureml.key_management.backends import _vault_http as http

    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "")
    pools = http.make_pool("http://vault.internal:8200", verify=True, cert=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pools.for_origin("http://vault.internal:8200") is not None  # builds, no I/O
        http.Pools({}).for_origin("http://vault.internal:8200")  # a second pool: no repeat
    said = [w for w in caught if issubclass(w.category, SecurityWarning)]
    assert len(said) == 1
    assert "unencrypted" in str(said[0].message)
    assert "pw" not in str(said[0].message)


def test_a_proxy_scheme_that_cannot_be_spoken_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secureml.key_management.backends import _vault_http as http

    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(ConfigurationError, match="cannot speak"):
        http.Pools({}).for_origin("https://vault.internal:8200")
    assert http.Pools({}).for_origin("https://127.0.0.1:8200") is not None  # never proxied


def test_an_unspeakable_proxy_is_not_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to make Vault 'unreachable', and the environment then answered."""
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("SECUREML_X", "from-env")
    manager = KeyManager(vault_url="https://vault.internal:8200", vault_token="s.t", retries=0)
    with pytest.raises(ConfigurationError, match="cannot speak"):
        manager.get_secret("x")


def _cli_environment(**extra: str) -> dict[str, str]:
    import os

    own = ("SECUREML_", "VAULT_", "BAO_")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    environ.update(extra)
    return environ


HOSTILE = "ok\x1b]52;c;aGVsbG8=\x07\x1b[2J\u202edone"


def test_the_cli_escapes_control_characters_on_a_terminal_only() -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "secureml", "get", "x"]
    environ = _cli_environment(SECUREML_X=HOSTILE)
    piped = subprocess.run(command, capture_output=True, env=environ, check=True, timeout=60)
    assert piped.stdout.decode() == HOSTILE + "\n"  # as stored, into a pipe
    leader, follower = os.openpty()
    try:
        done = subprocess.run(
            command, stdout=follower, stderr=subprocess.PIPE, env=environ, timeout=60, check=True
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"\x1b" not in shown
    assert b"\x07" not in shown
    assert b"\\x1b]52;c;aGVsbG8=\\x07" in shown
    assert b"\\u202e" in shown


def test_a_closed_stdout_is_one_line_error() -> None:
    import shlex
    import subprocess
    import sys

    command = f"exec {shlex.quote(sys.executable)} -m secureml get x >&-"
    done = subprocess.run(
        ["sh", "-c", command],
        check=False,
        capture_output=True,
        env=_cli_environment(SECUREML_X="v"),
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert lines == [
        "secureml: error: standard output is closed; redirect it (e.g. > file or | cat)"
    ]


def test_the_cli_never_dumps_core() -> None:
    import subprocess
    import sys

    probe = (
        "import resource; from secureml.cli import _no_core_dumps; _no_core_dumps(); "
        "print(resource.getrlimit(resource.RLIMIT_CORE))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "(0, 0)"


def test_a_url_with_credentials_and_a_space_never_shows_them() -> None:
    url = "https://admin:hunter2@vault.corp:8200 https://vault2.corp:8200"
    with pytest.raises(ConfigurationError, match="must not carry credentials") as caught:
        KeyManager(vault_url=url, vault_token="s.t")
    assert "hunter2" not in str(caught.value)


def test_data_under_a_reserved_name_can_still_be_moved_off_it() -> None:
    """Versioned reads, the key ring, decrypt of versioned messages and delete only ever
    ask Vault: they stay open so that data under such a name can be re-encrypted."""
    from tests.support.memory_backend import MemoryVersions

    store = MemoryVersions()
    store.put_version("vault-master", b"m" * 32)
    store.set_custom_metadata("vault-master", {"secureml-key": "1"})
    from secureml.key_management import _envelope as envelope

    manager = KeyManager(backend=store)
    # A message sealed under it before the name was reserved (version 1 of that key).
    old_message = envelope.encrypt_managed(b"m" * 32, "vault-master", 1, b"x", b"")
    assert manager.get_encryption_key("vault-master", version=1) == b"m" * 32
    assert manager.get_key_ring("vault-master") == {1: b"m" * 32}
    assert [v.version for v in manager.key_versions("vault-master")] == [1]
    assert manager.decrypt(old_message) == b"x"
    with pytest.raises(ValueError, match="reserved"):
        manager.get_encryption_key("vault-master")  # the environment would be asked
    manager.delete_secret("vault-master", destroy=True)


def test_every_login_method_refuses_pickling(tmp_path: object) -> None:
    from pathlib import Path

    from secureml.key_management import JWTAuth

    jwt_file = Path(str(tmp_path)) / "jwt"
    jwt_file.write_text("header.payload.signature")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(JWTAuth(role="r", jwt_path=str(jwt_file)))


def test_long_multibyte_destination_names_work(tmp_path: object) -> None:
    from pathlib import Path

    from secureml.key_management import atomic_output

    target = Path(str(tmp_path)) / ("\U0001f600" * 63)  # 252 bytes of UTF-8
    with atomic_output(target) as out:
        out.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_audit_events_never_carry_a_huge_name() -> None:
    from secureml.key_management import AccessEvent

    events: list[AccessEvent] = []
    manager = KeyManager(backend=_Empty(), audit_hook=events.append)
    with pytest.raises(ValueError, match="longer than"):
        manager.get_secret("a" * 65_000)
    assert len(events) == 1
    assert len(events[0].name) < 100


def test_a_proxy_without_a_scheme_is_http_as_everywhere_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secureml.key_management.backends import _vault_http as http

    monkeypatch.setenv("HTTPS_PROXY", "127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert http._proxy_for("https://vault.internal:8200") == "http://127.0.0.1:3128"


@pytest.mark.parametrize("host", ["::ffff:127.0.0.1", "127.0.0.2", "::1", "LOCALHOST"])
def test_every_spelling_of_loopback_is_loopback(host: str) -> None:
    from secureml.key_management._config import is_loopback

    assert is_loopback(host)


def test_the_cli_writes_to_a_pipe_named_as_a_file(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    import threading
    from pathlib import Path

    fifo = Path(str(tmp_path)) / "out.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    subprocess.run(
        [sys.executable, "-m", "secureml", "--declared-key=master_key", "encrypt", "-", str(fifo)],
        input=b"plain",
        capture_output=True,
        env=_cli_environment(SECUREML_MASTER_KEY="hex:" + "22" * 32),
        check=True,
        timeout=60,
    )
    reader.join(30)
    assert received[0].startswith(b"SMLE")
    assert stat_is_fifo(fifo)


def stat_is_fifo(path: object) -> bool:
    import os
    import stat

    return stat.S_ISFIFO(os.stat(str(path)).st_mode)


def _writing_into(pid: int, folder: object, source: object) -> bool:
    """Whether process ``pid`` has an output file open in ``folder``: a hidden ``.part``
    file, or an unnamed one (Linux ``O_TMPFILE``: ``<folder>/#<inode> (deleted)``)."""
    import os
    from pathlib import Path

    folder = Path(str(folder))
    if any(p.name.endswith(".part") for p in folder.iterdir()):
        return True
    try:
        opened = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(Path(t).parent == folder and t != str(source) for t in opened)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_terminated_cli_leaves_no_partial_output(tmp_path: object, signame: str) -> None:
    """SIGTERM/SIGHUP mid-file used to leave a hidden .part file of output behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = Path(str(tmp_path))
    source, target = folder / "in.fifo", folder / "out.sml"
    os.mkfifo(source)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "secureml", "--declared-key=master_key"),
            *("encrypt", str(source), str(target)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cli_environment(SECUREML_MASTER_KEY="hex:" + "22" * 32),
    )
    with source.open("wb") as feed:  # opens once the command opened its end
        feed.write(os.urandom(3 << 20))
        feed.flush()
        deadline = time.monotonic() + 30
        while not _writing_into(process.pid, folder, source):
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(0.02)
        process.send_signal(getattr(signal, signame))
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + getattr(signal, signame), stderr
    assert sorted(p.name for p in folder.iterdir()) == ["in.fifo"]


def test_debug_never_shows_a_byte_of_a_non_utf8_value() -> None:
    import subprocess
    import sys

    secret = b"\xfe\xed-secret-\xc3"
    done = subprocess.run(
        [sys.executable, "-m", "secureml", "--debug", "set", "x"],
        input=secret,
        capture_output=True,
        env=_cli_environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert b"secret" not in done.stderr
    assert b"0xfe" not in done.stderr
    assert b"\\xfe" not in done.stderr
    assert b"not UTF-8" in done.stderr
