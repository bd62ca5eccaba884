"""RFC 5869 HKDF-SHA256 known answers, from the cryptography-vectors package."""

from __future__ import annotations

import cryptography_vectors
import pytest

from secureml.key_management import KeyManager
from secureml.key_management import _envelope as envelope


def load_vectors() -> list[dict[str, str]]:
    with cryptography_vectors.open_vector_file("KDF/rfc-5869-HKDF-SHA256.txt", "r") as f:
        text = f.read()
    vectors: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("COUNT"):
            vectors.append({})
        elif "=" in line and vectors:
            key, _, value = line.partition("=")
            vectors[-1][key.strip()] = value.strip()
    return vectors


VECTORS = load_vectors()


def test_the_file_has_the_rfc_cases() -> None:
    assert len(VECTORS) == 3
    assert all(v["Hash"] == "SHA-256" for v in VECTORS)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["info"]], ids=lambda v: v["L"])
def test_derive_key_matches_rfc_5869(vector: dict[str, str]) -> None:
    okm = KeyManager().derive_key(
        bytes.fromhex(vector["IKM"]),
        purpose=bytes.fromhex(vector["info"]),
        key_bytes=int(vector["L"]),
        salt=bytes.fromhex(vector["salt"]),
    )
    assert okm.hex() == vector["OKM"]


def test_case_with_empty_info_is_refused_on_purpose() -> None:
    """RFC case 3 has an empty info; an empty purpose would defeat key separation."""
    (case3,) = [v for v in VECTORS if not v["info"]]
    with pytest.raises(ValueError, match="purpose"):
        KeyManager().derive_key(bytes.fromhex(case3["IKM"]), purpose=b"", key_bytes=42)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["L"])
def test_the_per_message_key_is_rfc_5869_hkdf_sha256(vector: dict[str, str]) -> None:
    """The format's K (docs/FORMAT.md): all three cases, empty info included; a 32-byte
    HKDF output is the first 32 bytes of any longer one."""
    okm = envelope._message_key(
        bytes.fromhex(vector["IKM"]), bytes.fromhex(vector["salt"]), bytes.fromhex(vector["info"])
    )
    assert okm == bytes.fromhex(vector["OKM"])[:32]
