"""derive_key: HKDF-SHA256 with purpose as info; argument rules."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from secureml.key_management import KeyManager

BASE = bytes(range(32))


@pytest.fixture
def km() -> KeyManager:
    return KeyManager()


@given(
    st.binary(min_size=1, max_size=64),
    st.text(min_size=1, max_size=20),
    st.integers(1, 200),
    st.none() | st.binary(max_size=32),
)
def test_is_plain_hkdf_sha256(base: bytes, purpose: str, n: int, salt: bytes | None) -> None:
    expected = HKDF(hashes.SHA256(), n, salt, purpose.encode()).derive(base)
    assert KeyManager().derive_key(base, purpose, n, salt=salt) == expected


def test_str_purpose_is_its_utf8(km: KeyManager) -> None:
    assert km.derive_key(BASE, "données") == km.derive_key(BASE, "données".encode())


def test_purposes_and_salts_separate_keys(km: KeyManager) -> None:
    keys = {
        km.derive_key(BASE, "data_encryption"),
        km.derive_key(BASE, "data_integrity"),
        km.derive_key(BASE, "data_encryption", salt=b"s1"),
        km.derive_key(BASE, "data_encryption", salt=b"s2"),
        km.derive_key(bytes(32), "data_encryption"),
    }
    assert len(keys) == 5


def test_deterministic_and_length(km: KeyManager) -> None:
    assert km.derive_key(BASE, "p") == km.derive_key(BASE, "p")
    assert len(km.derive_key(BASE, "p")) == 32
    assert len(km.derive_key(BASE, "p", 1)) == 1
    assert len(km.derive_key(BASE, "p", 8160)) == 8160
    assert isinstance(km.derive_key(bytearray(BASE), "p"), bytes)
    assert km.derive_key(memoryview(BASE), "p") == km.derive_key(BASE, "p")


@pytest.mark.parametrize("n", [0, -1, 8161])
def test_length_out_of_range(km: KeyManager, n: int) -> None:
    with pytest.raises(ValueError, match="key_bytes"):
        km.derive_key(BASE, "p", n)


def test_empty_inputs(km: KeyManager) -> None:
    with pytest.raises(ValueError, match="base_key"):
        km.derive_key(b"", "p")
    with pytest.raises(ValueError, match="purpose"):
        km.derive_key(BASE, "")


def test_wrong_types(km: KeyManager) -> None:
    with pytest.raises(TypeError, match="encoding='bytes'"):
        km.derive_key(BASE.hex(), "p")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="purpose"):
        km.derive_key(BASE, 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="salt"):
        km.derive_key(BASE, "p", salt="salt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key_bytes"):
        km.derive_key(BASE, "p", 32.0)  # type: ignore[arg-type]
