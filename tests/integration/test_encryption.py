"""Encryption with keys from a real OpenBao: KV keys across rotations, Transit data keys,
files, and the memory bound."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    SecretNotFoundError,
    VaultUnavailableError,
)
from secureml.key_management import _envelope as envelope
from secureml.key_management._materials import DATA_KEY_LABEL


@pytest.fixture(scope="module")
def transit_mount(bao_server: DevServer) -> str:
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    return "transit"


def test_old_blobs_decrypt_after_three_rotations(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    vault_manager.generate_key("dataset-key")
    blobs = []
    for round_ in range(4):
        blobs.append(vault_manager.encrypt(f"round {round_}".encode(), "dataset-key"))
        if round_ < 3:
            vault_manager.rotate_key("dataset-key")
    assert [envelope.parse_header(b)[0].key_version for b in blobs] == [1, 2, 3, 4]
    fresh = KeyManager(bao_server.address, bao_server.root_token, vault_path)  # a new process
    for round_, blob in enumerate(blobs):
        assert fresh.decrypt(blob) == f"round {round_}".encode()
    moved = [fresh.reencrypt(blob) for blob in blobs[:3]]
    assert {envelope.parse_header(b)[0].key_version for b in moved} == {4}
    fresh.delete_secret("dataset-key", versions=[1, 2, 3], destroy=True)
    assert [fresh.decrypt(b) for b in moved] == [b"round 0", b"round 1", b"round 2"]
    with pytest.raises(SecretNotFoundError, match="version 1, which cannot be read"):
        fresh.decrypt(blobs[0])


def test_a_key_written_by_the_cli_encrypts(
    vault_manager: KeyManager, bao_server: DevServer, vault_path: str
) -> None:
    """A key another tool wrote carries no managed-key label: it seals and opens only
    once declared, or after one forced rotation (which labels it)."""
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/cli-key", "value=" + "ab" * 32)
    with pytest.raises(ConfigurationError, match="declared_keys=\\['cli-key'\\]"):
        vault_manager.encrypt(b"from a cli key", "cli-key")
    declaring = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        declared_keys=["cli-key"],
    )
    blob = declaring.encrypt(b"from a cli key", "cli-key")
    assert declaring.decrypt(blob) == b"from a cli key"
    with pytest.raises(InvalidCiphertextError, match="does not open with"):
        vault_manager.decrypt(blob)
    vault_manager.rotate_key("cli-key", force=True)  # labels it: a managed key from now on
    # ...whose text version 1 is still no key to the undeclared manager (it could as well
    # be a password), but opens where declared, and moves to version 2 (bytes) there.
    with pytest.raises(InvalidCiphertextError):
        vault_manager.decrypt(blob)
    declaring.invalidate()  # it cached the current version, 1, before the rotation
    moved = declaring.reencrypt(blob)
    assert vault_manager.decrypt(moved) == b"from a cli key"


def test_transit_mode_keeps_only_the_wrapped_data_key(
    vault_manager: KeyManager, bao_server: DevServer, transit_mount: str
) -> None:
    name = f"envelope-{uuid.uuid4().hex[:8]}"
    vault_manager.transit.ensure_key(name)
    blob = vault_manager.encrypt(b"features", transit_key=name, aad=b"v1")
    header, _ = envelope.parse_header(blob)
    assert (header.mode, header.key_name, header.key_version) == (2, name, 1)
    wrapped = header.wrapped_key.decode()
    decrypt = (
        "write",
        "-field=plaintext",
        f"{transit_mount}/decrypt/{name}",
        f"ciphertext={wrapped}",
    )
    # Bound to secureml: Transit opens it only with the data-key label as associated data.
    with pytest.raises(subprocess.CalledProcessError):
        bao_server.bao(*decrypt)
    label = base64.b64encode(DATA_KEY_LABEL).decode()
    out = bao_server.bao(*decrypt, f"associated_data={label}").stdout
    data_key = base64.b64decode(out)
    assert len(data_key) == 32
    assert data_key not in blob  # only the wrapped key rests in the message
    assert vault_manager.decrypt(blob, aad=b"v1") == b"features"
    # Old messages survive a Transit rotation; reencrypt moves them to a v2 data key.
    vault_manager.transit.rotate(name)
    assert vault_manager.decrypt(blob, aad=b"v1") == b"features"
    moved = vault_manager.reencrypt(blob, aad=b"v1")
    assert envelope.parse_header(moved)[0].key_version == 2
    vault_manager.transit.set_min_decryption_version(name, 2)
    with pytest.raises(InvalidCiphertextError):
        vault_manager.decrypt(blob, aad=b"v1")
    assert vault_manager.decrypt(moved, aad=b"v1") == b"features"


def test_wrapped_keys_swapped_between_real_messages(
    vault_manager: KeyManager, transit_mount: str
) -> None:
    name = f"swap-{uuid.uuid4().hex[:8]}"
    vault_manager.transit.ensure_key(name)
    one = vault_manager.encrypt(b"one", transit_key=name)
    two = vault_manager.encrypt(b"two", transit_key=name)
    head_one, at_one = envelope.parse_header(one)
    head_two, _ = envelope.parse_header(two)
    swapped = envelope.Header(
        mode=head_one.mode,
        key_name=head_one.key_name,
        key_version=head_one.key_version,
        wrapped_key=head_two.wrapped_key,
        salt=head_one.salt,
        nonce_prefix=head_one.nonce_prefix,
    )
    with pytest.raises(InvalidCiphertextError):
        vault_manager.decrypt(swapped.encode() + one[at_one:])


def test_transit_files(vault_manager: KeyManager, transit_mount: str, tmp_path: Path) -> None:
    name = f"files-{uuid.uuid4().hex[:8]}"
    vault_manager.transit.ensure_key(name)
    src, enc, dec = tmp_path / "a", tmp_path / "a.sml", tmp_path / "b"
    src.write_bytes(os.urandom(2_500_000))
    vault_manager.encrypt_file(src, enc, transit_key=name)
    vault_manager.decrypt_file(enc, dec)
    assert dec.read_bytes() == src.read_bytes()
    # A chosen segment size: the data key's header is made anew with it.
    vault_manager.encrypt_file(src, enc, transit_key=name, segment_size=64 << 10)
    header, _ = envelope.parse_header(enc.read_bytes())
    assert header.segment_bytes == 64 << 10
    assert header.mode == envelope.MODE_TRANSIT
    with vault_manager.open_encrypted(enc) as f:
        f.seek(1_000_000)
        assert f.read(10) == src.read_bytes()[1_000_000:1_000_010]


def test_a_missing_transit_or_kv_key_is_not_found(
    vault_manager: KeyManager, transit_mount: str
) -> None:
    with pytest.raises(SecretNotFoundError):
        vault_manager.encrypt(b"x", "missing-key")
    # Data keys are never made from a key that does not exist (no create-on-use).
    with pytest.raises(SecretNotFoundError, match="ensure_key"):
        vault_manager.encrypt(b"x", transit_key=f"typo-{uuid.uuid4().hex[:6]}")


MEMORY_PROBE = textwrap.dedent(
    """
    import os, resource, sys
    from secureml.key_management import KeyManager
    src, dst = sys.argv[1], sys.argv[2]
    km = KeyManager(declared_keys=["master_key"])
    km.encrypt(b"warm up imports and the key")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    km.encrypt_file(src, dst)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)
    """
)


def test_encrypting_1_gib_raises_peak_rss_by_less_than_64_mib(tmp_path: Path) -> None:
    src, dst = tmp_path / "big.bin", tmp_path / "big.sml"
    with src.open("wb") as f:
        f.truncate(1 << 30)  # sparse: reading it costs no disk
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(src), str(dst)],
        env={**os.environ, "SECUREML_MASTER_KEY": "hex:" + "33" * 32},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    grew_mib = int(done.stdout.strip())
    assert grew_mib < 64, f"peak RSS grew by {grew_mib} MiB"
    header = 57 + 32 + len("master_key")  # format 2: fixed fields, commitment, name
    assert dst.stat().st_size == (1 << 30) + 1024 * 16 + header


def test_the_wrapped_key_is_bound_even_when_it_wraps_the_same_data_key(
    vault_manager: KeyManager, transit_mount: str
) -> None:
    name = f"bound-{uuid.uuid4().hex[:8]}"
    vault_manager.transit.ensure_key(name)
    blob = vault_manager.encrypt(b"bound", transit_key=name)
    head, at = envelope.parse_header(blob)
    vault_manager.transit.rotate(name)
    # Same data key, wrapped again by v2 (Transit's rewrap cannot carry associated data:
    # decrypt and encrypt again): a different header, so a different message key.
    transit = vault_manager.transit
    data_key = transit.decrypt(name, head.wrapped_key.decode(), associated_data=DATA_KEY_LABEL)
    rewrapped = transit.encrypt(name, data_key, associated_data=DATA_KEY_LABEL)
    assert rewrapped.startswith("vault:v2:")
    moved = envelope.Header(
        mode=head.mode,
        key_name=head.key_name,
        key_version=head.key_version,
        wrapped_key=rewrapped.encode(),
        salt=head.salt,
        nonce_prefix=head.nonce_prefix,
    )
    with pytest.raises(InvalidCiphertextError):
        vault_manager.decrypt(moved.encode() + blob[at:])
    assert vault_manager.decrypt(blob) == b"bound"


def test_an_outage_never_switches_encryption_to_the_environment(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.fault_proxy import Fault, FaultProxy

    monkeypatch.setenv("SECUREML_OUTAGE_KEY", "hex:" + "44" * 32)
    with FaultProxy(bao_server.address) as proxy:
        km = KeyManager(proxy.origin, bao_server.root_token, vault_path, retries=0, cache_ttl=0)
        proxy.inject(*[Fault.status(503) for _ in range(4)])
        with pytest.raises(VaultUnavailableError):
            km.encrypt(b"x", "outage_key")
