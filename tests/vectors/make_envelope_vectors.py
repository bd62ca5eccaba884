"""Made ``envelope_v1.json`` and ``envelope_v2.json`` once each; kept to show how. Never
re-run it to "fix" a failing test: the committed vectors are the format, and every
future version must decrypt them. (Run with ``--check``, it writes nothing and says
whether the library still makes the committed bytes.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from secureml.key_management import _envelope as envelope

KEY = bytes(range(32))
SALT = bytes(range(100, 132))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")


def case(
    version: int, name: str, plaintext: bytes, aad: bytes = b"", **header: object
) -> dict[str, object]:
    fields = {"mode": envelope.MODE_MANAGED_KEY, "key_name": "master_key", "key_version": 1}
    fields |= {"segment_bytes": 64, **header}
    made = envelope.Header(salt=SALT, nonce_prefix=PREFIX, format_version=version, **fields)  # type: ignore[arg-type]
    blob = envelope.encrypt_bytes(KEY, made, plaintext, aad)
    out: dict[str, object] = {
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
    if version != 1:  # v1's file predates the field: it stays byte-for-byte as committed
        head = made.encode()
        out["commitment"] = blob[len(head) : len(head) + envelope.COMMITMENT_BYTES].hex()
    return out


def vectors(version: int) -> str:
    data = bytes(i % 251 for i in range(300))
    cases = [
        case(version, "empty", b""),
        case(version, "one byte, aad", data[:1], aad=b"dataset=2025"),
        case(version, "one byte short of a segment", data[:63]),
        case(version, "exactly one segment", data[:64]),
        case(version, "one byte past a segment", data[:65]),
        case(version, "several segments, aad", data[:200], aad=b"\x00\xff"),
        case(version, "unversioned source", data[:10], key_version=0),
        case(version, "1 MiB segments", data, segment_bytes=1 << 20, key_name="models/weights"),
        case(
            version,
            "Transit data key",
            data[:70],
            mode=envelope.MODE_TRANSIT,
            key_name="features",
            key_version=3,
            wrapped_key=b"vault:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
    ]
    return json.dumps({"format": f"secureml v{version}", "cases": cases}, indent=1) + "\n"


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    same = True
    for version in (1, 2):
        out = Path(__file__).with_name(f"envelope_v{version}.json")
        text = vectors(version)
        if check:
            matches = out.exists() and out.read_text() == text
            print(f"{out.name}: {'the library makes these bytes' if matches else 'DIFFERS'}")
            same = same and matches
        else:
            out.write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
