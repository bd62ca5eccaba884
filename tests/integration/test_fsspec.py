"""The ``secureml::`` fsspec filesystem over real targets (``file://`` in a temporary
directory, ``memory://``): what is stored is ciphertext, what is read is plaintext with
random access, listings report plaintext sizes, failed writes leave nothing, and pandas
and pyarrow read and write through the URL."""

from __future__ import annotations

import gc
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

fsspec = pytest.importorskip("fsspec")

from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem  # noqa: E402

from secureml.fsspec import HEAD_BYTES, SecureMLFileSystem, plaintext_size  # noqa: E402
from secureml.key_management import (  # noqa: E402
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    KeyManagerSpec,
    _default,
)
from secureml.key_management import _envelope as envelope  # noqa: E402

pytestmark = pytest.mark.integration

KEY = "models/key"
SEGMENT = 64 << 10  # the smallest a writer may choose: several segments in small data


@pytest.fixture
def km(monkeypatch: pytest.MonkeyPatch) -> KeyManager:
    monkeypatch.setenv("SECUREML_MODELS_KEY", "hex:" + os.urandom(32).hex())
    return KeyManager(declared_keys=[KEY])


@pytest.fixture
def memory() -> Iterator[MemoryFileSystem]:
    """fsspec's shared in-memory store, emptied after the test."""
    yield fsspec.filesystem("memory")
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]


def options(km: KeyManager, **more: Any) -> dict[str, Any]:
    """``storage_options`` for a secureml:: URL."""
    return {"secureml": {"key_name": KEY, "manager": km, **more}}


def secure(km: KeyManager, target: str = "file", **more: Any) -> SecureMLFileSystem:
    return SecureMLFileSystem(target_protocol=target, manager=km, key_name=KEY, **more)


def data(size: int) -> bytes:
    return os.urandom(size)


def write_and_fail(f: Any, content: bytes, check: Any = None) -> None:
    """Write ``content`` to ``f``, then fail as a job would halfway."""
    f.write(content)
    if check is not None:
        check()
    raise RuntimeError("boom")


# -- chaining ----------------------------------------------------------------------------


def test_the_url_finds_the_filesystem_through_its_entry_point(km: KeyManager) -> None:
    assert fsspec.get_filesystem_class("secureml") is SecureMLFileSystem
    fs, path = fsspec.url_to_fs("secureml::file:///data/x.parquet", **options(km))
    assert isinstance(fs, SecureMLFileSystem)
    assert path == "/data/x.parquet"
    assert fs.target_protocol == "file"
    assert fs.key_name == KEY
    assert fs.manager is km
    inner, inner_path = fsspec.url_to_fs("secureml::memory://bucket/x", **options(km))
    assert inner.target_protocol == "memory"
    assert inner_path == "/bucket/x"


def test_a_file_url_round_trips_and_stores_ciphertext(km: KeyManager, tmp_path: Path) -> None:
    plain = data(3 * SEGMENT + 123)
    url = f"secureml::file://{tmp_path}/x.bin"
    with fsspec.open(url, "wb", **options(km, segment_size=SEGMENT)) as f:
        assert f.write(plain) == len(plain)
    stored = (tmp_path / "x.bin").read_bytes()
    assert plain not in stored
    assert stored.startswith(envelope.MAGIC)
    assert km.decrypt(stored) == plain
    km.decrypt_file(tmp_path / "x.bin", tmp_path / "x.out")
    assert (tmp_path / "x.out").read_bytes() == plain
    with fsspec.open(url, "rb", **options(km)) as f:
        assert f.read() == plain
        for at in (0, SEGMENT - 3, 2 * SEGMENT + 5, len(plain) - 7):
            f.seek(at)
            assert f.read(11) == plain[at : at + 11]
        f.seek(-5, os.SEEK_END)
        assert f.read() == plain[-5:]
        buffer = bytearray(100)
        f.seek(SEGMENT - 50)
        assert f.readinto(buffer) == 100
        assert bytes(buffer) == plain[SEGMENT - 50 : SEGMENT + 50]


def test_an_encrypted_file_made_by_the_manager_reads_through_the_url(
    km: KeyManager, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(b"made elsewhere")
    km.encrypt_file(tmp_path / "plain", tmp_path / "x.sml", KEY)
    fs = SecureMLFileSystem(target_protocol="file", manager=km)  # reading names no key
    assert fs.cat_file(str(tmp_path / "x.sml")) == b"made elsewhere"
    assert fs.cat_file(str(tmp_path / "x.sml"), start=5, end=-1) == b"elsewher"


def test_memory_round_trips(km: KeyManager, memory: MemoryFileSystem) -> None:
    plain = data(2 * SEGMENT + 1)
    fs = secure(km, "memory", segment_size=SEGMENT)
    fs.pipe_file("/d/x.bin", plain)
    stored = memory.cat_file("/d/x.bin")
    assert km.decrypt(stored) == plain
    assert fs.cat_file("/d/x.bin") == plain
    with fs.open("/d/x.bin") as first, fs.open("/d/x.bin") as second:  # own positions
        first.seek(SEGMENT)
        assert second.read(10) == plain[:10]
        assert first.read(10) == plain[SEGMENT : SEGMENT + 10]


def test_put_and_get_encrypt_and_decrypt(km: KeyManager, tmp_path: Path) -> None:
    plain = data(SEGMENT + 1)
    (tmp_path / "local.bin").write_bytes(plain)
    fs = secure(km)
    fs.put_file(str(tmp_path / "local.bin"), str(tmp_path / "stored" / "x.sml"))
    assert km.decrypt((tmp_path / "stored" / "x.sml").read_bytes()) == plain
    fs.get_file(str(tmp_path / "stored" / "x.sml"), str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == plain
    assert fs.head(str(tmp_path / "stored" / "x.sml"), 5) == plain[:5]
    assert fs.tail(str(tmp_path / "stored" / "x.sml"), 5) == plain[-5:]


def test_text_mode_goes_through_fsspec_wrapper(km: KeyManager, memory: MemoryFileSystem) -> None:
    with fsspec.open("secureml::memory://t.txt", "w", **options(km)) as f:
        f.write("line one\nline two\n")
    with fsspec.open("secureml::memory://t.txt", "r", **options(km)) as f:
        assert f.readlines() == ["line one\n", "line two\n"]
    assert b"line" not in memory.cat_file("/t.txt")


def test_other_modes_are_refused(km: KeyManager, memory: MemoryFileSystem) -> None:
    fs = secure(km, "memory")
    fs.pipe_file("/x", b"abc")
    for mode in ("ab", "r+b", "xb", "w+b"):
        with pytest.raises(ValueError, match="opens 'rb' or 'wb'"):
            fs.open("/x", mode)
    assert fs.cat_file("/x") == b"abc"


# -- pandas and pyarrow ----------------------------------------------------------------


def test_pandas_writes_and_reads_columns_through_the_url(km: KeyManager, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": range(1000), "b": [f"secret-{i}" for i in range(1000)]})
    url = f"secureml::file://{tmp_path}/t.parquet"
    frame.to_parquet(url, storage_options=options(km))
    assert b"secret-1" not in (tmp_path / "t.parquet").read_bytes()
    back = pd.read_parquet(url, storage_options=options(km), columns=["b"])
    assert list(back.columns) == ["b"]
    assert back["b"].tolist() == frame["b"].tolist()


def test_a_url_alone_reads_with_the_default_manager(km: KeyManager, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    url = f"secureml::file://{tmp_path}/t.parquet"
    pd.DataFrame({"a": [1, 2, 3]}).to_parquet(url, storage_options=options(km))
    saved = _default._slot.manager
    _default.configure_default_key_manager(declared_keys=[KEY])  # the same env key
    try:
        assert pd.read_parquet(url)["a"].tolist() == [1, 2, 3]
    finally:
        _default._slot.manager = saved


def test_pyarrow_reads_one_column_through_the_filesystem(
    km: KeyManager, memory: MemoryFileSystem
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = 50_000
    table = pa.table({"a": pa.array(range(rows)), "b": pa.array([b"x" * 16] * rows)})
    fs = secure(km, "memory", segment_size=SEGMENT)
    with fs.open("/t/part-0.parquet", "wb") as f:
        pq.write_table(table, f, compression="none")
    pq.write_table(table.slice(0, 10), "/t/part-1.parquet", filesystem=fs)
    back = pq.read_table("/t/part-0.parquet", filesystem=fs, columns=["a"])
    assert back.column_names == ["a"]
    assert back.column("a").to_pylist() == list(range(rows))
    whole = pq.read_table("/t", filesystem=fs)  # a dataset: listed, sized, opened
    assert whole.num_rows == rows + 10


# -- listings --------------------------------------------------------------------------


def test_listings_report_plaintext_sizes(km: KeyManager, tmp_path: Path) -> None:
    fs = secure(km, segment_size=SEGMENT)
    sizes = {"a.bin": 0, "b.bin": 1, "sub/c.bin": 2 * SEGMENT + 9}
    for name, size in sizes.items():
        fs.makedirs(str(tmp_path / name).rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(str(tmp_path / name), data(size))
    for name, size in sizes.items():
        path = str(tmp_path / name)
        info = fs.info(path)
        assert (info["size"], info["encrypted"]) == (size, True)
        assert info["stored_size"] == os.path.getsize(path) > size
        assert fs.size(path) == size
    assert {e["name"]: e["size"] for e in fs.ls(str(tmp_path)) if e["type"] == "file"} == {
        str(tmp_path / "a.bin"): 0,
        str(tmp_path / "b.bin"): 1,
    }
    found = fs.find(str(tmp_path), detail=True)
    assert {k: v["size"] for k, v in found.items()} == {
        str(tmp_path / k): v for k, v in sizes.items()
    }
    assert fs.find(str(tmp_path)) == sorted(str(tmp_path / k) for k in sizes)
    globbed = fs.glob(f"{tmp_path}/**/*.bin", detail=True)
    assert {v["size"] for v in globbed.values()} == set(sizes.values())
    walked = {
        f"{root}/{name}": info["size"]
        for root, _, files in fs.walk(str(tmp_path), detail=True)
        for name, info in files.items()
    }
    assert walked == {str(tmp_path / k): v for k, v in sizes.items()}
    assert fs.du(str(tmp_path)) == sum(sizes.values())
    assert fs.isdir(str(tmp_path / "sub"))
    assert fs.isfile(str(tmp_path / "a.bin"))
    assert fs.exists(str(tmp_path / "a.bin"))
    assert not fs.exists(str(tmp_path / "nope"))


def test_files_that_are_not_secureml_are_listed_as_stored_and_refused_on_open(
    km: KeyManager, tmp_path: Path
) -> None:
    fs = secure(km, segment_size=SEGMENT)
    real = str(tmp_path / "real.bin")
    fs.pipe_file(real, data(SEGMENT + 5))
    stored = Path(real).read_bytes()
    hostile = {
        "empty": b"",
        "magic-only": envelope.MAGIC,
        "garbage": data(300),
        "plain.parquet": b"PAR1" + data(100) + b"PAR1",
        # A header claiming the longest name and wrapped key, with nothing after it.
        "claims": envelope.MAGIC + bytes([2, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0]),
    }
    header_bytes = envelope.parse_header(stored)[1]
    for cut in (1, 10, 16, 40, header_bytes - 1, header_bytes, header_bytes + 15):
        hostile[f"cut-{cut}"] = stored[:cut]  # no room for a header and one tag
    # Cut or extended within a segment: the length still fits a message, so the listing
    # says what the header and length say; opening proves otherwise.
    bodies = {"cut-body": stored[: len(stored) // 2], "extended": stored + b"\0"}
    for name, content in {**hostile, **bodies}.items():
        (tmp_path / name).write_bytes(content)
    listing = {Path(e["name"]).name: e for e in fs.ls(str(tmp_path))}
    assert listing["real.bin"]["encrypted"] is True
    assert listing["real.bin"]["size"] == SEGMENT + 5
    for name, content in hostile.items():
        entry = listing[name]
        assert (entry["encrypted"], entry["size"]) == (False, len(content)), name
        assert "stored_size" not in entry
    for name in {**hostile, **bodies}:
        with pytest.raises(InvalidCiphertextError):
            fs.open(str(tmp_path / name), "rb")


def test_a_file_whose_start_cannot_be_read_is_listed_as_unknown(
    km: KeyManager, memory: MemoryFileSystem
) -> None:
    fs = secure(km, "memory")
    fs.pipe_file("/v/kept", b"abc")
    listing = memory.ls("/v")  # the target's own entries
    del MemoryFileSystem.store["/v/kept"]  # gone between the listing and the read
    (entry,) = fs._sized(listing)
    assert (entry["encrypted"], entry["size"]) == (None, listing[0]["size"])
    assert listing[0] is not entry  # a copy: the target's own entries stay as they were
    assert "encrypted" not in listing[0]


def test_plaintext_size_never_fails_on_hostile_bytes(km: KeyManager) -> None:
    blob = km.encrypt(b"x" * 100, KEY)
    start = envelope.parse_header(blob)[1]
    for cut in range(len(blob) + 1):  # every prefix, as a file of that length
        expected = cut - start - envelope.TAG_BYTES if cut >= start + envelope.TAG_BYTES else None
        assert plaintext_size(blob[:cut], cut) == expected
    rng = random.Random(17)  # noqa: S311 - reproducible test input
    for _ in range(3000):  # the header with bytes flipped, lengths lied about
        head = bytearray(blob[:start])
        for _ in range(rng.randint(1, 4)):
            head[rng.randrange(4, len(head))] = rng.randrange(256)
        size = plaintext_size(bytes(head), rng.choice([0, len(head), len(blob), 1 << 40]))
        assert size is None or size >= 0


def test_plaintext_size_matches_the_reader(km: KeyManager, memory: MemoryFileSystem) -> None:
    fs = secure(km, "memory", segment_size=SEGMENT)
    for size in (0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT):
        fs.pipe_file(f"/s/{size}", b"\1" * size)
        stored = memory.cat_file(f"/s/{size}")
        assert plaintext_size(stored[:HEAD_BYTES], len(stored)) == size
        with fs.open(f"/s/{size}") as f:
            assert f.size == size == f.seek(0, os.SEEK_END)


def test_the_longest_header_fits_in_the_bytes_a_listing_reads() -> None:
    header = envelope.Header(
        envelope.MODE_TRANSIT,
        "k" * envelope.MAX_NAME_BYTES,
        1,
        wrapped_key=b"w" * envelope.MAX_WRAPPED_BYTES,
    )
    assert len(header.encode()) + envelope.COMMITMENT_BYTES == HEAD_BYTES


# -- all or nothing ---------------------------------------------------------------------


def test_a_failing_write_leaves_no_file(km: KeyManager, tmp_path: Path) -> None:
    fs = secure(km)
    path = str(tmp_path / "x.bin")
    with pytest.raises(RuntimeError, match="boom"), fs.open(path, "wb") as f:
        write_and_fail(f, data(SEGMENT))
    assert os.listdir(tmp_path) == []
    # fsspec.open's OpenFile closes its file whatever happened: still nothing.
    url = f"secureml::file://{path}"
    with pytest.raises(RuntimeError, match="boom"), fsspec.open(url, "wb", **options(km)) as f:
        write_and_fail(f, data(10))
    assert os.listdir(tmp_path) == []
    fs.pipe_file(path, b"before")
    with pytest.raises(RuntimeError, match="boom"), fs.open(path, "wb") as f:
        write_and_fail(f, b"after")
    assert fs.cat_file(path) == b"before"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_a_failing_write_to_memory_leaves_no_file(km: KeyManager, memory: MemoryFileSystem) -> None:
    fs = secure(km, "memory")

    def not_yet() -> None:
        assert not memory.exists("/m/x")  # not before a clean close

    with pytest.raises(RuntimeError, match="boom"), fs.open("/m/x", "wb") as f:
        write_and_fail(f, b"partial", not_yet)
    assert not memory.exists("/m/x")
    f = fs.open("/m/y", "wb")
    f.write(b"dropped")
    del f
    gc.collect()
    assert not memory.exists("/m/y")


class _Upload(AbstractBufferedFile):  # type: ignore[misc]
    """An object store's file as s3fs and gcsfs make theirs: parts uploaded as the
    buffer fills, the object made only by ``commit`` (at once when autocommitting)."""

    def _initiate_upload(self) -> None:
        self.parts: list[bytes] = []

    def _upload_chunk(self, final: bool = False) -> bool:
        self.parts.append(self.buffer.getvalue())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        self.fs.objects[self.path] = b"".join(self.parts)

    def discard(self) -> None:
        self.fs.discarded.append(self.path)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return bytes(self.fs.objects[self.path][start:end])


class ObjectStore(AbstractFileSystem):  # type: ignore[misc]
    """A flat object store whose files are :class:`_Upload` (1 KiB parts)."""

    protocol = "objects-under-test"
    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.objects: dict[str, bytes] = {}
        self.discarded: list[str] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> _Upload:
        kwargs.pop("block_size", None)
        return _Upload(self, path, mode, block_size=1024, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path not in self.objects:
            raise FileNotFoundError(path)
        return {"name": path, "size": len(self.objects[path]), "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        found = [self.info(name) for name in sorted(self.objects) if name.startswith(path)]
        return found if detail else [entry["name"] for entry in found]


def test_an_object_store_target_commits_only_a_clean_write(km: KeyManager) -> None:
    store = ObjectStore()
    fs = SecureMLFileSystem(fs=store, manager=km, key_name=KEY, segment_size=SEGMENT)
    plain = data(2 * SEGMENT + 3)
    with fs.open("bucket/x", "wb") as f:
        f.write(plain[:100])
        assert store.objects == {}  # parts may be up, the object is not
        f.write(plain[100:])
        assert store.objects == {}
    assert km.decrypt(store.objects["bucket/x"]) == plain
    assert fs.cat_file("bucket/x") == plain
    assert fs.info("bucket/x")["size"] == len(plain)
    with pytest.raises(RuntimeError, match="boom"), fs.open("bucket/y", "wb") as f:
        write_and_fail(f, plain)
    assert sorted(store.objects) == ["bucket/x"]
    assert store.discarded == ["bucket/y"]


def test_a_target_that_writes_in_place_loses_a_failed_file(km: KeyManager, tmp_path: Path) -> None:
    pafs = pytest.importorskip("pyarrow.fs")
    from fsspec.implementations.arrow import ArrowFSWrapper

    fs = SecureMLFileSystem(fs=ArrowFSWrapper(pafs.LocalFileSystem()), manager=km, key_name=KEY)
    path = str(tmp_path / "x")
    fs.pipe_file(path, b"kept")
    assert fs.cat_file(path) == b"kept"
    with pytest.raises(RuntimeError, match="boom"), fs.open(str(tmp_path / "y"), "wb") as f:
        write_and_fail(f, b"lost")
    assert os.listdir(tmp_path) == ["x"]


def test_a_file_dropped_unclosed_leaves_no_file(km: KeyManager, tmp_path: Path) -> None:
    fs = secure(km)
    f = fs.open(str(tmp_path / "x"), "wb")
    f.write(b"dropped")
    del f
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_a_clean_close_inside_an_except_block_still_writes(km: KeyManager, tmp_path: Path) -> None:
    url = f"secureml::file://{tmp_path}/fallback"
    try:
        raise KeyError("handled")
    except KeyError:
        with fsspec.open(url, "wb", **options(km)) as f:
            f.write(b"fallback")
    assert fsspec.open(url, "rb", **options(km)).open().read() == b"fallback"


def test_a_transaction_commits_at_its_end(km: KeyManager, tmp_path: Path) -> None:
    fs = secure(km)
    with fs.transaction:
        fs.pipe_file(str(tmp_path / "a"), b"one")
        fs.pipe_file(str(tmp_path / "b"), b"two")
        assert os.listdir(tmp_path) == []
    assert fs.cat_file(str(tmp_path / "b")) == b"two"
    with pytest.raises(RuntimeError, match="boom"), fs.transaction:
        write_and_fail(fs.open(str(tmp_path / "c"), "wb"), b"three")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_writing_without_a_key_name_fails_clearly(km: KeyManager, tmp_path: Path) -> None:
    url = f"secureml::file://{tmp_path}/x"
    with pytest.raises(ConfigurationError) as caught:
        fsspec.open(url, "wb", secureml={"manager": km}).open()
    assert 'storage_options={"secureml": {"key_name": ' in str(caught.value)
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


# -- authentication ----------------------------------------------------------------------


def test_a_wrong_aad_or_a_tampered_file_is_refused(km: KeyManager, tmp_path: Path) -> None:
    path = str(tmp_path / "x")
    secure(km, aad=b"table=users", segment_size=SEGMENT).pipe_file(path, data(3 * SEGMENT))
    assert len(secure(km, aad=b"table=users").cat_file(path)) == 3 * SEGMENT
    for aad in (b"", b"table=other"):
        with pytest.raises(InvalidCiphertextError):
            secure(km, aad=aad).open(path, "rb")
    stored = bytearray(Path(path).read_bytes())
    stored[-1] ^= 1  # the last segment: proven when the file opens
    Path(path).write_bytes(stored)
    fs = secure(km, aad=b"table=users")
    with pytest.raises(InvalidCiphertextError):
        fs.open(path, "rb")
    stored[-1] ^= 1
    stored[len(stored) // 2] ^= 1  # a segment in between: refused when read
    Path(path).write_bytes(stored)
    with fs.open(path, "rb") as f:
        f.read(10)
        with pytest.raises(InvalidCiphertextError, match="segment"):
            f.read()


# -- the target's own operations ---------------------------------------------------------


def test_copies_and_moves_keep_the_ciphertext(km: KeyManager, memory: MemoryFileSystem) -> None:
    fs = secure(km, "memory", aad=b"ctx")
    fs.pipe_file("/c/a", b"payload")
    fs.cp_file("/c/a", "/c/b")
    fs.copy("/c/a", "/c/c")
    fs.mv("/c/c", "/c/d")
    assert memory.cat_file("/c/a") == memory.cat_file("/c/b")
    assert fs.cat_file("/c/b") == fs.cat_file("/c/d") == b"payload"
    fs.rm("/c/b")
    fs.rm_file("/c/d")
    assert fs.ls("/c", detail=False) == ["/c/a"]
    fs.mkdir("/c/e")
    assert fs.isdir("/c/e")
    fs.rmdir("/c/e")
    fs.rm("/c", recursive=True)
    assert not memory.exists("/c/a")


# -- identity and pickling ---------------------------------------------------------------


def test_it_pickles_with_its_manager_as_a_spec(km: KeyManager, tmp_path: Path) -> None:
    fs = secure(km, aad=b"ctx")
    path = str(tmp_path / "x")
    fs.pipe_file(path, b"for a worker")
    pickled = pickle.dumps(fs)
    key_hex = os.environ["SECUREML_MODELS_KEY"].removeprefix("hex:")
    assert key_hex.encode() not in pickled
    assert bytes.fromhex(key_hex) not in pickled
    back = pickle.loads(pickled)  # noqa: S301 - the test's own bytes
    assert isinstance(back.storage_options["manager"], KeyManagerSpec)
    assert back.cat_file(path) == b"for a worker"
    back.pipe_file(path, b"from a worker")
    assert fs.cat_file(path) == b"from a worker"
    default = SecureMLFileSystem(target_protocol="file")
    default = pickle.loads(pickle.dumps(default))  # noqa: S301 - the test's own bytes
    assert default.storage_options.get("manager") is None


def test_filesystems_with_different_managers_are_never_shared(
    km: KeyManager, memory: MemoryFileSystem
) -> None:
    other = KeyManager(declared_keys=[KEY])  # prints the same as km
    assert repr(other) == repr(km)
    one = fsspec.filesystem("secureml", target_protocol="memory", manager=km)
    two = fsspec.filesystem("secureml", target_protocol="memory", manager=other)
    assert one is not two
    assert one != two
    assert two.manager is other


def test_options_are_checked(km: KeyManager) -> None:
    with pytest.raises(TypeError, match="no option 'add'"):
        SecureMLFileSystem(target_protocol="memory", add=b"typo")
    with pytest.raises(ValueError, match="chained over another filesystem"):
        SecureMLFileSystem(manager=km)
    with pytest.raises(ValueError, match="not both"):
        SecureMLFileSystem(target_protocol="memory", fs=fsspec.filesystem("memory"))
    with pytest.raises(ValueError, match="segment_size"):
        SecureMLFileSystem(target_protocol="memory", segment_size=10)
    with pytest.raises(TypeError, match="manager"):
        SecureMLFileSystem(target_protocol="memory", manager="km")
    inner = fsspec.filesystem("memory")
    assert SecureMLFileSystem(fs=inner, manager=km).fs is inner


# -- review: targets that open only through open(), exceptions reused, forks --------------


def test_writes_through_a_dir_filesystem_are_kept(km: KeyManager, tmp_path: Path) -> None:
    from fsspec.implementations.dirfs import DirFileSystem

    target = DirFileSystem(path=str(tmp_path), fs=fsspec.filesystem("file"))
    fs = SecureMLFileSystem(fs=target, manager=km, key_name=KEY)
    with fs.open("out.bin", "wb") as f:
        f.write(b"important")
    assert km.decrypt((tmp_path / "out.bin").read_bytes()) == b"important"
    with fs.open("out.bin", "rb") as f:
        assert f.read() == b"important"


def test_an_exception_raised_after_open_discards_even_at_a_reused_address(
    km: KeyManager, tmp_path: Path
) -> None:
    """The file opened while one exception was handled; another, raised later (which
    may well get the first one's address), propagates through its close: discarded."""
    kept = 0
    for i in range(20):
        path = tmp_path / f"p{i}"
        try:
            raise KeyError("first")
        except KeyError:
            f = fsspec.open(
                f"secureml::file://{path}", "wb", secureml={"manager": km, "key_name": KEY}
            ).open()
        f.write(b"partial")
        try:
            try:
                raise RuntimeError("mid-write")
            finally:
                f.close()
        except RuntimeError:
            pass
        kept += path.exists()
    assert kept == 0
    try:  # a clean write inside the handler it was opened in still appears
        raise KeyError("handled")
    except KeyError:
        with fsspec.open(
            f"secureml::file://{tmp_path}/ok", "wb", secureml={"manager": km, "key_name": KEY}
        ) as f:
            f.write(b"whole")
    assert km.decrypt((tmp_path / "ok").read_bytes()) == b"whole"


def test_a_forked_child_leaves_its_parents_file_alone(km: KeyManager, tmp_path: Path) -> None:
    fs = SecureMLFileSystem(target_protocol="memory", manager=km, key_name=KEY)
    path = f"/fork-{os.getpid()}.bin"
    try:
        with fs.open(path, "wb") as f:
            f.write(b"parent's ")
            pid = os.fork()
            if pid == 0:
                code = 0
                for use in (lambda: f.write(b"child"), f.commit, f.close):
                    try:
                        use()
                        code = 1
                    except RuntimeError:
                        pass
                f.discard()  # quietly lets go
                os._exit(code)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            f.write(b"bytes")
        with fs.open(path, "rb") as f:
            assert f.read() == b"parent's bytes"
    finally:
        fsspec.filesystem("memory").rm(path)


def test_specs_that_print_alike_never_share_a_filesystem_token(km: KeyManager) -> None:
    seen_a: list[object] = []
    seen_b: list[object] = []
    specs = [
        KeyManager(declared_keys=[KEY], audit_hook=hook).spec()
        for hook in (seen_a.append, seen_b.append)
    ]
    a, b = (SecureMLFileSystem(target_protocol="memory", manager=spec) for spec in specs)
    assert a._fs_token != b._fs_token  # Dask would otherwise reuse one for the other
    assert a != b
