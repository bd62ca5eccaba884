"""``km.open_encrypted``: random reads and seeks give the plaintext's bytes, decrypting
only the segments they touch; a tampered segment fails when (and only when) it is read;
a file cut short fails at its end. Messages with small segments (64 bytes) make "many
segments" cheap; the manager's key comes from the environment."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureml.key_management import KeyManager
from secureml.key_management import _envelope as envelope
from secureml.key_management._seekable import CACHED_SEGMENTS, EncryptedReader
from secureml.key_management.errors import InvalidCiphertextError

KEY = os.urandom(32)
SEGMENT = 64
SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 10 * SEGMENT + 7]


@pytest.fixture
def km(monkeypatch: pytest.MonkeyPatch) -> KeyManager:
    for variable in ("SECUREML_VAULT_URL", "BAO_ADDR", "VAULT_ADDR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SECUREML_K", "hex:" + KEY.hex())
    return KeyManager(declared_keys=["k"])


def sealed(plaintext: bytes, aad: bytes = b"", segment: int = SEGMENT) -> bytes:
    header = envelope.Header(envelope.MODE_MANAGED_KEY, "k", 0, segment_bytes=segment)
    return envelope.encrypt_bytes(KEY, header, plaintext, aad)


@pytest.mark.parametrize("size", SIZES)
def test_whole_reads_and_every_whence(km: KeyManager, size: int) -> None:
    data = os.urandom(size)
    with km.open_encrypted(io.BytesIO(sealed(data))) as f:
        assert f.readable()
        assert f.seekable()
        assert f.read() == data
        assert f.read() == b""
        assert f.seek(0) == 0
        assert f.read(5) == data[:5]
        assert f.seek(-3, os.SEEK_END) == max(0, size - 3)  # clamped at 0, as BytesIO does
        assert f.read() == data[max(0, size - 3) :]
        f.seek(1, os.SEEK_SET)
        f.seek(2, os.SEEK_CUR)
        assert f.tell() == 3
        assert f.read(SEGMENT) == data[3 : 3 + SEGMENT]
        f.seek(size + 100)
        assert f.read(10) == b""  # past the end: nothing, as a file gives
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
    with pytest.raises(ValueError, match="closed"):
        f.read(1)


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from(SIZES),
    steps=st.lists(
        st.tuples(st.integers(-200, 1200), st.sampled_from([0, 1, 2]), st.integers(-1, 300)),
        max_size=12,
    ),
)
def test_random_seeks_and_reads_match_the_plaintext(
    size: int, steps: list[tuple[int, int, int]]
) -> None:
    km = KeyManager(declared_keys=["k"], use_env_fallback=True)
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    plain = io.BytesIO(data)
    was = os.environ.get("SECUREML_K")
    os.environ["SECUREML_K"] = "hex:" + KEY.hex()  # (hypothesis: no function fixtures)
    try:
        reader = km.open_encrypted(io.BytesIO(sealed(data)))
    finally:
        if was is None:
            del os.environ["SECUREML_K"]
        else:
            os.environ["SECUREML_K"] = was
    with reader as f:
        for offset, whence, length in steps:
            try:
                expected_at = plain.seek(offset, whence)
            except ValueError:
                with pytest.raises(ValueError, match="negative seek"):
                    f.seek(offset, whence)
                continue
            assert f.seek(offset, whence) == expected_at
            assert f.read(length) == plain.read(length)
            assert f.tell() == plain.tell()
            # Buffers of more than a segment too: whole segments decrypt straight in.
            mine, theirs = bytearray(max(length, 0) + 70), bytearray(max(length, 0) + 70)
            assert f.readinto(mine) == plain.readinto(theirs)
            assert mine == theirs
            assert f.tell() == plain.tell()


def test_only_the_segments_a_read_touches_are_decrypted(km: KeyManager) -> None:
    data = os.urandom(100 * SEGMENT)
    opened: list[int] = []
    with km.open_encrypted(io.BytesIO(sealed(data))) as f:
        assert isinstance(f, EncryptedReader)
        real = f._cipher_or_none.open_into  # type: ignore[union-attr]

        def counted(index: int, segment: Any, last: bool, out: memoryview) -> None:
            opened.append(index)
            real(index, segment, last, out)

        f._cipher_or_none.open_into = counted  # type: ignore[method-assign,union-attr]
        f.seek(50 * SEGMENT + 10)
        assert f.read(20) == data[50 * SEGMENT + 10 : 50 * SEGMENT + 30]
        assert opened == [50]
        f.seek(50 * SEGMENT + 40)
        f.read(SEGMENT)  # straddles 50 (cached) and 51
        assert opened == [50, 51]
        for i in range(CACHED_SEGMENTS + 2):
            f.seek(i * SEGMENT)
            f.read(1)
        assert len(f._cache) == CACHED_SEGMENTS  # bounded


def test_a_tampered_segment_fails_only_when_read_and_names_it(km: KeyManager) -> None:
    data = os.urandom(10 * SEGMENT)
    blob = bytearray(sealed(data))
    _, start = envelope.parse_header(bytes(blob))
    blob[start + 3 * (SEGMENT + envelope.TAG_BYTES) + 5] ^= 1  # inside segment 3
    with km.open_encrypted(io.BytesIO(bytes(blob))) as f:
        assert f.read(3 * SEGMENT) == data[: 3 * SEGMENT]  # before it: fine
        f.seek(5 * SEGMENT)
        assert f.read(SEGMENT) == data[5 * SEGMENT : 6 * SEGMENT]  # after it: fine too
        f.seek(3 * SEGMENT + 1)
        with pytest.raises(InvalidCiphertextError, match="segment 3 of 10") as refused:
            f.read(1)
        assert refused.value.reason == "unauthenticated"


@pytest.mark.parametrize("cut_segments", [1, 3])
@pytest.mark.parametrize("padding", [b"", bytes(16), os.urandom(40)])
def test_a_file_cut_at_a_segment_boundary_is_refused_when_opened(
    km: KeyManager, cut_segments: int, padding: bytes
) -> None:
    """The last segment is opened with the reader: a file cut at a boundary, even with
    bytes added that look like a last segment, never reads back as whole."""
    data = os.urandom(10 * SEGMENT)
    blob = sealed(data)
    cut = blob[: len(blob) - (cut_segments * (SEGMENT + envelope.TAG_BYTES))] + padding
    with pytest.raises(InvalidCiphertextError):
        km.open_encrypted(io.BytesIO(cut))


def test_a_wrong_aad_a_path_and_a_pipe(km: KeyManager, tmp_path: Path) -> None:
    data = os.urandom(3 * SEGMENT)
    path = tmp_path / "x.sml"
    path.write_bytes(sealed(data, aad=b"t=1"))
    with km.open_encrypted(path, aad=b"t=1") as f:
        assert f.read() == data
    with pytest.raises(InvalidCiphertextError):  # the aad is checked when it opens
        km.open_encrypted(str(path), aad=b"wrong")
    read, write = os.pipe()
    with os.fdopen(read, "rb") as pipe, pytest.raises(ValueError, match="seekable"):
        km.open_encrypted(pipe)
    os.close(write)
    with pytest.raises(InvalidCiphertextError) as garbage:
        km.open_encrypted(io.BytesIO(b"not a secureml file at all"))
    assert garbage.value.reason == "not-secureml"


def test_files_written_by_encrypt_file_open_with_random_access(
    km: KeyManager, tmp_path: Path
) -> None:
    data = os.urandom(3 * (1 << 20) + 11)  # default 1 MiB segments: 4 of them
    (tmp_path / "p").write_bytes(data)
    km.encrypt_file(tmp_path / "p", tmp_path / "p.sml", "k")
    with km.open_encrypted(tmp_path / "p.sml") as f:
        f.seek(2 * (1 << 20) - 5)
        assert f.read(10) == data[2 * (1 << 20) - 5 : 2 * (1 << 20) + 5]
        f.seek(-11, os.SEEK_END)
        assert f.read() == data[-11:]


def test_file_object_manners(km: KeyManager, tmp_path: Path) -> None:
    import copy

    data = os.urandom(5 * SEGMENT)
    blob = sealed(data)
    embedded = io.BytesIO(b"preamble" + blob)
    embedded.seek(len(b"preamble"))  # the message starts where the file stands
    with km.open_encrypted(embedded) as f:
        assert f.read() == data
        assert f.size == len(data)  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            f.seek(1.5)  # type: ignore[arg-type]
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        with pytest.raises(TypeError, match="copied"):
            copy.copy(f)
        assert f.readline() == b""  # at the end
    (tmp_path / "x.sml").write_bytes(blob)
    with open(tmp_path / "x.sml") as text, pytest.raises(TypeError, match="binary mode"):
        km.open_encrypted(text)  # type: ignore[arg-type]
    with km.open_encrypted(bytes(tmp_path / "x.sml")) as f:
        assert f.read(3) == data[:3]


def test_a_segment_that_fails_later_is_a_rejected_decrypt_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECUREML_K", "hex:" + KEY.hex())
    events: list[Any] = []
    km = KeyManager(declared_keys=["k"], audit_hook=events.append)
    blob = bytearray(sealed(os.urandom(10 * SEGMENT)))
    _, start = envelope.parse_header(bytes(blob))
    blob[start + 2 * (SEGMENT + envelope.TAG_BYTES)] ^= 1
    with km.open_encrypted(io.BytesIO(bytes(blob))) as f:
        assert [e.outcome for e in events] == ["ok"]
        f.seek(2 * SEGMENT)
        with pytest.raises(InvalidCiphertextError, match="segment 2 of 10") as caught:
            f.read(1)
    assert [(e.operation, e.outcome) for e in events] == [
        ("decrypt", "ok"),
        ("decrypt", "rejected"),
    ]
    frames = []
    tb = caught.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_locals)
        tb = tb.tb_next
    assert not any("plain" in locals_ or "out" in locals_ for locals_ in frames[1:])


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 5])
@pytest.mark.parametrize("chunk", [1 << 20, 4099])
def test_the_encrypting_writer_writes_what_encrypt_file_would(
    km: KeyManager, tmp_path: Path, size: int, chunk: int
) -> None:
    data = os.urandom(size)
    dst = tmp_path / "w.sml"
    with km.open_encrypting(dst, "k", aad=b"t") as f:
        for at in range(0, size, chunk):
            assert f.write(data[at : at + chunk]) == len(data[at : at + chunk])
        assert f.tell() == size
        assert not dst.exists()  # only once the write ends cleanly
    assert km.decrypt(dst.read_bytes(), aad=b"t") == data
    with km.open_encrypted(dst, aad=b"t") as back:
        assert back.read() == data
    (tmp_path / "p").write_bytes(data)  # the same layout as encrypt_file's
    km.encrypt_file(tmp_path / "p", tmp_path / "f.sml", "k", aad=b"t")
    assert (tmp_path / "f.sml").stat().st_size == dst.stat().st_size


def test_a_failed_or_abandoned_write_leaves_no_file(km: KeyManager, tmp_path: Path) -> None:
    dst = tmp_path / "w.sml"

    def fails() -> None:
        with km.open_encrypting(dst, "k") as f:
            f.write(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert not dst.exists()
    dst.write_bytes(b"old")
    f = km.open_encrypting(dst, "k")
    f.write(b"x" * 100)
    del f  # dropped unclosed
    import gc

    gc.collect()
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.sml"]  # no temporary left
    with km.open_encrypting(dst, "k") as f:
        f.write(b"new")
    with pytest.raises(ValueError, match="closed"):
        f.write(b"late")
    assert km.decrypt(dst.read_bytes()) == b"new"


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(0, 3 * SEGMENT), max_size=20))
def test_any_split_of_the_writes_gives_the_same_plaintext(chunks: list[int]) -> None:
    """Writes of any sizes (empty, partial, exactly a segment, several) end as one
    message whose segments a reader opens in order."""
    from secureml.key_management import _seekable

    data = os.urandom(sum(chunks))
    out = io.BytesIO()
    header = envelope.Header(envelope.MODE_MANAGED_KEY, "k", 0, segment_bytes=SEGMENT)
    header_bytes = header.encode()
    cipher = envelope.SegmentCipher(KEY, header, header_bytes, b"")
    done: list[BaseException | None] = []
    writer = _seekable.EncryptingWriter(
        out, done.append, cipher, header_bytes + cipher.commitment, SEGMENT
    )
    at = 0
    for size in chunks:
        writer.write(data[at : at + size])
        at += size
    writer.close()
    assert done == [None]
    parsed, length = envelope.parse_header(out.getvalue())
    opener = envelope.SegmentCipher(KEY, parsed, parsed.encode(), b"")
    body = out.getvalue()[length:]
    assert envelope.decrypt_bytes(KEY, parsed, parsed.encode(), body, b"") == data
    del opener


# -- the writer's failures are final (review) --------------------------------------------


class _FailingSink(io.RawIOBase):
    """A file object whose write number ``fail_at`` (0-based) raises, as a full disk
    would; the rest are kept."""

    def __init__(self, fail_at: int) -> None:
        self.data = bytearray()
        self.calls = 0
        self.fail_at = fail_at

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise OSError(28, "No space left on device")
        self.data += bytes(b)
        return len(b)


def test_a_failed_write_ends_the_writer_so_no_nonce_is_sealed_twice(km: KeyManager) -> None:
    sink = _FailingSink(fail_at=2)  # the header, segment 0, then segment 1 fails
    writer = km.open_encrypting(sink, "k", segment_size=65536)
    secret = os.urandom(3 * 65536)
    with pytest.raises(OSError, match="No space"):
        writer.write(secret)
    kept = bytes(sink.data)
    for retry in (lambda: writer.write(secret), writer.close, writer.tell):
        with pytest.raises(ValueError, match="failed earlier"):
            retry()
    assert bytes(sink.data) == kept  # nothing more was sealed: no segment index reused


def test_a_failed_write_to_a_path_publishes_nothing(km: KeyManager, tmp_path: Path) -> None:
    import resource
    import signal

    dst = tmp_path / "w.sml"
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    writer = km.open_encrypting(dst, "k", segment_size=65536)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, hard))  # in segment 2
        with pytest.raises(OSError, match="too large"):
            writer.write(os.urandom(4 * 65536))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    with pytest.raises(ValueError, match="failed earlier"):
        writer.write(b"retried")
    with pytest.raises(ValueError, match="failed earlier"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_close_fails_again_and_leaves_nothing(km: KeyManager, tmp_path: Path) -> None:
    sink = _FailingSink(fail_at=1)  # the last segment's write fails
    writer = km.open_encrypting(sink, "k")
    writer.write(b"all of it")
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert writer.closed
    with pytest.raises(ValueError, match="failed earlier"):
        writer.close()  # not a silent success the second time
    with pytest.raises(ValueError, match="failed earlier"):
        writer.write(b" more")


def test_a_forked_child_cannot_write_or_close_its_parents_writer(
    km: KeyManager, tmp_path: Path
) -> None:
    dst = tmp_path / "w.sml"
    with km.open_encrypting(dst, "k") as writer:
        writer.write(b"parent's first bytes, ")
        pid = os.fork()
        if pid == 0:  # the child: every use refused, and the parent's file untouched
            code = 0
            for use in (lambda: writer.write(b"child"), writer.close):
                try:
                    use()
                    code = 1
                except RuntimeError as exc:
                    code |= 0 if "another process" in str(exc) else 2
            writer.abort()  # quietly lets go (never blocks on an inherited lock)
            del writer
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        writer.write(b"and its last")
    assert km.decrypt(dst.read_bytes()) == b"parent's first bytes, and its last"


def test_an_abandoned_writer_is_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_K", "hex:" + KEY.hex())
    events: list[Any] = []
    km = KeyManager(declared_keys=["k"], audit_hook=events.append)
    sink = io.BytesIO()

    def fails() -> None:
        with km.open_encrypting(sink, "k") as f:
            f.write(b"partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fails()
    assert [(e.operation, e.outcome) for e in events] == [("encrypt", "ok"), ("encrypt", "error")]
    assert events[-1].name == "k"
    assert events[-1].error == "KeyboardInterrupt"


@pytest.mark.parametrize("answer", [True, -1, 1.5, "ok", 10**9])
def test_a_sink_whose_write_returns_nonsense_is_refused(km: KeyManager, answer: Any) -> None:
    class Lying(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> Any:
            return answer

    with pytest.raises(ValueError, match="returned"), km.open_encrypting(Lying(), "k") as f:
        f.write(b"x" * 1000)


def test_writes_of_any_buffer_shape(km: KeyManager, tmp_path: Path) -> None:
    import array

    numbers = array.array("d", [1.5, 2.5])
    with km.open_encrypting(os.fsencode(tmp_path / "b.sml"), "k") as f:  # a bytes path
        f.write(numbers)
        np = pytest.importorskip("numpy")
        f.write(np.zeros((0, 3)))  # empty, two-dimensional
        f.write(memoryview(b"abcdef").cast("B", (2, 3)))
    assert km.decrypt((tmp_path / "b.sml").read_bytes()) == numbers.tobytes() + b"abcdef"


def test_a_tampered_segment_read_straight_into_a_buffer_leaves_none_of_it(
    km: KeyManager,
) -> None:
    """AES-GCM writes a segment's plaintext before it checks the tag: a segment that
    fails in the caller's buffer is wiped there before the error is raised."""
    data = os.urandom(5 * SEGMENT)
    blob = bytearray(sealed(data))
    header_end = len(blob) - 5 * (SEGMENT + envelope.TAG_BYTES)
    blob[header_end + (SEGMENT + envelope.TAG_BYTES) + 3] ^= 1  # in segment 1
    with km.open_encrypted(io.BytesIO(bytes(blob))) as f:
        buffer = bytearray(b"\xff" * (3 * SEGMENT))
        with pytest.raises(InvalidCiphertextError, match="segment 1 of 5"):
            f.readinto(buffer)
        assert buffer[:SEGMENT] == data[:SEGMENT]  # segment 0 authenticated
        assert buffer[SEGMENT : 2 * SEGMENT] == bytes(SEGMENT)  # wiped, not near-plaintext
        assert f.segments_decrypted == 2  # type: ignore[attr-defined]  # the last, and 0


def test_closing_the_reader_wipes_the_segments_it_kept(km: KeyManager) -> None:
    data = os.urandom(3 * SEGMENT)
    f = km.open_encrypted(io.BytesIO(sealed(data)))
    assert f.read(2 * SEGMENT) == data[: 2 * SEGMENT]
    assert isinstance(f, EncryptedReader)
    kept = [view.obj for view in f._cache.values()]
    assert kept
    f.close()
    assert all(slot == bytes(len(slot)) for slot in kept)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["path", "buffered file"])
def test_a_reader_opened_before_a_fork_reads_right_in_every_process(
    km: KeyManager, tmp_path: Path, how: str
) -> None:
    """A DataLoader's workers share the file offset of a file opened before the fork:
    segments are read with pread, so no process moves another's read (a moved one
    would fail to authenticate, and look like tampering)."""
    import random

    data = os.urandom(200 * SEGMENT)
    (tmp_path / "f.sml").write_bytes(sealed(data))
    source: Any = tmp_path / "f.sml" if how == "path" else open(tmp_path / "f.sml", "rb")  # noqa: SIM115
    with km.open_encrypted(source) as f:
        children = []
        for child in range(2):
            pid = os.fork()
            if pid == 0:
                rng = random.Random(child)  # noqa: S311 - offsets, not secrets
                code = 0
                try:
                    for _ in range(3000):
                        at = rng.randrange(len(data) - 100)
                        f.seek(at)
                        code |= f.read(100) != data[at : at + 100]
                except BaseException:
                    code = 2
                os._exit(code)
            children.append(pid)
        rng = random.Random(99)  # noqa: S311 - offsets, not secrets
        for _ in range(3000):
            at = rng.randrange(len(data) - 100)
            f.seek(at)
            assert f.read(100) == data[at : at + 100]
        for pid in children:
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    if how != "path":
        source.close()


def test_a_close_whose_publishing_fails_is_closed_and_fails_again(km: KeyManager) -> None:
    class Unflushable(io.BytesIO):
        def flush(self) -> None:
            if self.getbuffer().nbytes:  # the last segment is in: publishing it fails
                raise OSError(5, "Input/output error")

    writer = km.open_encrypting(Unflushable(), "k")
    writer.write(b"all of it")
    with pytest.raises(OSError, match="Input/output"):
        writer.close()
    assert writer.closed
    with pytest.raises(ValueError, match="failed earlier"):
        writer.close()


def test_a_child_forked_while_another_thread_reads_can_read(km: KeyManager, tmp_path: Path) -> None:
    """The fork happens while a thread of the parent holds the reader's lock: the
    child (where that thread does not exist) reads on, instead of waiting forever."""
    import threading

    data = os.urandom(20 * SEGMENT)
    (tmp_path / "f.sml").write_bytes(sealed(data))
    with km.open_encrypted(tmp_path / "f.sml") as f:
        assert isinstance(f, EncryptedReader)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with f._locked():
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(30)
        pid = os.fork()
        if pid == 0:
            f.seek(5 * SEGMENT + 3)
            os._exit(0 if f.read(10) == data[5 * SEGMENT + 3 : 5 * SEGMENT + 13] else 1)
        release.set()
        holder.join()
        waited = 0.0
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and waited < 20:
            time.sleep(0.05)
            waited += 0.05
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child waited for its parent's lock")
        assert os.waitstatus_to_exitcode(done[1]) == 0
