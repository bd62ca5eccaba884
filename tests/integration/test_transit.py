"""Vault Transit through secureml, against the real OpenBao engine and its CLI."""

from __future__ import annotations

import base64
import uuid

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AccessEvent,
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    PermissionDeniedError,
    SecretNotFoundError,
    TransitKeys,
    UnsupportedOperationError,
)


@pytest.fixture(scope="module")
def transit_mount(bao_server: DevServer) -> str:
    mount = f"transit-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "transit")
    return mount


@pytest.fixture
def transit(vault_manager: KeyManager, transit_mount: str) -> TransitKeys:
    return TransitKeys(vault_manager, mount=transit_mount)


@pytest.fixture
def key(transit: TransitKeys) -> str:
    name = f"k-{uuid.uuid4().hex[:8]}"
    transit.ensure_key(name)
    return name


@pytest.mark.parametrize("plaintext", [b"", b"x", b"features row 42", bytes(range(256)) * 64])
def test_round_trip(transit: TransitKeys, key: str, plaintext: bytes) -> None:
    token = transit.encrypt(key, plaintext)
    assert token.startswith("vault:v1:")
    assert transit.decrypt(key, token) == plaintext


def test_ensure_key_is_idempotent_and_checks_settings(transit: TransitKeys) -> None:
    name = f"e-{uuid.uuid4().hex[:8]}"
    info = transit.ensure_key(name, "chacha20-poly1305")
    assert (info.name, info.key_type, info.latest_version) == (name, "chacha20-poly1305", 1)
    assert transit.ensure_key(name, "chacha20-poly1305") == info
    with pytest.raises(ConfigurationError, match="exists as chacha20-poly1305"):
        transit.ensure_key(name)


def test_derived_keys_need_and_bind_the_context(transit: TransitKeys) -> None:
    name = f"d-{uuid.uuid4().hex[:8]}"
    assert transit.ensure_key(name, derived=True).derived
    with pytest.raises(ConfigurationError, match="context="):
        transit.encrypt(name, b"x")
    token = transit.encrypt(name, b"tenant data", context=b"tenant-1")
    assert transit.decrypt(name, token, context=b"tenant-1") == b"tenant data"
    with pytest.raises(InvalidCiphertextError):
        transit.decrypt(name, token, context=b"tenant-2")


def test_rotate_rewrap_and_retire_old_versions(transit: TransitKeys, key: str) -> None:
    old = transit.encrypt(key, b"before rotation")
    assert transit.rotate(key) == 2
    assert transit.encrypt(key, b"after").startswith("vault:v2:")
    assert transit.decrypt(key, old) == b"before rotation"  # old ciphertext still decrypts
    moved = transit.rewrap(key, old)
    assert moved.startswith("vault:v2:")
    transit.set_min_decryption_version(key, 2)
    assert transit.key_info(key).min_decryption_version == 2
    with pytest.raises(InvalidCiphertextError, match="min_decryption_version"):
        transit.decrypt(key, old)
    assert transit.decrypt(key, moved) == b"before rotation"


def test_tampered_or_foreign_ciphertext_is_invalid(transit: TransitKeys, key: str) -> None:
    token = transit.encrypt(key, b"secret plaintext")
    body = bytearray(base64.b64decode(token.split(":")[2]))
    body[-1] ^= 1
    tampered = "vault:v1:" + base64.b64encode(bytes(body)).decode()
    other = f"o-{uuid.uuid4().hex[:8]}"
    transit.ensure_key(other)
    for bad in (tampered, "vault:v1:AAAA", "not transit at all", transit.encrypt(other, b"x")):
        with pytest.raises(InvalidCiphertextError) as caught:
            transit.decrypt(key, bad)
        assert "secret plaintext" not in str(caught.value)


def test_data_keys_unwrap_with_the_bao_cli(
    transit: TransitKeys, key: str, bao_server: DevServer, transit_mount: str
) -> None:
    for size in (16, 32, 64):
        plaintext, wrapped = transit.generate_data_key(key, size)
        assert len(plaintext) == size
        assert wrapped.startswith("vault:v1:")
        assert transit.decrypt(key, wrapped) == plaintext
        out = bao_server.bao(
            "write", "-field=plaintext", f"{transit_mount}/decrypt/{key}", f"ciphertext={wrapped}"
        ).stdout
        assert base64.b64decode(out) == plaintext
    with pytest.raises(ValueError, match="16, 32, 64"):
        transit.generate_data_key(key, 24)


def test_bao_cli_ciphertext_decrypts_here(
    transit: TransitKeys, key: str, bao_server: DevServer, transit_mount: str
) -> None:
    plaintext = base64.b64encode(b"from the cli").decode()
    token = bao_server.bao(
        "write", "-field=ciphertext", f"{transit_mount}/encrypt/{key}", f"plaintext={plaintext}"
    ).stdout.decode()
    assert transit.decrypt(key, token.strip()) == b"from the cli"


def test_batches_round_trip_in_chunks_and_name_the_bad_item(transit: TransitKeys, key: str) -> None:
    items = [f"row {i}".encode() for i in range(2500)]  # several requests
    tokens = transit.encrypt_batch(key, items)
    assert len(tokens) == 2500
    assert transit.decrypt_batch(key, tokens) == items
    assert transit.encrypt_batch(key, []) == []
    broken = [*tokens[:1200], "vault:v1:AAAA", *tokens[1200:1210]]
    with pytest.raises(InvalidCiphertextError, match="item 1200 of the batch"):
        transit.decrypt_batch(key, broken)


def test_batches_with_a_context_per_item(transit: TransitKeys) -> None:
    name = f"bd-{uuid.uuid4().hex[:8]}"
    transit.ensure_key(name, derived=True)
    contexts = [b"a", b"b", b"c"]
    tokens = transit.encrypt_batch(name, [b"1", b"2", b"3"], context=contexts)
    assert transit.decrypt_batch(name, tokens, context=contexts) == [b"1", b"2", b"3"]
    with pytest.raises(InvalidCiphertextError, match="item 0"):
        transit.decrypt_batch(name, tokens, context=[b"c", b"b", b"a"])
    with pytest.raises(ValueError, match="one per item"):
        transit.encrypt_batch(name, [b"1"], context=[b"a", b"b"])


def test_unknown_key_and_missing_engine(vault_manager: KeyManager, transit: TransitKeys) -> None:
    with pytest.raises(SecretNotFoundError, match="ensure_key"):
        transit.key_info("no-such-key")
    with pytest.raises(SecretNotFoundError, match="ensure_key"):
        transit.decrypt("no-such-key", "vault:v1:AAAA")
    nowhere = TransitKeys(vault_manager, mount=f"absent-{uuid.uuid4().hex[:6]}")
    for call in (
        lambda: nowhere.key_info("k"),
        lambda: nowhere.ensure_key("k"),
        lambda: nowhere.decrypt("k", "vault:v1:AAAA"),
    ):
        with pytest.raises(ConfigurationError, match="nothing is mounted at 'absent-"):
            call()
    with pytest.raises(TypeError, match="one per item"):
        transit.decrypt_batch("k", "vault:v1:AAAA")  # type: ignore[arg-type]


def test_default_mount_and_audit(bao_server: DevServer, vault_path: str) -> None:
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    events: list[AccessEvent] = []
    manager = KeyManager(
        bao_server.address, bao_server.root_token, vault_path, audit_hook=events.append
    )
    assert manager.transit is manager.transit
    assert manager.transit.mount == "transit"
    name = f"a-{uuid.uuid4().hex[:8]}"
    manager.transit.ensure_key(name)
    assert manager.transit.decrypt(name, manager.transit.encrypt(name, b"x")) == b"x"
    assert [e.operation for e in events][-2:] == ["transit.encrypt", "transit.decrypt"]
    assert events[-1].source == f"vault:transit/keys/{name}"


def test_a_least_privilege_policy(
    bao_server: DevServer, transit_mount: str, transit: TransitKeys, key: str
) -> None:
    policy = f"""
path "{transit_mount}/encrypt/{key}" {{ capabilities = ["update"] }}
path "{transit_mount}/decrypt/{key}" {{ capabilities = ["update"] }}
"""
    name = f"transit-{uuid.uuid4().hex[:8]}"
    bao_server.bao("policy", "write", name, "-", input=policy.encode())
    token = bao_server.bao("token", "create", f"-policy={name}", "-field=token").stdout.decode()
    limited = TransitKeys(KeyManager(bao_server.address, token.strip()), mount=transit_mount)
    assert limited.decrypt(key, limited.encrypt(key, b"ok")) == b"ok"
    with pytest.raises(PermissionDeniedError):
        limited.rotate(key)
    with pytest.raises(PermissionDeniedError):
        limited.encrypt(f"{key}-typo", b"no key is created by a typo")


def test_transit_needs_vault() -> None:
    manager = KeyManager(use_env_fallback=True)
    with pytest.raises(UnsupportedOperationError, match="no Vault"):
        _ = manager.transit
