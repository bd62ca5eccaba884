"""Key material: encodings out, text decoding in, strict lengths."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureml.key_management import KeyFormatError, KeyManager
from secureml.key_management._encoding import decode_key_text, encode_key

KEYS = st.integers(16, 64).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@given(KEYS)
def test_text_encodings_round_trip(key: bytes) -> None:
    n = len(key)
    assert encode_key(key, "bytes") == key
    for encoding in ("hex", "base64", "base64url"):
        text = encode_key(key, encoding)  # type: ignore[arg-type]
        assert isinstance(text, str)
        if encoding != "hex" and re.fullmatch("[0-9a-fA-F]*", text):
            continue  # degenerate base64 made of hex digits is read as hex; see below
        assert decode_key_text(text, n, described="k") == key
    assert decode_key_text("hex:" + key.hex(), n, described="k") == key
    assert decode_key_text("base64:" + base64.b64encode(key).decode(), n, described="k") == key
    unpadded = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert decode_key_text("base64:" + unpadded, n, described="k") == key


def test_output_formats() -> None:
    key = bytes(range(32))
    assert encode_key(key, "hex") == key.hex()
    assert encode_key(key, "base64") == base64.b64encode(key).decode()
    assert encode_key(key, "base64url") == base64.urlsafe_b64encode(key).decode()


@given(KEYS, st.integers(16, 64))
def test_wrong_length_is_an_error_without_material(key: bytes, wanted: int) -> None:
    if wanted == len(key):
        return
    with pytest.raises(KeyFormatError) as caught:
        decode_key_text("hex:" + key.hex(), wanted, described="key 'k' from env:X")
    message = str(caught.value)
    assert f"{len(key)} bytes" in message
    assert str(wanted) in message
    assert "'k'" in message
    assert key.hex() not in message


@pytest.mark.parametrize(
    "text", ["hex:zz", "hex:abc", "base64:***", "not a key at all", "abcd", "hex:" + "00" * 16]
)
def test_undecodable_or_ambiguous_text(text: str) -> None:
    with pytest.raises(KeyFormatError) as caught:
        decode_key_text(text, 32, described="key 'k'")
    assert text not in str(caught.value) or len(text) < 5


def test_unprefixed_is_read_only_when_the_length_fits() -> None:
    key = bytes(range(32))
    assert decode_key_text(key.hex(), 32, described="k") == key
    assert decode_key_text(base64.b64encode(key).decode(), 32, described="k") == key
    # 64 hex digits are 32 bytes of hex, never reread as 48 bytes of base64:
    with pytest.raises(KeyFormatError, match="is 32 bytes long; 48 were requested"):
        decode_key_text(key.hex(), 48, described="k")


class TestManagerArguments:
    @pytest.fixture
    def manager(self) -> KeyManager:
        return KeyManager(use_default_fallback=True)

    @pytest.mark.parametrize("encoding", ["utf8", "HEX", "raw", "", None])
    def test_bad_encoding(self, manager: KeyManager, encoding: object) -> None:
        with pytest.raises(ValueError, match="encoding"):
            manager.get_encryption_key("k", 32, encoding)  # type: ignore[arg-type]

    @pytest.mark.parametrize("key_bytes", [0, 15, 8161, -1])
    def test_key_bytes_out_of_range(self, manager: KeyManager, key_bytes: int) -> None:
        with pytest.raises(ValueError, match="key_bytes"):
            manager.get_encryption_key("k", key_bytes)

    @pytest.mark.parametrize("key_bytes", [True, 32.0, "32", None])
    def test_key_bytes_wrong_type(self, manager: KeyManager, key_bytes: object) -> None:
        with pytest.raises(TypeError, match="key_bytes"):
            manager.get_encryption_key("k", key_bytes)  # type: ignore[arg-type]

    @pytest.mark.filterwarnings("ignore::secureml.key_management.SecurityWarning")
    @pytest.mark.parametrize("key_bytes", [16, 24, 32, 64, 8160])
    def test_every_length_is_exact(self, manager: KeyManager, key_bytes: int) -> None:
        assert len(manager.get_encryption_key("k", key_bytes)) == key_bytes


@pytest.mark.parametrize(
    ("env_value", "key"),
    [
        ("hex:" + "ab" * 32, b"\xab" * 32),
        ("ab" * 32, b"\xab" * 32),
        ("base64:" + base64.b64encode(b"\x01" * 32).decode(), b"\x01" * 32),
        (base64.b64encode(b"\x02" * 32).decode(), b"\x02" * 32),
        (" hex:" + "cd" * 32 + "\n", b"\xcd" * 32),
    ],
)
def test_env_key_material(monkeypatch: pytest.MonkeyPatch, env_value: str, key: bytes) -> None:
    monkeypatch.setenv("SECUREML_MASTER_KEY", env_value)
    assert KeyManager().get_encryption_key() == key


def test_env_key_of_wrong_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_MASTER_KEY", "hex:" + "ab" * 16)
    with pytest.raises(KeyFormatError, match=r"'master_key' from env:SECUREML_MASTER_KEY is 16"):
        KeyManager().get_encryption_key()


def test_unprefixed_all_hex_digits_is_hex_prefix_says_otherwise() -> None:
    zeros = bytes(48)
    text = base64.b64encode(zeros).decode()  # "AAAA...": only hex digits
    with pytest.raises(KeyFormatError, match="is 32 bytes long; 48 were requested"):
        decode_key_text(text, 48, described="k")
    assert decode_key_text("base64:" + text, 48, described="k") == zeros


def test_only_marked_or_raw_material_tells_its_length() -> None:
    """A caller may read a key at the length it is stored at (the CLI's `keys get`), but a
    password that happens to decode as base64 must never be offered as a key."""
    import pytest

    from secureml.key_management._encoding import key_of_length
    from secureml.key_management.errors import KeyFormatError

    with pytest.raises(KeyFormatError) as raw:
        key_of_length(bytes(64), 32, described="k")
    assert raw.value.stored_bytes == 64
    with pytest.raises(KeyFormatError) as marked:
        key_of_length("hex:" + "ab" * 48, 32, described="k")
    assert marked.value.stored_bytes == 48
    with pytest.raises(KeyFormatError) as password:
        key_of_length("hunter2-Correct-Horse-Battery-Staple", 32, described="k")
    assert password.value.stored_bytes is None
