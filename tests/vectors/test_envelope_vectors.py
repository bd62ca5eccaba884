"""Known answers for the ciphertext format (docs/FORMAT.md): the committed vectors must
decrypt byte-exactly forever, with the library and with an independent reading of the
document written here from scratch."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secureml.key_management import _envelope as envelope

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("envelope_v1.json")).read_text()
)["cases"]


def reference_decrypt(blob: bytes, key: bytes, aad: bytes) -> tuple[dict[str, Any], bytes]:
    """docs/FORMAT.md, implemented from the document alone."""
    magic, version, mode, size, key_version, name_len = struct.unpack(">4sBBIIH", blob[:16])
    assert (magic, version) == (b"SMLE", 1)
    at = 16 + name_len
    (wrapped_len,) = struct.unpack(">H", blob[at : at + 2])
    at += 2 + wrapped_len
    salt, prefix = blob[at : at + 32], blob[at + 32 : at + 39]
    header, body = blob[: at + 39], blob[at + 39 :]
    message_key = HKDF(hashes.SHA256(), 32, salt, header).derive(key)
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
        "mode": mode,
        "segment_bytes": size,
        "key_version": key_version,
        "key_name": blob[16 : 16 + name_len].decode(),
    }
    return fields, plaintext


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vectors_decrypt_and_reproduce(case: dict[str, Any]) -> None:
    key, aad = bytes.fromhex(case["key"]), bytes.fromhex(case["aad"])
    blob, plaintext = bytes.fromhex(case["ciphertext"]), bytes.fromhex(case["plaintext"])
    # An independent reader agrees with the document...
    fields, found = reference_decrypt(blob, key, aad)
    assert found == plaintext
    assert fields == {k: case[k] for k in fields}
    # ...and so does the library, both ways.
    header, length = envelope.parse_header(blob)
    assert envelope.decrypt_bytes(key, header, blob[:length], blob[length:], aad) == plaintext
    remade = envelope.Header(
        mode=case["mode"],
        key_name=case["key_name"],
        key_version=case["key_version"],
        segment_bytes=case["segment_bytes"],
        wrapped_key=case["wrapped_key"].encode(),
        salt=bytes.fromhex(case["salt"]),
        nonce_prefix=bytes.fromhex(case["nonce_prefix"]),
    )
    assert envelope.encrypt_bytes(key, remade, plaintext, aad) == blob


def test_the_vectors_cover_the_edges() -> None:
    sizes = {len(bytes.fromhex(c["plaintext"])) for c in CASES if c["segment_bytes"] == 64}
    assert {0, 1, 63, 64, 65, 200} <= sizes
    assert {c["mode"] for c in CASES} == {1, 2}
    assert any(c["key_version"] == 0 for c in CASES)
