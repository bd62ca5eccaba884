"""Known answers for the ciphertext format (docs/FORMAT.md): the committed vectors must
decrypt byte-exactly forever, with the library and with an independent reading of the
document written here from scratch. Format v1 (``envelope_v1.json``) is decrypt-only
since v2, and must keep decrypting; v2 (``envelope_v2.json``) is what is written."""

from __future__ import annotations

import hmac
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secureml.key_management import InvalidCiphertextError
from secureml.key_management import _envelope as envelope


def load(version: int) -> list[dict[str, Any]]:
    document = json.loads(Path(__file__).with_name(f"envelope_v{version}.json").read_text())
    assert document["format"] == f"secureml v{version}"
    cases: list[dict[str, Any]] = document["cases"]
    for case in cases:
        case["version"] = version
    return cases


CASES = {version: load(version) for version in (1, 2)}
ALL = [*CASES[1], *CASES[2]]


class RejectedError(Exception):
    """The reference reader refuses the message."""


def reference_decrypt(blob: bytes, key: bytes, aad: bytes) -> tuple[dict[str, Any], bytes]:
    """docs/FORMAT.md, versions 1 and 2, implemented from the document alone."""
    magic, version, mode, size, key_version, name_len = struct.unpack(">4sBBIIH", blob[:16])
    assert magic == b"SMLE"
    assert version in {1, 2}
    at = 16 + name_len
    (wrapped_len,) = struct.unpack(">H", blob[at : at + 2])
    at += 2 + wrapped_len
    salt, prefix = blob[at : at + 32], blob[at + 32 : at + 39]
    header = blob[: at + 39]
    if version == 1:
        message_key = HKDF(hashes.SHA256(), 32, salt, header).derive(key)
        body = blob[at + 39 :]
    else:
        okm = HKDF(hashes.SHA256(), 64, salt, header).derive(key)
        message_key, expected = okm[:32], okm[32:]
        commitment, body = blob[at + 39 : at + 71], blob[at + 71 :]
        if len(commitment) != 32 or not hmac.compare_digest(commitment, expected):
            raise RejectedError("the key commitment does not match this key")
    aead = AESGCM(message_key)
    step = size + 16
    segments = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    plaintext = b"".join(
        aead.decrypt(
            prefix + struct.pack(">I", i) + (b"\x01" if i == len(segments) - 1 else b"\x00"),
            segment,
            aad or None,
        )
        for i, segment in enumerate(segments)
    )
    fields = {
        "version": version,
        "mode": mode,
        "segment_bytes": size,
        "key_version": key_version,
        "key_name": blob[16 : 16 + name_len].decode(),
    }
    return fields, plaintext


@pytest.mark.parametrize("case", ALL, ids=[f"v{c['version']}: {c['name']}" for c in ALL])
def test_vectors_decrypt_and_reproduce(case: dict[str, Any]) -> None:
    key, aad = bytes.fromhex(case["key"]), bytes.fromhex(case["aad"])
    blob, plaintext = bytes.fromhex(case["ciphertext"]), bytes.fromhex(case["plaintext"])
    # An independent reader agrees with the document...
    fields, found = reference_decrypt(blob, key, aad)
    assert found == plaintext
    assert fields == {k: case[k] for k in fields}
    # ...and so does the library, both ways: in memory and as a stream...
    header, length = envelope.parse_header(blob)
    assert header.format_version == case["version"]
    assert header.commitment == bytes.fromhex(case.get("commitment", ""))
    assert envelope.decrypt_bytes(key, header, header.encode(), blob[length:], aad) == plaintext
    reader, out = io.BytesIO(blob), io.BytesIO()
    streamed, header_bytes = envelope.read_header(reader)
    assert header_bytes == blob[: len(header.encode())] == header.encode()
    envelope.decrypt_stream(key, streamed, header_bytes, reader, out, aad=aad)
    assert out.getvalue() == plaintext
    # ...and it writes the same bytes again, v1 included when asked for.
    remade = envelope.Header(
        mode=case["mode"],
        key_name=case["key_name"],
        key_version=case["key_version"],
        segment_bytes=case["segment_bytes"],
        wrapped_key=case["wrapped_key"].encode(),
        salt=bytes.fromhex(case["salt"]),
        nonce_prefix=bytes.fromhex(case["nonce_prefix"]),
        format_version=case["version"],
    )
    assert envelope.encrypt_bytes(key, remade, plaintext, aad) == blob


@pytest.mark.parametrize("case", CASES[2], ids=[c["name"] for c in CASES[2]])
def test_v2_vectors_refuse_another_key_before_any_segment(case: dict[str, Any]) -> None:
    blob, aad = bytes.fromhex(case["ciphertext"]), bytes.fromhex(case["aad"])
    other = bytes(32)
    with pytest.raises(RejectedError):
        reference_decrypt(blob, other, aad)
    header, length = envelope.parse_header(blob)
    with pytest.raises(InvalidCiphertextError):
        envelope.decrypt_bytes(other, header, header.encode(), blob[length:], aad)


@pytest.mark.parametrize("version", [1, 2])
def test_the_vectors_cover_the_edges(version: int) -> None:
    cases = CASES[version]
    sizes = {len(bytes.fromhex(c["plaintext"])) for c in cases if c["segment_bytes"] == 64}
    assert {0, 1, 63, 64, 65, 200} <= sizes
    assert {c["mode"] for c in cases} == {1, 2}
    assert any(c["key_version"] == 0 for c in cases)
    assert any(c["aad"] for c in cases)
    assert any(c["wrapped_key"] for c in cases)


def test_the_two_versions_hold_the_same_cases() -> None:
    def strip(case: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in case.items() if k not in {"ciphertext", "commitment", "version"}}

    assert [strip(c) for c in CASES[1]] == [strip(c) for c in CASES[2]]
    for one, two in zip(CASES[1], CASES[2], strict=True):
        v1, v2 = bytes.fromhex(one["ciphertext"]), bytes.fromhex(two["ciphertext"])
        assert (v1[4], v2[4]) == (1, 2)
        assert len(v2) == len(v1) + 32  # the commitment, and nothing else
