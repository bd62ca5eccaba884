"""`make fuzz`: N random mutations of real ciphertexts; every one must be rejected with
InvalidCiphertextError (any other outcome is a bug and stops the run).

    .venv/bin/python bench/fuzz_envelope.py 100000

Mutations: bit flips, byte edits in the header, bit flips in the key commitment,
truncations, extensions, segment drops, duplications and swaps, splices from another
message, wrong aad, and a wrong key. Messages are format v2 (what secureml writes); one
case in 10 is a format v1 message, which must keep failing closed as long as v1 is read.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter

from secureml.key_management import InvalidCiphertextError
from secureml.key_management import _envelope as envelope

KEY = os.urandom(32)
SEGMENT = 64
# One case in 20 straddles the one-call limit for small messages: segments just below, at
# and above it, and messages around one and two segments long.
INLINE = envelope.INLINE_BYTES
LARGE_SEGMENTS = (INLINE - 1, INLINE, INLINE + 1)


OTHER_KEY = os.urandom(32)


def seal(data: bytes, aad: bytes, segment: int = SEGMENT, version: int = 2) -> bytes:
    made = envelope.Header(
        mode=envelope.MODE_MANAGED_KEY,
        key_name="k",
        key_version=1,
        segment_bytes=segment,
        format_version=version,
    )
    return envelope.encrypt_bytes(KEY, made, data, aad)


def opened(blob: bytes, aad: bytes, key: bytes = KEY) -> bool:
    try:
        header, length = envelope.parse_header(blob)
        envelope.decrypt_bytes(key, header, header.encode(), blob[length:], aad)
    except InvalidCiphertextError:
        return False
    return True


def mutate(rng: random.Random, blob: bytes, other: bytes) -> tuple[str, bytes]:
    header, length = envelope.parse_header(blob)
    head, body = blob[:length], blob[length:]
    step = header.segment_bytes + envelope.TAG_BYTES
    segments = [body[i : i + step] for i in range(0, len(body), step)]
    kinds = ["flip", "header", "truncate", "extend", "drop", "dup", "swap", "splice"]
    if header.commitment:
        kinds.append("commitment")
    kind = rng.choice(kinds)
    if kind in ("flip", "commitment"):  # anywhere, or in the commitment only
        commitment = len(header.encode()) + rng.randrange(len(header.commitment) or 1)
        at = rng.randrange(len(blob)) if kind == "flip" else commitment
        return kind, blob[:at] + bytes([blob[at] ^ (1 << rng.randrange(8))]) + blob[at + 1 :]
    if kind == "header":
        at = rng.randrange(length)
        value = rng.choice([b for b in range(256) if b != blob[at]])
        return kind, blob[:at] + bytes([value]) + blob[at + 1 :]
    if kind == "truncate":
        return kind, blob[: rng.randrange(len(blob))]
    if kind == "extend":
        return kind, blob + os.urandom(rng.randint(1, 2 * step))
    if len(segments) < 2 and kind in ("drop", "swap"):
        kind = "dup"
    if kind == "drop":
        segments.pop(rng.randrange(len(segments)))
    elif kind == "dup":
        i = rng.randrange(len(segments))
        segments.insert(i, segments[i])
    elif kind == "swap":
        i, j = rng.sample(range(len(segments)), 2)
        if segments[i] == segments[j]:
            return "flip", blob[:-1] + bytes([blob[-1] ^ 1])
        segments[i], segments[j] = segments[j], segments[i]
    else:  # splice a segment of another message in
        _, other_length = envelope.parse_header(other)
        donor = other[other_length:][:step]
        segments[rng.randrange(len(segments))] = donor
    return kind, head + b"".join(segments)


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 100_000
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    kinds: Counter[str] = Counter()
    started = time.perf_counter()
    for i in range(count):
        segment = SEGMENT
        if i % 20 == 7:
            segment = rng.choice(LARGE_SEGMENTS)
            size = rng.choice((segment - 1, segment, segment + 1, 2 * segment + 1, INLINE))
        else:
            size = rng.randint(0, 5 * SEGMENT)
        data = os.urandom(size)
        aad = os.urandom(rng.randint(0, 8))
        version = 1 if i % 10 == 3 else 2
        blob, other = seal(data, aad, segment, version), seal(data, aad, segment, version)
        if i % 10 == 0:  # a wrong aad
            kinds["aad"] += 1
            if opened(blob, aad + b"!"):
                print(f"BUG: a wrong aad was accepted (case {i})")
                return 1
            continue
        if i % 10 == 5:  # a wrong key
            kinds["key"] += 1
            if opened(blob, aad, OTHER_KEY):
                print(f"BUG: a wrong key was accepted (case {i})")
                return 1
            continue
        kind, broken = mutate(rng, blob, other)
        kinds[kind if version == 2 else f"v1 {kind}"] += 1
        if opened(broken, aad):
            print(f"BUG: a {kind} mutation was accepted (case {i})")
            return 1
    took = time.perf_counter() - started
    print(f"{count:,} mutations rejected in {took:.0f} s: {dict(sorted(kinds.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
