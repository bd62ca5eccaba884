"""Made ``envelope_v1.json`` once; kept to show how. Never re-run it to "fix" a failing
test: the committed vectors are the format, and every future version must decrypt them."""

from __future__ import annotations

import json
from pathlib import Path

from secureml.key_management import _envelope as envelope

KEY = bytes(range(32))
SALT = bytes(range(100, 132))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")


def case(name: str, plaintext: bytes, aad: bytes = b"", **header: object) -> dict[str, object]:
    fields = {"mode": envelope.MODE_MANAGED_KEY, "key_name": "master_key", "key_version": 1}
    fields |= {"segment_bytes": 64, **header}
    made = envelope.Header(salt=SALT, nonce_prefix=PREFIX, **fields)  # type: ignore[arg-type]
    blob = envelope.encrypt_bytes(KEY, made, plaintext, aad)
    return {
        "name": name,
        "key": KEY.hex(),
        "mode": made.mode,
        "key_name": made.key_name,
        "key_version": made.key_version,
        "segment_bytes": made.segment_bytes,
        "wrapped_key": made.wrapped_key.decode("ascii"),
        "salt": SALT.hex(),
        "nonce_prefix": PREFIX.hex(),
        "aad": aad.hex(),
        "plaintext": plaintext.hex(),
        "ciphertext": blob.hex(),
    }


def main() -> None:
    data = bytes(i % 251 for i in range(300))
    cases = [
        case("empty", b""),
        case("one byte, aad", data[:1], aad=b"dataset=2025"),
        case("one byte short of a segment", data[:63]),
        case("exactly one segment", data[:64]),
        case("one byte past a segment", data[:65]),
        case("several segments, aad", data[:200], aad=b"\x00\xff"),
        case("unversioned source", data[:10], key_version=0),
        case("1 MiB segments", data, segment_bytes=1 << 20, key_name="models/weights"),
        case(
            "Transit data key",
            data[:70],
            mode=envelope.MODE_TRANSIT,
            key_name="features",
            key_version=3,
            wrapped_key=b"vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
    ]
    out = Path(__file__).with_name("envelope_v1.json")
    out.write_text(json.dumps({"format": "secureml v1", "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
