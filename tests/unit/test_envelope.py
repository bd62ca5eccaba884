"""The ciphertext format against every way a message can be broken (docs/FORMAT.md):
format v2 (key-committing) as written, and v1 as it is still read."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
from typing import Any

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
    return envelope.decrypt_bytes(key, parsed, parsed.encode(), blob[length:], aad)


def open_stream(blob: bytes, aad: bytes = b"", key: bytes = KEY) -> bytes:
    reader = io.BytesIO(blob)
    parsed, raw = envelope.read_header(reader)
    out = io.BytesIO()
    envelope.decrypt_stream(key, parsed, raw, reader, out, aad=aad)
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
    cipher = envelope.SegmentCipher(KEY, made, made.encode(), b"")
    head = made.encode() + cipher.commitment
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
        b"SMLE\x03" + bytes(100),  # an unknown format version
        b"SMLE\x00" + bytes(100),
        struct.pack(">4sBBIIH", b"SMLE", 3, 1, S, 1, 1) + b"k" + bytes(100),
        struct.pack(">4sBBIIH", b"SMLE", 2, 1, S, 1, 1) + b"k" + bytes(2 + 39),  # no commitment
        struct.pack(">4sBBIIH", b"SMLE", 2, 1, S, 1, 1) + b"k" + bytes(2 + 39 + 31),  # cut in it
        struct.pack(">4sBBIIH", b"SMLE", 2, 9, S, 1, 1) + bytes(200),  # v2, unknown mode
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
    """docs/FORMAT.md (v2) with cryptography's HKDF and AES-GCM, segment by segment."""
    head = made.encode()
    okm = HKDF(hashes.SHA256(), 64, made.salt, head).derive(key)
    aead = AESGCM(okm[:32])
    size = made.segment_bytes
    chunks = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    last = len(chunks) - 1
    nonces = [made.nonce_prefix + struct.pack(">IB", i, i == last) for i in range(last + 1)]
    return (
        head
        + okm[32:]
        + b"".join(aead.encrypt(n, c, aad or None) for n, c in zip(nonces, chunks, strict=True))
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
    assert head[len(envelope.MAGIC)] == made.format_version == envelope.FORMAT_VERSION == 2
    assert head.endswith(made.salt + made.nonce_prefix)
    assert made.commitment == b""  # made, not parsed: the writer computes it
    commitment = envelope.SegmentCipher(KEY, made, head, b"").commitment
    parsed, length = envelope.parse_header(head + commitment + b"body")
    assert (parsed, length, parsed.encode()) == (made, len(head) + 32, head)
    assert parsed.commitment == commitment
    reader = io.BytesIO(head + commitment + b"body")
    streamed, raw = envelope.read_header(reader)
    assert (streamed, raw, streamed.commitment) == (made, head, commitment)
    assert reader.read() == b"body"  # the stream is left at the first segment
    assert hash(parsed) == hash(made)
    for hidden in ("salt", "nonce_prefix", "commitment"):
        assert hidden not in repr(made)
        assert hidden not in repr(parsed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.key_version = 2  # type: ignore[misc]
    again = dataclasses.replace(made, key_version=4)
    assert again.encode() == head[:10] + struct.pack(">I", 4) + head[14:]
    old = dataclasses.replace(parsed, format_version=1)  # a replaced header is a made one
    assert (old.format_version, old.commitment) == (1, b"")
    assert old.encode() == head[:4] + b"\x01" + head[5:]
    assert old != made
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


# -- format v2: key commitment ---------------------------------------------------------


def test_writers_write_v2_with_the_documented_commitment() -> None:
    made = header()
    head = made.encode()
    okm = HKDF(hashes.SHA256(), 64, made.salt, head).derive(KEY)
    cipher = envelope.SegmentCipher(KEY, made, head, b"")
    assert cipher.commitment == okm[32:]
    assert envelope._keys(KEY, made.salt, head, 2) == (okm[:32], okm[32:])
    stream = io.BytesIO()
    envelope.encrypt_stream(KEY, made, io.BytesIO(b"x" * (3 * S)), stream, aad=b"")
    blobs = {
        "encrypt_bytes, one call": envelope.encrypt_bytes(KEY, made, b"x", b""),
        "encrypt_bytes, in place": envelope.encrypt_bytes(KEY, made, b"x" * (3 * S), b""),
        "encrypt_stream": stream.getvalue(),
    }
    for how, blob in blobs.items():
        assert blob[4] == 2, how
        assert blob[: len(head) + 32] == head + okm[32:], how
    managed = envelope.encrypt_managed(KEY, "k", 1, b"x", b"")
    assert managed[4] == 2
    parsed, length = envelope.parse_header(managed)
    assert parsed.format_version == 2
    assert len(parsed.commitment) == envelope.COMMITMENT_BYTES
    assert length == len(parsed.encode()) + 32


@pytest.mark.parametrize("size", [0, 5, S, 3 * S + 1])
def test_v1_messages_can_still_be_built_and_always_decrypt(size: int) -> None:
    data = os.urandom(size)
    old = header(format_version=1)
    blob = envelope.encrypt_bytes(KEY, old, data, b"aad")
    head = old.encode()
    aead = AESGCM(HKDF(hashes.SHA256(), 32, old.salt, head).derive(KEY))  # v1: K only
    assert blob[4] == 1
    assert blob[len(head) : len(head) + 16 + min(size, S)] == aead.encrypt(
        old.nonce_prefix + struct.pack(">IB", 0, size <= S), data[:S], b"aad"
    )
    parsed, length = envelope.parse_header(blob)
    assert (parsed.format_version, parsed.commitment, length) == (1, b"", len(head))
    assert open_blob(blob, b"aad") == data
    assert open_stream(blob, b"aad") == data
    assert rejected(blob, b"other")
    stream = io.BytesIO()
    envelope.encrypt_stream(KEY, old, io.BytesIO(data), stream, aad=b"aad")
    assert stream.getvalue() == blob
    # The same fields in v2 make another message key: the version byte is HKDF info.
    new = dataclasses.replace(old, format_version=2)
    assert envelope._keys(KEY, new.salt, new.encode(), 2)[0] != envelope._message_key(
        KEY, old.salt, head
    )
    # A v1 header is not a v2 one with its commitment cut off, nor the reverse.
    v2 = envelope.encrypt_bytes(KEY, new, data, b"aad")
    assert rejected(head + v2[len(head) + 32 :], b"aad")
    assert rejected(v2[: len(head)] + blob[len(head) :], b"aad")


def test_encrypt_managed_writes_v1_only_when_asked() -> None:
    blob = envelope.encrypt_managed(KEY, "k", 1, b"data", b"", format_version=1)
    assert blob[4] == 1
    assert open_blob(blob) == b"data"
    big = envelope.encrypt_managed(
        KEY, "k", 1, bytes(envelope.INLINE_BYTES + 1), b"", format_version=1
    )
    assert big[4] == 1
    assert open_blob(big) == bytes(envelope.INLINE_BYTES + 1)


@pytest.mark.parametrize("version", [0, 3, 255, True, 2.0])
def test_unknown_format_versions_are_refused_when_writing(version: object) -> None:
    with pytest.raises(ValueError, match="format_version"):
        header(format_version=version)
    with pytest.raises(ValueError, match="format_version"):
        envelope.encrypt_managed(KEY, "k", 1, b"x", b"", format_version=version)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, S, 3 * S + 1, envelope.INLINE_BYTES + 1])
def test_every_commitment_bit_is_checked(size: int) -> None:
    segment = envelope.INLINE_BYTES if size > 3 * S + 1 else S
    blob = seal(os.urandom(size), b"a", segment_bytes=segment)
    parsed, length = envelope.parse_header(blob)
    start = len(parsed.encode())
    assert length == start + 32
    bits = range(256) if size <= S else range(0, 256, 17)
    for bit in bits:
        edited = bytearray(blob)
        edited[start + bit // 8] ^= 1 << (bit % 8)
        assert rejected(bytes(edited), b"a"), bit


def test_truncation_inside_the_commitment_is_the_same_error() -> None:
    blob = seal(b"data")
    start = len(envelope.parse_header(blob)[0].encode())
    for cut in range(start, start + 32):
        with pytest.raises(InvalidCiphertextError) as parsed:
            envelope.parse_header(blob[:cut])
        with pytest.raises(InvalidCiphertextError) as streamed:
            envelope.read_header(io.BytesIO(blob[:cut]))
        assert str(parsed.value) == str(streamed.value) == envelope.OPAQUE
        assert rejected(blob[:cut])
    # At start + 32 the header parses: an empty body then has no room for a tag.
    assert envelope.parse_header(blob[: start + 32])[1] == start + 32


def test_a_v2_header_without_a_commitment_opens_nothing() -> None:
    made = header()
    head = made.encode()
    blob = envelope.encrypt_bytes(KEY, made, b"data" * 20, b"")
    body = blob[len(head) + 32 :]
    assert made.commitment == b""  # as a made header is: nothing to check against
    with pytest.raises(InvalidCiphertextError):
        envelope.decrypt_bytes(KEY, made, head, body, b"")
    with pytest.raises(InvalidCiphertextError):
        envelope.decrypt_stream(KEY, made, head, io.BytesIO(body), io.BytesIO(), aad=b"")
    cipher = envelope.SegmentCipher(KEY, made, head, b"")
    with pytest.raises(InvalidCiphertextError):
        next(envelope.open_segments(cipher, made, io.BytesIO(body)))
    small = envelope.encrypt_bytes(KEY, made, b"x", b"")
    with pytest.raises(InvalidCiphertextError):
        envelope.decrypt_bytes(KEY, made, head, small[len(head) + 32 :], b"")


class Recording(io.RawIOBase):
    """A stream that records every read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.reads.append(len(chunk))
        return len(chunk)


class NoAESGCM:
    """Stands in for AESGCM where no AES-GCM key may even be set up."""

    def __init__(self, key: bytes) -> None:
        raise AssertionError("an AES-GCM key was set up before the commitment was checked")


@pytest.mark.parametrize("wrong", ["commitment", "key"])
def test_the_commitment_is_checked_before_any_segment_is_read_or_opened(
    wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = header()
    head = made.encode()
    commitment = envelope.SegmentCipher(KEY, made, head, b"").commitment
    if wrong == "commitment":
        commitment = bytes([commitment[0] ^ 1]) + commitment[1:]
    key = os.urandom(32) if wrong == "key" else KEY
    garbage = os.urandom(4 * STEP)  # segments that would fail anyway: never reached
    blob = head + commitment + garbage
    reader = Recording(blob)
    parsed, raw = envelope.read_header(reader)
    assert sum(reader.reads) == len(head) + 32  # the header read the commitment too
    before = list(reader.reads)
    with pytest.raises(InvalidCiphertextError):
        envelope.decrypt_stream(key, parsed, raw, reader, io.BytesIO(), aad=b"")
    with pytest.raises(InvalidCiphertextError):
        envelope.SegmentCipher(key, parsed, raw, b"")  # so open_segments never starts
    assert reader.reads == before  # not one byte of a segment was read
    # In memory, neither path sets up an AES-GCM key before the commitment matches.
    monkeypatch.setattr(envelope, "_aead", (NoAESGCM, envelope._load_aead()[1]))
    for body in (garbage[:STEP], garbage):  # one call, and segment by segment
        with pytest.raises(InvalidCiphertextError):
            envelope.decrypt_bytes(key, parsed, raw, body, b"")


# -- the v1 two-key collision (FIELD-NOTES section 6), and why v2 refuses it ----------

_R = 0xE1 << 120  # GCM's reduction polynomial, in its reflected bit order


def _gf_mul(x: int, y: int) -> int:
    """Multiplication in GF(2^128) as GCM defines it (NIST SP 800-38D, Algorithm 1)."""
    z, v = 0, x
    for i in range(127, -1, -1):
        if (y >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_inverse(x: int) -> int:
    """x^(2^128 - 2): the inverse of a non-zero element."""
    result, power, exponent = 1 << 127, x, (1 << 128) - 2  # 1 << 127 is GCM's one
    while exponent:
        if exponent & 1:
            result = _gf_mul(result, power)
        power = _gf_mul(power, power)
        exponent >>= 1
    return result


def _block(aes_key: bytes, data: bytes) -> int:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    # One raw block cipher call: GHASH's H and the tag mask, as GCM itself computes them.
    encryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()  # noqa: S305
    return int.from_bytes(encryptor.update(data) + encryptor.finalize(), "big")


def two_key_segment(k1: bytes, k2: bytes, nonce: bytes, first_block: bytes) -> bytes:
    """A 32-byte AES-GCM ciphertext and tag (no aad) that authenticate under both ``k1``
    and ``k2`` (the "invisible salamanders" construction): the first ciphertext block
    decrypts to ``first_block`` under ``k1``, the second is solved so the tags agree."""
    h1, h2 = _block(k1, bytes(16)), _block(k2, bytes(16))
    e1, e2 = (_block(k, nonce + b"\0\0\0\1") for k in (k1, k2))  # E_K(J0)
    c1 = int.from_bytes(first_block, "big") ^ _block(k1, nonce + b"\0\0\0\2")
    length = 32 * 8  # the length block: no aad, 256 bits of ciphertext

    def cube(h: int) -> int:
        return _gf_mul(_gf_mul(h, h), h)

    # tag = c1·H^3 + c2·H^2 + length·H + E_K(J0): equal under both keys when
    # c2·(H1 + H2)^2 = c1·(H1^3 + H2^3) + length·(H1 + H2) + E1 + E2.
    rhs = _gf_mul(c1, cube(h1) ^ cube(h2)) ^ _gf_mul(length, h1 ^ h2) ^ e1 ^ e2
    c2 = _gf_mul(rhs, _gf_inverse(_gf_mul(h1 ^ h2, h1 ^ h2)))
    y = 0
    for block in (c1, c2, length):
        y = _gf_mul(y ^ block, h1)
    tag = y ^ e1
    return c1.to_bytes(16, "big") + c2.to_bytes(16, "big") + tag.to_bytes(16, "big")


def test_gf_arithmetic_agrees_with_aes_gcm() -> None:
    k1, k2, nonce = os.urandom(32), os.urandom(32), os.urandom(12)
    segment = two_key_segment(k1, k2, nonce, b"A" * 16)
    assert AESGCM(k1).decrypt(nonce, segment, None)[:16] == b"A" * 16
    assert AESGCM(k2).decrypt(nonce, segment, None) != AESGCM(k1).decrypt(nonce, segment, None)
    x = int.from_bytes(os.urandom(16), "big") | 1
    assert _gf_mul(x, _gf_inverse(x)) == 1 << 127


MATERIAL_A, MATERIAL_B = b"A" * 32, b"B" * 32  # one key name, two materials


def test_v1_is_not_key_committing_one_blob_opens_under_two_keys() -> None:
    """FIELD-NOTES section 6: the regression v2 exists for."""
    made = header(format_version=1, key_name="shared/key", key_version=0)
    head = made.encode()
    k1 = envelope._message_key(MATERIAL_A, made.salt, head)
    k2 = envelope._message_key(MATERIAL_B, made.salt, head)
    nonce = made.nonce_prefix + struct.pack(">IB", 0, 1)  # the only segment
    blob = head + two_key_segment(k1, k2, nonce, b"transfer $10 to ")
    under_a, under_b = open_blob(blob, key=MATERIAL_A), open_blob(blob, key=MATERIAL_B)
    assert under_a.startswith(b"transfer $10 to ")
    assert under_a != under_b  # both authenticate, to different plaintexts
    assert open_stream(blob, key=MATERIAL_A) == under_a
    assert open_stream(blob, key=MATERIAL_B) == under_b


def test_v2_refuses_the_two_key_collision() -> None:
    made = header(key_name="shared/key", key_version=0)
    head = made.encode()
    k1, c1 = envelope._keys(MATERIAL_A, made.salt, head, 2)
    k2, c2 = envelope._keys(MATERIAL_B, made.salt, head, 2)
    assert c1 != c2
    nonce = made.nonce_prefix + struct.pack(">IB", 0, 1)
    segment = two_key_segment(k1, k2, nonce, b"transfer $10 to ")
    # The segment still authenticates under both message keys: AES-GCM alone does not
    # commit. But a message holds one commitment, and each key material checks its own.
    assert AESGCM(k1).decrypt(nonce, segment, None) != AESGCM(k2).decrypt(nonce, segment, None)
    for commitment in (c1, c2, bytes(32), os.urandom(32)):
        blob = head + commitment + segment
        opened = set()
        for material in (MATERIAL_A, MATERIAL_B):
            for reader in (open_blob, open_stream):
                with contextlib.suppress(InvalidCiphertextError):
                    opened.add((material, reader(blob, key=material)))
        expected = {c1: MATERIAL_A, c2: MATERIAL_B}.get(commitment)
        assert {material for material, _ in opened} == ({expected} if expected else set())
        assert len({plaintext for _, plaintext in opened}) <= 1


# -- through the manager ---------------------------------------------------------------


@pytest.fixture
def env_manager(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    """A manager whose ``master_key`` is KEY (from the environment), and its events."""
    from secureml.key_management import KeyManager

    monkeypatch.setenv("SECUREML_MASTER_KEY", "hex:" + KEY.hex())
    events: list[Any] = []
    return KeyManager(declared_keys=["master_key"], audit_hook=events.append), events


def test_the_manager_writes_v2_and_still_opens_v1(env_manager: tuple[Any, list[Any]]) -> None:
    km, _ = env_manager
    old = envelope.encrypt_managed(KEY, "master_key", 0, b"old data", b"", format_version=1)
    assert old[4] == 1
    assert km.decrypt(old) == b"old data"
    out = io.BytesIO()
    km.decrypt_stream(io.BytesIO(old), out)
    assert out.getvalue() == b"old data"
    moved = km.reencrypt(old)
    assert moved[4] == 2
    assert km.decrypt(moved) == b"old data"
    assert km.encrypt(b"new")[4] == 2
    sealed = io.BytesIO()
    km.encrypt_stream(io.BytesIO(b"new"), sealed)
    assert sealed.getvalue()[4] == 2


def test_a_wrong_commitment_in_a_reencryption_is_a_rejected_decrypt(
    env_manager: tuple[Any, list[Any]],
) -> None:
    km, events = env_manager
    blob = bytearray(km.encrypt(b"data" * 20))
    _, length = envelope.parse_header(bytes(blob))
    blob[length - 1] ^= 1  # the commitment's last byte
    events.clear()
    with pytest.raises(InvalidCiphertextError):
        km.reencrypt_stream(io.BytesIO(bytes(blob)), io.BytesIO())
    assert [(e.operation, e.outcome) for e in events] == [("decrypt", "rejected")]
    with pytest.raises(InvalidCiphertextError):
        km.decrypt(bytes(blob))


def test_a_refusal_tells_only_what_the_bytes_shape_shows(
    env_manager: tuple[Any, list[Any]],
) -> None:
    """``reason`` says "not ours" or "cut inside the header" (public to anyone holding the
    bytes); every failure that needs the key stays one reason and one message."""
    from secureml.key_management.errors import InvalidCiphertextError

    km, _ = env_manager
    sealed = km.encrypt(b"rows" * 100, aad=b"t=1")
    cases = {
        b"": "not-secureml",
        b"PK\x03\x04" + sealed[4:]: "not-secureml",
        sealed[:3]: "truncated",
        sealed[:30]: "truncated",
        sealed[:-1]: "unauthenticated",
        sealed[:-5] + bytes(5): "unauthenticated",
    }
    for data, reason in cases.items():
        for aad in (b"t=1", b"wrong"):
            with pytest.raises(InvalidCiphertextError) as refused:
                km.decrypt(data, aad=aad)
            assert refused.value.reason == reason
            assert str(refused.value) == envelope.OPAQUE
            with pytest.raises(InvalidCiphertextError) as streamed:
                km.decrypt_stream(io.BytesIO(data), io.BytesIO(), aad=aad)
            assert streamed.value.reason == reason
    with pytest.raises(InvalidCiphertextError) as wrong_aad:
        km.decrypt(sealed, aad=b"wrong")
    assert wrong_aad.value.reason == "unauthenticated"
