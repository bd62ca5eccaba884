"""KeyManager.encrypt & co over an in-memory versioned store: which key seals, which key
opens, and what never happens before a header is trusted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from secureml.key_management import (
    ConfigurationError,
    InvalidCiphertextError,
    KeyFormatError,
    KeyManager,
    KeyVersionUnavailableError,
    SecretNotFoundError,
)
from secureml.key_management import _envelope as envelope
from tests.support.memory_backend import MemoryVersions


class Counting(MemoryVersions):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, name: str, version: int | None = None) -> object:
        self.calls += 1
        return super().get(name, version)

    def get_latest(self, name: str) -> object:
        self.calls += 1
        return super().get_latest(name)


@pytest.fixture
def store() -> Counting:
    return Counting()


@pytest.fixture
def km(store: Counting) -> KeyManager:
    manager = KeyManager(backend=store, use_env_fallback=False)
    manager.generate_key("master_key")
    return manager


def test_blobs_survive_rotations_and_move_with_reencrypt(km: KeyManager) -> None:
    blobs = {}
    for version in (1, 2, 3, 4):
        blobs[version] = km.encrypt(f"v{version}".encode(), aad=b"ctx")
        assert envelope.parse_header(blobs[version])[0].key_version == version
        if version < 4:
            km.rotate_key("master_key")
    for version, blob in blobs.items():
        assert km.decrypt(blob, aad=b"ctx") == f"v{version}".encode()
    moved = km.reencrypt(blobs[1], aad=b"ctx")
    assert envelope.parse_header(moved)[0].key_version == 4
    km.delete_secret("master_key", versions=[1], destroy=True)
    with pytest.raises(KeyVersionUnavailableError, match="version 1, which cannot be read"):
        km.decrypt(blobs[1], aad=b"ctx")  # also a SecretNotFoundError, and no version oracle
    assert km.decrypt(moved, aad=b"ctx") == b"v1"


def test_a_rotation_is_seen_by_the_next_encrypt(km: KeyManager) -> None:
    km.encrypt(b"x")  # caches the current version
    km.rotate_key("master_key")
    assert envelope.parse_header(km.encrypt(b"x"))[0].key_version == 2


def test_named_keys_and_unknown_keys(km: KeyManager) -> None:
    km.generate_key("datasets/2025", 64)
    blob = km.encrypt(b"rows", "datasets/2025")
    assert envelope.parse_header(blob)[0].key_name == "datasets/2025"
    assert km.decrypt(blob) == b"rows"
    with pytest.raises(SecretNotFoundError):
        km.encrypt(b"rows", "no-such-key")


def test_hostile_headers_cost_no_lookup(km: KeyManager, store: Counting) -> None:
    good = km.encrypt(b"data")
    before = store.calls
    head, length = envelope.parse_header(good)
    forged = envelope.Header(
        mode=head.mode, key_name="../escape", key_version=1, segment_bytes=head.segment_bytes
    )
    for blob in (
        b"SMLE\x01\x01" + bytes(200),
        forged.encode() + good[length:],
        good[:10],
    ):
        with pytest.raises(InvalidCiphertextError):
            km.decrypt(blob)
    assert store.calls == before


def test_short_keys_are_refused(store: Counting) -> None:
    km = KeyManager(backend=store, declared_keys=["tiny"])
    km.set_secret("tiny", b"short")
    with pytest.raises(KeyFormatError, match="at least 16"):
        km.encrypt(b"x", "tiny")


def test_environment_keys_are_unversioned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_MASTER_KEY", "hex:" + "11" * 32)
    km = KeyManager(declared_keys=["master_key"])
    blob = km.encrypt(b"laptop")
    assert envelope.parse_header(blob)[0].key_version == 0
    assert km.decrypt(blob) == b"laptop"
    monkeypatch.setenv("SECUREML_MASTER_KEY", "hex:" + "22" * 32)
    with pytest.raises(InvalidCiphertextError):
        km.decrypt(blob)  # another key now: fails closed, never garbage


def test_streams_and_files(km: KeyManager, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    out = io.BytesIO()
    assert km.encrypt_stream(io.BytesIO(data), out, aad=b"a") == len(data)
    back = io.BytesIO()
    assert km.decrypt_stream(io.BytesIO(out.getvalue()), back, aad=b"a") == len(data)
    assert back.getvalue() == data
    assert km.decrypt(out.getvalue(), aad=b"a") == data  # one format for both

    src, enc, dec = tmp_path / "in.bin", tmp_path / "in.bin.sml", tmp_path / "out.bin"
    src.write_bytes(data)
    seen: list[int] = []
    km.encrypt_file(src, enc, progress=seen.append)
    assert seen[-1] == len(data)
    assert len(seen) == 4
    km.decrypt_file(enc, dec)
    assert dec.read_bytes() == data
    assert dec.stat().st_mode & 0o777 == 0o600
    km.rotate_key("master_key")
    km.reencrypt_file(enc, enc)
    with enc.open("rb") as stored:
        assert envelope.read_header(stored)[0].key_version == 2
    km.decrypt_file(enc, dec)
    assert dec.read_bytes() == data


def test_a_tampered_file_leaves_nothing_at_dst(km: KeyManager, tmp_path: Path) -> None:
    src, enc = tmp_path / "in.bin", tmp_path / "in.sml"
    src.write_bytes(os.urandom(2 * (1 << 20) + 7))
    km.encrypt_file(src, enc)
    blob = bytearray(enc.read_bytes())
    for broken in (bytes(blob[:-1]), bytes(blob[: 1 << 20])):
        enc.write_bytes(broken)
        dst = tmp_path / "plain.bin"
        with pytest.raises(InvalidCiphertextError):
            km.decrypt_file(enc, dst)
        assert not dst.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "in.sml"]
    # An existing destination is left as it was.
    dst.write_bytes(b"previous")
    with pytest.raises(InvalidCiphertextError):
        km.decrypt_file(enc, dst)
    assert dst.read_bytes() == b"previous"


def test_argument_types(km: KeyManager) -> None:
    with pytest.raises(TypeError, match="data must be bytes"):
        km.encrypt("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aad must be bytes"):
        km.encrypt(b"x", aad="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="blob must be bytes"):
        km.decrypt("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress"):
        km.encrypt_stream(io.BytesIO(), io.BytesIO(), progress=3)  # type: ignore[arg-type]
    assert km.decrypt(km.encrypt(bytearray(b"ba"), aad=memoryview(b"m")), aad=b"m") == b"ba"


def test_dev_defaults_never_encrypt_nor_open() -> None:
    laptop = KeyManager(use_default_fallback=True)  # no Vault, no environment key
    with pytest.raises(ConfigurationError, match="declare it"):
        laptop.encrypt(b"x")  # not declared: not a key at all
    declared = KeyManager(use_default_fallback=True, declared_keys=["master_key", "ghost"])
    with pytest.raises(SecretNotFoundError):
        declared.encrypt(b"x")  # declared, but only a dev default has it
    # A message forged under the public dev default of a key nobody created:
    forged_key = envelope.Header(mode=1, key_name="ghost", key_version=0)
    from secureml.key_management._devdefaults import dev_default_key

    blob = envelope.encrypt_bytes(dev_default_key("ghost", 32), forged_key, b"forged", b"")
    with pytest.raises(InvalidCiphertextError, match="does not open with"):
        laptop.decrypt(blob)
    with pytest.raises(SecretNotFoundError):
        declared.decrypt(blob)


def test_a_header_naming_a_non_key_secret_is_opaque(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    km.set_secret("db_password", "hunter2")
    forged = envelope.Header(mode=1, key_name="db_password", key_version=1)
    blob = envelope.encrypt_bytes(bytes(32), forged, b"x", b"")
    with pytest.raises(InvalidCiphertextError) as caught:
        km.decrypt(blob)
    assert "7" not in str(caught.value)  # not even the secret's length


def test_versions_and_transit_a_manager_cannot_hold_do_not_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECUREML_MASTER_KEY", "hex:" + "11" * 32)
    for env_only in (KeyManager(), KeyManager(declared_keys=["master_key", "t"])):
        for header in (
            envelope.Header(mode=1, key_name="master_key", key_version=3),
            envelope.Header(mode=2, key_name="t", key_version=1, wrapped_key=b"vault:v1:AA"),
        ):
            blob = envelope.encrypt_bytes(bytes(32), header, b"x", b"")
            with pytest.raises(InvalidCiphertextError):
                env_only.decrypt(blob)


def test_typed_buffers_are_bytes(km: KeyManager) -> None:
    import array

    words = array.array("I", range(1000))
    blob = km.encrypt(memoryview(words))
    assert km.decrypt(memoryview(array.array("B", blob))) == words.tobytes()
    with pytest.raises(TypeError, match="contiguous"):
        km.encrypt(memoryview(b"abcdef")[::2])


def test_the_current_key_entry_is_not_a_version(km: KeyManager) -> None:
    km.encrypt(b"x")  # caches the current key with its version
    with pytest.raises(ValueError, match="1 or more"):
        km.get_secret("master_key", version=0)
    with pytest.raises(ValueError, match="1 or more"):
        km.get_encryption_key("master_key", version=0)


def test_large_blobs_use_threads_and_still_fail_closed() -> None:
    key = os.urandom(32)
    made = envelope.Header(mode=1, key_name="k", key_version=1, segment_bytes=16)
    data = os.urandom(16 * 100 + 5)  # 101 segments: split across threads
    blob = envelope.encrypt_bytes(key, made, data, b"")
    head, length = envelope.parse_header(blob)
    assert envelope.decrypt_bytes(key, head, head.encode(), blob[length:], b"") == data
    for at in (length + 5, length + 50 * 32, len(blob) - 1):
        broken = bytearray(blob)
        broken[at] ^= 1
        with pytest.raises(InvalidCiphertextError):
            envelope.decrypt_bytes(key, head, head.encode(), bytes(broken)[length:], b"")


def test_a_failed_fill_leaves_zeros_not_plaintext() -> None:
    from secureml.key_management._buffers import filled_bytes

    kept: list[memoryview] = []

    def fill(view: memoryview) -> None:
        kept.append(view)
        view[:6] = b"SECRET"
        raise InvalidCiphertextError("tag")

    with pytest.raises(InvalidCiphertextError):
        filled_bytes(64, fill)
    assert bytes(kept[0]) == bytes(64)


def test_a_reader_that_returns_more_than_asked_is_a_clear_error(km: KeyManager) -> None:
    class Greedy:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def read(self, size: int = -1) -> bytes:
            return self._data  # everything, whatever was asked

    blob = km.encrypt(b"x" * 100)
    with pytest.raises(ValueError, match=r"read\(\d+\) returned \d+ bytes"):
        km.decrypt_stream(Greedy(blob), io.BytesIO())
    with pytest.raises(ValueError, match=r"read\(\d+\) returned \d+ bytes"):
        km.encrypt_stream(Greedy(b"y" * (3 << 20)), io.BytesIO())


def test_require_commitment_refuses_format_1(store: Counting) -> None:
    km = KeyManager(backend=store, use_env_fallback=False)
    km.generate_key("master_key")
    key = km.get_encryption_key("master_key")
    old = envelope.encrypt_bytes(
        key, envelope.Header(1, "master_key", 1, format_version=1), b"v1", b""
    )
    assert km.decrypt(old) == b"v1"  # cached now: the hot path must refuse it too
    strict = KeyManager(backend=store, use_env_fallback=False, require_commitment=True)
    with pytest.raises(InvalidCiphertextError, match="not key-committing"):
        strict.decrypt(old)
    assert strict.decrypt(km.encrypt(b"v2")) == b"v2"  # caches version 1 of the key...
    with pytest.raises(InvalidCiphertextError, match="not key-committing"):
        strict.decrypt(old)  # ...and the hot path refuses format 1 all the same
    moved = km.reencrypt(old)
    assert strict.decrypt(moved) == b"v1"


def test_a_cached_absent_label_refuses_and_never_crashes(store: Counting) -> None:
    """A junk header caches "no such secret" for a name; a key of that name made
    elsewhere, whose version this manager then caches, must meet a refusal until the
    label is read again, never a TypeError from comparing the cached absence."""
    km = KeyManager(backend=store, use_env_fallback=False)
    junk = envelope.encrypt_bytes(bytes(32), envelope.Header(1, "k", 1), b"x", b"")
    with pytest.raises(InvalidCiphertextError):
        km.decrypt(junk)
    other = KeyManager(backend=store, use_env_fallback=False)
    other.generate_key("k")
    km.get_encryption_key("k", version=1)  # the version is cached, the label is not
    blob = other.encrypt(b"hi", "k")
    with pytest.raises(InvalidCiphertextError, match="not a managed key"):
        km.decrypt(blob)
    km.invalidate("k")
    assert km.decrypt(blob) == b"hi"
