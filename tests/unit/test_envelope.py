"""The ciphertext format against every way a message can be broken (docs/FORMAT.md)."""

from __future__ import annotations

import dataclasses
import io
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secureml.key_management import InvalidCiphertextError
from secureml.key_management import _envelope as envelope

KEY = os.urandom(32)
S = 32  # small segments: many of them in few bytes
STEP = S + envelope.TAG_BYTES


def header(**fields: object) -> envelope.Header:
    made = {"mode": envelope.MODE_MANAGED_KEY, "key_name": "k", "key_version": 1}
    made |= {"segment_bytes": S, **fields}
    return envelope.Header(**made)  # type: ignore[arg-type]


def seal(plaintext: bytes, aad: bytes = b"", **fields: object) -> bytes:
    return envelope.encrypt_bytes(KEY, header(**fields), plaintext, aad)


def open_blob(blob: bytes, aad: bytes = b"", key: bytes = KEY) -> bytes:
    parsed, length = envelope.parse_header(blob)
    return envelope.decrypt_bytes(key, parsed, blob[:length], blob[length:], aad)


def open_stream(blob: bytes, aad: bytes = b"") -> bytes:
    reader = io.BytesIO(blob)
    parsed, raw = envelope.read_header(reader)
    out = io.BytesIO()
    envelope.decrypt_stream(KEY, parsed, raw, reader, out, aad=aad)
    return out.getvalue()


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    _, length = envelope.parse_header(blob)
    body = blob[length:]
    return blob[:length], [body[i : i + STEP] for i in range(0, len(body), STEP)]


def rejected(blob: bytes, aad: bytes = b"") -> bool:
    for reader in (open_blob, open_stream):
        try:
            reader(blob, aad)
        except InvalidCiphertextError:
            continue
        return False
    return True


class Trickle(io.RawIOBase):
    """A pipe: short reads of at most 7 bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(7, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class Keeper:
    """A writer that is not a standard stream and keeps what it is given."""

    def __init__(self) -> None:
        self.parts: list[object] = []

    def write(self, data: object) -> int:
        self.parts.append(data)
        return len(data)  # type: ignore[arg-type]

    def value(self) -> bytes:
        return b"".join(bytes(p) for p in self.parts)  # type: ignore[call-overload]


SIZES = [0, 1, S - 1, S, S + 1, 5 * S, 5 * S + 3]


@pytest.mark.parametrize("size", SIZES)
def test_round_trips_in_memory_and_streams(size: int) -> None:
    data = os.urandom(size)
    blob = seal(data, b"aad")
    assert open_blob(blob, b"aad") == data
    assert open_stream(blob, b"aad") == data
    assert len(split(blob)[1]) == max(1, -(-size // S))
    # Streamed encryption writes the same format, through short reads and odd writers.
    for reader in (io.BytesIO(data), Trickle(data), _ReadOnly(data)):
        out = Keeper()
        made = header()
        done = envelope.encrypt_stream(KEY, made, reader, out, aad=b"aad")
        assert done == size
        assert open_blob(out.value(), b"aad") == data


class _ReadOnly:
    """A reader with ``read`` only."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 5))


def test_progress_counts_plaintext() -> None:
    seen: list[int] = []
    envelope.encrypt_stream(
        KEY, header(), io.BytesIO(bytes(70)), io.BytesIO(), aad=b"", progress=seen.append
    )
    assert seen == [32, 64, 70]


def test_truncation_at_every_boundary_and_either_side() -> None:
    blob = seal(os.urandom(4 * S + 5))
    head, segments = split(blob)
    cuts = {len(head) + i * STEP + d for i in range(len(segments) + 1) for d in (-1, 0, 1)}
    for cut in sorted(c for c in cuts if c < len(blob)):
        assert rejected(blob[:cut]), cut


def test_dropped_duplicated_and_reordered_segments() -> None:
    head, segs = split(seal(os.urandom(4 * S + 5)))
    broken = [
        *(segs[:i] + segs[i + 1 :] for i in range(len(segs))),  # drop one
        *(segs[: i + 1] + segs[i:] for i in range(len(segs))),  # duplicate one
        *([*segs[:i], segs[i + 1], segs[i], *segs[i + 2 :]] for i in range(len(segs) - 1)),
        list(reversed(segs)),
    ]
    for segments in broken:
        assert rejected(head + b"".join(segments))


def test_the_last_segment_flag_is_authenticated() -> None:
    made = header()
    head = made.encode()
    cipher = envelope.SegmentCipher(KEY, made, head, b"")
    a, b = os.urandom(S), os.urandom(S)
    good = head + cipher.seal(0, a, last=False) + cipher.seal(1, b, last=True)
    assert open_blob(good) == a + b
    early = head + cipher.seal(0, a, last=True) + cipher.seal(1, b, last=True)  # flag set
    never = head + cipher.seal(0, a, last=False) + cipher.seal(1, b, last=False)  # cleared
    assert rejected(early)
    assert rejected(never)
    assert rejected(head + cipher.seal(0, a, last=False))  # a truncation ends on flag 0


def test_trailing_bytes_and_whole_segments_after_the_last() -> None:
    blob = seal(os.urandom(2 * S + 1))
    for extra in (b"\x00", os.urandom(16), os.urandom(STEP), split(blob)[1][0]):
        assert rejected(blob + extra)


def test_segments_spliced_between_messages() -> None:
    head_a, segs_a = split(seal(os.urandom(3 * S)))
    _, segs_b = split(seal(os.urandom(3 * S)))
    assert rejected(head_a + segs_a[0] + segs_b[1] + segs_a[2])


def test_wrapped_keys_swapped_between_messages() -> None:
    transit = {"mode": envelope.MODE_TRANSIT, "key_name": "t", "key_version": 1}
    one = seal(b"first", wrapped_key=b"vault:v1:one", **transit)
    two = seal(b"second", wrapped_key=b"vault:v1:two", **transit)
    head_one, segs_one = split(one)
    swapped = head_one.replace(b"vault:v1:one", b"vault:v1:two") + b"".join(segs_one)
    assert rejected(swapped)
    assert open_blob(two) == b"second"


def test_wrong_aad_and_wrong_key() -> None:
    blob = seal(b"data", b"right")
    assert rejected(blob, b"wrong")
    assert rejected(blob, b"")
    with pytest.raises(InvalidCiphertextError):
        open_blob(blob, b"right", key=os.urandom(32))


def test_every_header_byte_is_authenticated() -> None:
    blob = seal(os.urandom(S + 3), b"a")
    _, length = envelope.parse_header(blob)
    for at in range(length):
        for bit in (0x01, 0x80):
            edited = bytearray(blob)
            edited[at] ^= bit
            assert rejected(bytes(edited), b"a"), at


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"SMLE",
        b"garbage" * 20,
        os.urandom(200),
        b"SMLE\x02" + bytes(100),  # an unknown format version
        struct.pack(">4sBBIIH", b"SMLE", 1, 1, S, 1, 600) + bytes(700),  # name too long
        struct.pack(">4sBBIIH", b"SMLE", 1, 1, 0, 1, 1) + bytes(100),  # segment size 0
        struct.pack(">4sBBIIH", b"SMLE", 1, 1, 1 << 31, 1, 1) + bytes(100),  # 2 GiB segments
        struct.pack(">4sBBIIH", b"SMLE", 1, 9, S, 1, 1) + bytes(100),  # unknown mode
        struct.pack(">4sBBIIH", b"SMLE", 1, 1, S, 1, 1) + b"k" + b"\x13\x88" + bytes(100),
        struct.pack(">4sBBIIH", b"SMLE", 1, 1, S, 1, 2) + b"\xff\xfe" + bytes(60),  # not UTF-8
    ],
)
def test_malformed_headers_are_refused_before_any_key_is_needed(blob: bytes) -> None:
    with pytest.raises(InvalidCiphertextError):
        envelope.parse_header(blob)
    with pytest.raises(InvalidCiphertextError):
        envelope.read_header(io.BytesIO(blob))


def test_nonces_never_repeat() -> None:
    headers = [header() for _ in range(2000)]
    assert len({h.salt for h in headers}) == 2000  # a fresh message key per message
    assert len({h.nonce_prefix for h in headers}) == 2000
    made = headers[0]
    cipher = envelope.SegmentCipher(KEY, made, made.encode(), b"")
    nonces = {cipher._nonce(i, last) for i in range(1000) for last in (False, True)}
    assert len(nonces) == 2000


def test_the_segment_counter_cannot_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "MAX_SEGMENTS", 3)
    assert open_blob(seal(bytes(3 * S))) == bytes(3 * S)
    with pytest.raises(ValueError, match="2\\*\\*32 segments"):
        seal(bytes(3 * S + 1))
    with pytest.raises(ValueError, match="2\\*\\*32 segments"):
        envelope.encrypt_stream(KEY, header(), io.BytesIO(bytes(4 * S)), io.BytesIO(), aad=b"")


# -- properties: a few thousand cases per CI run -------------------------------------

MUTATIONS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MUTATIONS
@given(data=st.binary(max_size=6 * S), aad=st.binary(max_size=40), size=st.integers(16, 80))
def test_random_round_trips(data: bytes, aad: bytes, size: int) -> None:
    blob = envelope.encrypt_bytes(KEY, header(segment_bytes=size), data, aad)
    assert open_blob(blob, aad) == data
    assert open_stream(blob, aad) == data


@MUTATIONS
@given(data=st.binary(max_size=4 * S), position=st.integers(0), bit=st.integers(0, 7))
def test_random_bit_flips_are_rejected(data: bytes, position: int, bit: int) -> None:
    blob = bytearray(seal(data))
    blob[position % len(blob)] ^= 1 << bit
    assert rejected(bytes(blob))


@MUTATIONS
@given(data=st.binary(max_size=4 * S), cut=st.integers(1), extra=st.binary(min_size=1))
def test_random_truncations_and_extensions_are_rejected(
    data: bytes, cut: int, extra: bytes
) -> None:
    blob = seal(data)
    assert rejected(blob[: len(blob) - 1 - cut % len(blob)])
    assert rejected(blob + extra)


@MUTATIONS
@given(data=st.binary(min_size=2 * S + 1, max_size=6 * S), pick=st.data())
def test_random_segment_swaps_are_rejected(data: bytes, pick: st.DataObject) -> None:
    head, segs = split(seal(data))
    i = pick.draw(st.integers(0, len(segs) - 1))
    j = pick.draw(st.integers(0, len(segs) - 1).filter(lambda x: segs[x] != segs[i]))
    segs[i], segs[j] = segs[j], segs[i]
    assert rejected(head + b"".join(segs))


# -- the per-message key, and one call for small messages -----------------------------


@MUTATIONS
@given(ikm=st.binary(max_size=200), salt=st.binary(max_size=200), info=st.binary(max_size=700))
def test_message_key_matches_cryptography_hkdf(ikm: bytes, salt: bytes, info: bytes) -> None:
    expected = HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)
    assert envelope._message_key(ikm, salt, info) == expected


def test_message_key_with_a_header_as_info() -> None:
    made = header(mode=envelope.MODE_TRANSIT, key_name="é" * 256, wrapped_key=bytes(4096))
    head = made.encode()
    expected = HKDF(hashes.SHA256(), 32, made.salt, head).derive(KEY)
    assert envelope._message_key(KEY, made.salt, head) == expected


def by_the_document(key: bytes, made: envelope.Header, plaintext: bytes, aad: bytes) -> bytes:
    """docs/FORMAT.md with cryptography's HKDF and AES-GCM, segment by segment."""
    head = made.encode()
    aead = AESGCM(HKDF(hashes.SHA256(), 32, made.salt, head).derive(key))
    size = made.segment_bytes
    chunks = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    last = len(chunks) - 1
    nonces = [made.nonce_prefix + struct.pack(">IB", i, i == last) for i in range(last + 1)]
    return head + b"".join(
        aead.encrypt(n, c, aad or None) for n, c in zip(nonces, chunks, strict=True)
    )


@pytest.mark.parametrize(
    ("size", "segment_bytes"),
    [
        (0, envelope.DEFAULT_SEGMENT_BYTES),
        (16, envelope.DEFAULT_SEGMENT_BYTES),
        (envelope.INLINE_BYTES - 1, envelope.DEFAULT_SEGMENT_BYTES),
        (envelope.INLINE_BYTES, envelope.DEFAULT_SEGMENT_BYTES),  # the last one-call size
        (envelope.INLINE_BYTES + 1, envelope.DEFAULT_SEGMENT_BYTES),  # in place, one segment
        (envelope.INLINE_BYTES, envelope.INLINE_BYTES),
        (envelope.INLINE_BYTES + 1, envelope.INLINE_BYTES),  # two segments
        (S, S),
        (S + 1, S),
    ],
)
def test_every_path_writes_the_documented_bytes(size: int, segment_bytes: int) -> None:
    data = os.urandom(size)
    made = header(segment_bytes=segment_bytes)
    for aad in (b"", b"aad"):
        blob = envelope.encrypt_bytes(KEY, made, data, aad)
        assert blob == by_the_document(KEY, made, data, aad)
        assert open_blob(blob, aad) == data
        assert open_stream(blob, aad) == data
        assert rejected(blob, aad + b"x")
        assert rejected(blob[:-1], aad)


@pytest.mark.parametrize("size", [0, 16, 1024, envelope.INLINE_BYTES, envelope.INLINE_BYTES + 1])
def test_encrypt_managed_is_encrypt_bytes_without_the_header_object(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, draw = os.urandom(size), os.urandom(envelope.SALT_BYTES + envelope.PREFIX_BYTES)
    made = envelope.Header(
        mode=envelope.MODE_MANAGED_KEY,
        key_name="datasets/key",
        key_version=7,
        salt=draw[: envelope.SALT_BYTES],
        nonce_prefix=draw[envelope.SALT_BYTES :],
    )
    monkeypatch.setattr(envelope.os, "urandom", lambda n: draw[:n])
    blob = envelope.encrypt_managed(KEY, "datasets/key", 7, data, b"aad")
    assert blob == envelope.encrypt_bytes(KEY, made, data, b"aad")
    assert blob == envelope.encrypt_managed(KEY, "datasets/key", 7, memoryview(data), b"aad")
    monkeypatch.undo()
    assert open_blob(blob, b"aad") == data
    with pytest.raises(ValueError, match="key name"):
        envelope.encrypt_managed(KEY, "", 1, data, b"")
    with pytest.raises(ValueError, match="32 bits"):
        envelope.encrypt_managed(KEY, "k", 1 << 32, data, b"")


def test_headers_are_checked_encoded_once_and_parse_back_equal() -> None:
    made = header(mode=envelope.MODE_TRANSIT, key_name="t", wrapped_key=b"vault:v3:AA")
    head = made.encode()
    assert head[: len(envelope.MAGIC)] == envelope.MAGIC
    assert head.endswith(made.salt + made.nonce_prefix)
    parsed, length = envelope.parse_header(head + b"body")
    assert (parsed, length, parsed.encode()) == (made, len(head), head)
    streamed, raw = envelope.read_header(io.BytesIO(head + b"body"))
    assert (streamed, raw) == (made, head)
    assert hash(parsed) == hash(made)
    assert "salt" not in repr(made)
    assert "nonce_prefix" not in repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.key_version = 2  # type: ignore[misc]
    again = dataclasses.replace(made, key_version=4)
    assert again.encode() == head[:10] + struct.pack(">I", 4) + head[14:]
    assert len({header().salt for _ in range(100)}) == 100  # one draw per header
    given = header(salt=bytes(32))
    assert given.salt == bytes(32)
    assert len(given.nonce_prefix) == envelope.PREFIX_BYTES
    for wrong in ({"salt": bytes(31)}, {"nonce_prefix": bytes(8)}, {"segment_bytes": 15}):
        with pytest.raises(ValueError, match=r"salt|segment_bytes"):
            header(**wrong)
    with pytest.raises(ValueError, match="wrapped key"):
        header(wrapped_key=b"vault:v1:AA")  # managed mode has none
    with pytest.raises(ValueError, match="wrapped key"):
        header(mode=envelope.MODE_TRANSIT)  # Transit mode needs one
