"""No frame an exception carries out of a public call holds a secret in its locals.

Error trackers (Sentry's ``include_local_variables``), ``pytest --showlocals`` and rich's
``show_locals`` render the locals of every frame of a traceback and of the exceptions
chained to it. For a matrix of failures against the real server, this renders
``traceback.TracebackException(..., capture_locals=True)`` and looks for the token,
secret id, password, value and key bytes (raw, hex, base64) in every frame below the
test's own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import secureml.key_management as km_module
from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    KeyManager,
    TransitKeys,
    UserpassAuth,
    WriteOutcomeUnknownError,
    encode_key,
)
from secureml.key_management._envelope import parse_header
from secureml.key_management._materials import DATA_KEY_LABEL
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.frames import rendered_locals


def forms(secret: str | bytes) -> list[str]:
    """How a secret could show in a rendered local: as text, or bytes as repr, hex and
    base64 (standard and URL-safe, padded or not)."""
    if isinstance(secret, str):
        return [secret]
    encoded = [
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
    ]
    return [
        repr(secret)[2:-1],
        secret.hex(),
        *encoded,
        *(e.rstrip("=") for e in encoded),
    ]


def assert_no_secret_in_locals(error: BaseException, *secrets: str | bytes) -> None:
    leaks = [
        f"{where}: {name}"
        for where, name, value in rendered_locals(error)
        for secret in secrets
        for form in forms(secret)
        if len(form) >= 6 and form in value
    ]
    assert not leaks, "secrets in frame locals:\n" + "\n".join(leaks)


def caught(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as error:  # whatever leaves the library
        return error
    raise AssertionError("the call did not fail")


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as fault_proxy:
        yield fault_proxy


def through(proxy: FaultProxy, bao_server: DevServer, **kwargs: object) -> KeyManager:
    kwargs.setdefault("vault_token", bao_server.root_token)
    return KeyManager(
        vault_url=proxy.origin,
        vault_path=f"locals-{uuid.uuid4().hex[:8]}",
        vault_kv_version=2,
        retries=0,
        timeout=1.0,
        **kwargs,  # type: ignore[arg-type]
    )


VALUE = "the-value-being-written-" + uuid.uuid4().hex


# -- Vault failures ---------------------------------------------------------------------


def test_denied_read(bao_server: DevServer) -> None:
    token = bao_server.bao("token", "create", "-policy=default", "-field=token", "-ttl=5m")
    limited = token.stdout.decode().strip()
    manager = KeyManager(vault_url=bao_server.address, vault_token=limited, vault_kv_version=2)
    assert_no_secret_in_locals(caught(lambda: manager.get_secret("x")), limited)
    assert_no_secret_in_locals(caught(lambda: manager.set_secret("x", VALUE)), limited, VALUE)


def test_rejected_token(bao_server: DevServer) -> None:
    bad = "s.rejected-token-" + uuid.uuid4().hex
    manager = KeyManager(vault_url=bao_server.address, vault_token=bad, vault_kv_version=2)
    assert_no_secret_in_locals(caught(lambda: manager.get_secret("x")), bad)
    assert_no_secret_in_locals(caught(lambda: manager.set_secret("x", VALUE)), bad, VALUE)


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(500),
        Fault.replace(200, b"<html>not json</html>"),
        Fault.drip(0.6),
        Fault.cut(),
    ],
    ids=["500", "non-json", "drip", "cut"],
)
def test_broken_answers(bao_server: DevServer, proxy: FaultProxy, fault: Fault) -> None:
    manager = through(proxy, bao_server, use_env_fallback=False)
    manager.set_secret("x", VALUE)
    manager.invalidate()
    proxy.inject(*[fault] * 4)
    error = caught(lambda: manager.get_secret("x"))
    assert_no_secret_in_locals(error, bao_server.root_token, VALUE)


def test_dropped_write(bao_server: DevServer, proxy: FaultProxy) -> None:
    manager = through(proxy, bao_server)
    manager.set_secret("x", "first")
    proxy.inject(Fault.drop())
    error = caught(lambda: manager.set_secret("x", VALUE))
    assert_no_secret_in_locals(error, bao_server.root_token, VALUE)
    proxy.inject(Fault.drop(forward=True, path_prefix="/v1/secret/data/"))  # the write
    key = caught(lambda: manager.set_secret("k", bytes(range(40, 72))))
    assert isinstance(key, WriteOutcomeUnknownError)
    assert_no_secret_in_locals(key, bao_server.root_token, bytes(range(40, 72)))


def _enable(bao_server: DevServer, method: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # enabled by another test
        bao_server.bao("auth", "enable", method)


def test_lost_approle_login(bao_server: DevServer, proxy: FaultProxy) -> None:
    _enable(bao_server, "approle")
    secret_id = "approle-secret-id-" + uuid.uuid4().hex
    manager = through(proxy, bao_server, vault_token=None, vault_auth=AppRoleAuth("r", secret_id))
    proxy.inject(Fault.drop(path_prefix="/v1/auth/"))
    assert_no_secret_in_locals(caught(lambda: manager.get_secret("x")), secret_id)
    proxy.inject(Fault.status(500, path_prefix="/v1/auth/"))
    assert_no_secret_in_locals(caught(lambda: manager.get_secret("x")), secret_id)
    rejected = caught(lambda: manager.get_secret("x"))  # no such role: a 400
    assert_no_secret_in_locals(rejected, secret_id)


def test_lost_userpass_login(bao_server: DevServer, proxy: FaultProxy) -> None:
    _enable(bao_server, "userpass")
    password = "userpass-password-" + uuid.uuid4().hex
    manager = through(proxy, bao_server, vault_token=None, vault_auth=UserpassAuth("u", password))
    proxy.inject(Fault.drop(path_prefix="/v1/auth/"))
    assert_no_secret_in_locals(caught(lambda: manager.get_secret("x")), password)
    rejected = caught(lambda: manager.get_secret("x"))
    assert_no_secret_in_locals(rejected, password)


# -- keys and ciphertexts ---------------------------------------------------------------


@pytest.fixture
def keyed(bao_server: DevServer, vault_path: str) -> tuple[KeyManager, bytes]:
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    manager.generate_key("k")
    return manager, manager.get_encryption_key("k")


def hostile(blob: bytes) -> dict[str, bytes]:
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    return {
        "tampered": bytes(flipped),
        "truncated": blob[:-5],
        "garbage": blob[: len(blob) // 2] + b"\x00" * 40,
        "wrong-aad": blob,
    }


@pytest.mark.parametrize("case", ["tampered", "truncated", "garbage", "wrong-aad"])
def test_failed_decrypt_of_a_managed_key(keyed: tuple[KeyManager, bytes], case: str) -> None:
    manager, key = keyed
    for size in (10, 100_000):  # one segment, and the threaded path
        blob = manager.encrypt(b"p" * size, "k", aad=b"a")
        bad = hostile(blob)[case]
        error = caught(functools.partial(manager.decrypt, bad, aad=b"b"))
        assert_no_secret_in_locals(error, key)


def test_failed_stream_and_reencrypt(keyed: tuple[KeyManager, bytes], tmp_path: Path) -> None:
    import io

    manager, key = keyed
    bad = hostile(manager.encrypt(b"p" * 3000, "k"))["tampered"]
    error = caught(lambda: manager.decrypt_stream(io.BytesIO(bad), io.BytesIO()))
    assert_no_secret_in_locals(error, key)
    error = caught(lambda: manager.reencrypt_stream(io.BytesIO(bad), io.BytesIO()))
    assert_no_secret_in_locals(error, key)
    assert_no_secret_in_locals(caught(lambda: manager.reencrypt(bad)), key)
    (tmp_path / "bad").write_bytes(bad)
    error = caught(lambda: manager.decrypt_file(tmp_path / "bad", tmp_path / "out"))
    assert_no_secret_in_locals(error, key)


def test_failed_decrypt_in_transit_mode(bao_server: DevServer, vault_path: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        bao_server.bao("secrets", "enable", "transit")
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    transit = TransitKeys(manager)
    name = f"locals-{uuid.uuid4().hex[:8]}"
    transit.ensure_key(name)
    blob = manager.encrypt(b"p" * 64, transit_key=name)
    header, _ = parse_header(blob)
    data_key = transit.decrypt(name, header.wrapped_key.decode(), associated_data=DATA_KEY_LABEL)
    bad = hostile(blob)["tampered"]
    assert_no_secret_in_locals(caught(lambda: manager.decrypt(bad)), data_key)


def test_wrong_length_key(bao_server: DevServer, vault_path: str) -> None:
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    material = bytes(range(100, 110))
    manager.set_secret("short", material)
    error = caught(lambda: manager.get_encryption_key("short", 32))
    assert_no_secret_in_locals(error, material)
    error = caught(lambda: manager.encrypt(b"x", "short"))
    assert_no_secret_in_locals(error, material)


def test_arguments_the_caller_passed(tmp_path: Path) -> None:
    """The library's frames drop what the caller handed in when a call fails."""
    token = "s.constructor-token-" + uuid.uuid4().hex
    error = caught(lambda: KeyManager(vault_url="ftp://nowhere", vault_token=token))
    assert_no_secret_in_locals(error, token)
    error = caught(
        lambda: km_module.configure_default_key_manager(vault_url="ftp://x", vault_token=token)
    )
    assert_no_secret_in_locals(error, token)
    key = bytes(range(7, 39))
    assert_no_secret_in_locals(caught(lambda: encode_key(key, "rot13")), key)  # type: ignore[arg-type]
    manager = KeyManager(use_env_fallback=False, vault_url=None)
    assert_no_secret_in_locals(caught(lambda: manager.derive_key(key, "p", 0)), key)
    assert_no_secret_in_locals(caught(lambda: manager.set_secret("x", VALUE)), VALUE)
    bad_user = caught(lambda: UserpassAuth("alice/../../sys", token))
    assert_no_secret_in_locals(bad_user, token)


def test_the_public_vault_backend(bao_server: DevServer) -> None:
    from secureml.key_management import TokenAuth
    from secureml.key_management.backends import VaultBackend, VaultSettings

    token = bao_server.bao("token", "create", "-policy=default", "-field=token", "-ttl=5m")
    limited = token.stdout.decode().strip()
    backend = VaultBackend(VaultSettings(bao_server.address, TokenAuth(limited)), kv_version=2)
    assert_no_secret_in_locals(caught(lambda: backend.get("x")), limited)
    assert_no_secret_in_locals(caught(lambda: backend.put("x", VALUE)), limited, VALUE)
