"""Column encryption (issue 13): secureml.columns side by side with the raw primitives
and Tink, in cells per second on one core.

Each group times secureml and its peers in interleaved rounds (the machines are noisy)
and prints medians and the ratio against the group's peer, with the issue's target:

- deterministic vs Tink's deterministic AEAD (AES256_SIV): >= 0.9x; cryptography's
  AESSIV per cell shown too. Distinct values, then a low-cardinality column (20,000
  distinct in 200,000), which secureml encrypts once per distinct value.
- tokenize vs raw HMAC-SHA256 (cryptography, keyed state copied per cell): >= 0.8x.
- randomized vs raw AES-GCM with a bound key (counter nonce): >= 0.7x.

Raw peers get bytes (no UTF-8 encoding); secureml gets a list of str or a pyarrow
string array. The key is an environment key (declared), so no server is involved.

    .venv/bin/python bench/columns.py            # ~3 minutes on 2 cores
    .venv/bin/python bench/columns.py --quick    # fewer cells and rounds (~40 s)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import platform
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pyarrow as pa
from _timing import interleaved
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from secureml.key_management import KeyManager

Row = tuple[str, Callable[[], object]]


def _tink_daead(key: bytes) -> Any | None:
    """Tink's deterministic AEAD over a 64-byte key (key id 1), or None without tink."""
    try:
        from tink import cleartext_keyset_handle, daead
        from tink.proto import aes_siv_pb2, tink_pb2
    except ImportError:
        return None
    daead.register()
    keyset = tink_pb2.Keyset(primary_key_id=1)
    entry = keyset.key.add()
    entry.key_data.type_url = "type.googleapis.com/google.crypto.tink.AesSivKey"
    entry.key_data.value = aes_siv_pb2.AesSivKey(version=0, key_value=key).SerializeToString()
    entry.key_data.key_material_type = tink_pb2.KeyData.SYMMETRIC
    entry.status = tink_pb2.ENABLED
    entry.key_id = 1
    entry.output_prefix_type = tink_pb2.TINK
    return cleartext_keyset_handle.from_keyset(keyset).primitive(daead.DeterministicAead)


def group(
    title: str, cells: int, rows: list[Row], *, peer: str, target: float | None, rounds: int
) -> None:
    medians = interleaved({name: (call, 1) for name, call in rows}, rounds=rounds)
    base = medians[peer]
    print(f"\n{title} ({cells:,} cells)")
    print(f"  {'':44s} {'k cells/s':>10s} {'vs peer':>8s}  target")
    for name, _ in rows:
        rate = cells / (medians[name] / 1e6) / 1e3
        ratio = base / medians[name]
        mark = ""
        if name.startswith("secureml") and target is not None:
            mark = f">= {target:.1f}x " + ("ok" if ratio >= target else "MISSED")
        peer_mark = " (peer)" if name == peer else ""
        print(f"  {name + peer_mark:44s} {rate:10,.0f} {ratio:7.2f}x  {mark}")


def main() -> int:  # noqa: PLR0915 - one table, group after group
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cells and rounds")
    args = parser.parse_args()
    n = 40_000 if args.quick else 200_000
    rounds = 5 if args.quick else 9

    os.environ["SECUREML_BENCH_KEY"] = "hex:" + os.urandom(32).hex()
    km = KeyManager(declared_keys=["bench_key"])
    emails = [f"user{i:08d}@example.com" for i in range(n)]
    raw = [e.encode() for e in emails]
    arrow = pa.array(emails)
    low = [f"customer{i % 20_000:05d}@example.com" for i in range(n)]
    low_raw = [v.encode() for v in low]
    low_arrow = pa.array(low)

    det = km.column_cipher("bench_key", column="email")
    tok = km.column_cipher("bench_key", "tokenize", column="email")
    rnd = km.column_cipher("bench_key", "randomized", column="email")

    k64, k32 = os.urandom(64), os.urandom(32)
    siv, ad, ads, head = AESSIV(k64), b"email", [b"email"], b"\x01\x00\x00\x00\x01"
    tink = _tink_daead(k64)

    print(
        f"secureml.columns, one core: Python {platform.python_version()}, cryptography "
        f"{version('cryptography')}, pyarrow {pa.__version__}"
        + (f", tink {version('tink')}" if tink is not None else ", tink not installed")
    )

    def deterministic_rows(values: list[str], raw_values: list[bytes], array: Any) -> list[Row]:
        enc = siv.encrypt
        rows: list[Row] = []
        if tink is not None:
            t_enc = tink.encrypt_deterministically
            rows.append(
                ("Tink DAEAD encrypt_deterministically", lambda: [t_enc(v, ad) for v in raw_values])
            )
        rows += [
            ("cryptography AESSIV per cell", lambda: [head + enc(v, ads) for v in raw_values]),
            ("secureml list[str]", lambda: det.encrypt(values)),
            ("secureml pyarrow string array", lambda: det.encrypt(array)),
        ]
        return rows

    peer = "Tink DAEAD encrypt_deterministically" if tink else "cryptography AESSIV per cell"
    group(
        "deterministic encrypt, distinct values",
        n,
        deterministic_rows(emails, raw, arrow),
        peer=peer,
        target=0.9,
        rounds=rounds,
    )
    group(
        "deterministic encrypt, 20,000 distinct values",
        n,
        deterministic_rows(low, low_raw, low_arrow),
        peer=peer,
        target=0.9,
        rounds=rounds,
    )

    cells = det.encrypt(raw)
    cells_arrow = pa.array(cells, pa.binary())
    tink_cells = [tink.encrypt_deterministically(v, ad) for v in raw] if tink else []
    siv_cells = [siv.encrypt(v, ads) for v in raw]
    dec = siv.decrypt
    rows: list[Row] = []
    if tink is not None:
        t_dec = tink.decrypt_deterministically
        rows.append(
            ("Tink DAEAD decrypt_deterministically", lambda: [t_dec(c, ad) for c in tink_cells])
        )
    rows += [
        ("cryptography AESSIV decrypt per cell", lambda: [dec(c, ads) for c in siv_cells]),
        ("secureml list (bytes out)", lambda: det.decrypt(cells)),
        ("secureml pyarrow (string out)", lambda: det.decrypt(cells_arrow, text=True)),
    ]
    peer = (
        "Tink DAEAD decrypt_deterministically" if tink else "cryptography AESSIV decrypt per cell"
    )
    group("deterministic decrypt, distinct values", n, rows, peer=peer, target=0.9, rounds=rounds)

    state = crypto_hmac.HMAC(k32, hashes.SHA256())
    state.update(b"\x00\x00\x00\x05email")

    def copied_hmac() -> list[bytes]:
        out = []
        for v in raw:
            h = state.copy()
            h.update(v)
            out.append(h.finalize())
        return out

    group(
        "tokenize, distinct values",
        n,
        [
            ("raw HMAC-SHA256 (cryptography, copied state)", copied_hmac),
            ("stdlib hmac.digest", lambda: [hmac.digest(k32, v, hashlib.sha256) for v in raw]),
            ("secureml list[str]", lambda: tok.encrypt(emails)),
            ("secureml pyarrow string array", lambda: tok.encrypt(arrow)),
        ],
        peer="raw HMAC-SHA256 (cryptography, copied state)",
        target=0.8,
        rounds=rounds,
    )

    gcm = AESGCM(k32)
    g_enc, g_dec = gcm.encrypt, gcm.decrypt
    nonces = [i.to_bytes(12, "big") for i in range(n)]
    # What a raw user stores: nonce || ciphertext || tag, sliced apart to decrypt.
    gcm_cells = [nonce + g_enc(nonce, v, ad) for nonce, v in zip(nonces, raw, strict=True)]
    group(
        "randomized encrypt, distinct values",
        n,
        [
            (
                "raw AESGCM, bound key, counter nonce",
                lambda: [
                    (no := i.to_bytes(12, "big")) + g_enc(no, v, ad) for i, v in enumerate(raw)
                ],
            ),
            (
                "raw AESGCM, bound key, random nonce",
                lambda: [g_enc(os.urandom(12), v, ad) for v in raw],
            ),
            ("secureml list[str]", lambda: rnd.encrypt(emails)),
            ("secureml pyarrow string array", lambda: rnd.encrypt(arrow)),
        ],
        peer="raw AESGCM, bound key, counter nonce",
        target=0.7,
        rounds=rounds,
    )
    r_cells = rnd.encrypt(raw)
    r_arrow = pa.array(r_cells, pa.binary())
    group(
        "randomized decrypt, distinct values",
        n,
        [
            (
                "raw AESGCM decrypt (nonce || ct cells), bound key",
                lambda: [g_dec(c[:12], c[12:], ad) for c in gcm_cells],
            ),
            ("secureml list (bytes out)", lambda: rnd.decrypt(r_cells)),
            ("secureml pyarrow (string out)", lambda: rnd.decrypt(r_arrow, text=True)),
        ],
        peer="raw AESGCM decrypt (nonce || ct cells), bound key",
        target=0.7,
        rounds=rounds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
