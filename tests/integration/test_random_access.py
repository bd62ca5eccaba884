"""``km.open_encrypted`` under the readers ML code uses: ``torch.load`` of an encrypted
state dict, and pyarrow reading one column of an encrypted Parquet file, which opens
only the segments holding the footer and that column."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from secureml.key_management import InvalidCiphertextError, KeyManager
from secureml.key_management._seekable import EncryptedReader

pytestmark = pytest.mark.integration


@pytest.fixture
def km(monkeypatch: pytest.MonkeyPatch) -> KeyManager:
    monkeypatch.setenv("SECUREML_MODELS_KEY", "hex:" + os.urandom(32).hex())
    return KeyManager(declared_keys=["models/key"])


def test_torch_loads_an_encrypted_state_dict(km: KeyManager, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(64, 8)
    with km.open_encrypting(tmp_path / "m.pt.sml", "models/key") as out:
        torch.save(model.state_dict(), out)  # no plaintext on disk, either way
    with km.open_encrypted(tmp_path / "m.pt.sml") as f:
        state = torch.load(f, weights_only=True)
    assert torch.equal(state["weight"], model.state_dict()["weight"])


def test_pyarrow_reads_one_column_from_only_its_segments(km: KeyManager, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = 1_000_000
    table = pa.table(
        {
            "a": pa.array(range(rows), pa.int64()),
            "b": pa.array([os.urandom(8) for _ in range(rows)], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", compression="none", row_group_size=rows)
    km.encrypt_file(tmp_path / "t.parquet", tmp_path / "t.parquet.sml", "models/key")
    with km.open_encrypted(tmp_path / "t.parquet.sml") as f:
        assert isinstance(f, EncryptedReader)
        opened: set[int] = set()
        real = f._cipher_or_none.open_into  # type: ignore[union-attr]

        def counted(index: int, segment: object, last: bool, out: memoryview) -> None:
            opened.add(index)
            real(index, segment, last, out)  # type: ignore[arg-type]

        f._cipher_or_none.open_into = counted  # type: ignore[method-assign,union-attr]
        back = pq.read_table(f, columns=["a"])
    assert back.column("a").to_pylist()[:3] == [0, 1, 2]
    assert back.num_rows == rows
    # Column b's segments were never opened (column a's 8 MB are about 40% of the file).
    assert 0 < len(opened) < f._count * 0.6
    assert f.segments_decrypted >= len(opened)  # type: ignore[attr-defined]


# -- segment_size= ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [64 << 10, 100_000, 4 << 20])
def test_a_chosen_segment_size_is_recorded_and_read_back(
    km: KeyManager, tmp_path: Path, size: int
) -> None:
    from secureml.key_management import _envelope as envelope

    data = os.urandom(3 * size + 5)
    (tmp_path / "p").write_bytes(data)
    km.encrypt_file(tmp_path / "p", tmp_path / "a.sml", "models/key", segment_size=size)
    with km.open_encrypting(tmp_path / "b.sml", "models/key", segment_size=size) as out:
        out.write(data)
    streamed = tmp_path / "c.sml"
    with open(tmp_path / "p", "rb") as src, open(streamed, "wb") as dst:
        km.encrypt_stream(src, dst, "models/key", segment_size=size)
    for path in ("a.sml", "b.sml", "c.sml"):
        blob = (tmp_path / path).read_bytes()
        assert envelope.parse_header(blob)[0].segment_bytes == size
        assert km.decrypt(blob) == data
        with km.open_encrypted(tmp_path / path) as f:
            f.seek(2 * size - 3)
            assert f.read(6) == data[2 * size - 3 : 2 * size + 3]
            # The last segment (at open), and the two this read straddles.
            assert f.segments_decrypted == 3  # type: ignore[attr-defined]


def test_small_segments_decrypt_less_per_small_read(km: KeyManager, tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    (tmp_path / "p").write_bytes(data)
    km.encrypt_file(tmp_path / "p", tmp_path / "s.sml", "models/key", segment_size=64 << 10)
    with km.open_encrypted(tmp_path / "s.sml") as f:
        for offset in range(0, len(data) - 4096, 1 << 20):
            f.seek(offset)
            assert f.read(4096) == data[offset : offset + 4096]
        assert f.segments_decrypted == 1 + 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ((64 << 10) - 1, ValueError),
        ((4 << 20) + 1, ValueError),
        (0, ValueError),
        (True, TypeError),
        (1.5, TypeError),
        ("1MiB", TypeError),
    ],
)
def test_a_segment_size_out_of_range_is_refused_before_anything_is_written(
    km: KeyManager, tmp_path: Path, bad: object, error: type[Exception]
) -> None:
    (tmp_path / "p").write_bytes(b"x")
    with pytest.raises(error, match="segment_size"):
        km.encrypt_file(tmp_path / "p", tmp_path / "a.sml", "models/key", segment_size=bad)  # type: ignore[arg-type]
    with pytest.raises(error, match="segment_size"):
        km.open_encrypting(tmp_path / "b.sml", "models/key", segment_size=bad)  # type: ignore[arg-type]
    with pytest.raises(error, match="segment_size"):
        km.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), "models/key", segment_size=bad)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_reencryption_keeps_the_segment_size(km: KeyManager, tmp_path: Path) -> None:
    from secureml.key_management import _envelope as envelope

    (tmp_path / "p").write_bytes(os.urandom(300_000))
    km.encrypt_file(tmp_path / "p", tmp_path / "a.sml", "models/key", segment_size=64 << 10)
    km.reencrypt_file(tmp_path / "a.sml", tmp_path / "a.sml")
    header = envelope.parse_header((tmp_path / "a.sml").read_bytes())[0]
    assert header.segment_bytes == 64 << 10
    assert km.decrypt((tmp_path / "a.sml").read_bytes()) == (tmp_path / "p").read_bytes()


# -- open_encrypting into a file object --------------------------------------------------


def test_open_encrypting_writes_into_a_file_object_and_leaves_it_open(
    km: KeyManager,
) -> None:
    data = os.urandom((1 << 20) + 17)
    sink = io.BytesIO()
    sink.write(b"prefix")
    with km.open_encrypting(sink, "models/key") as out:
        out.write(data)
    assert not sink.closed
    sink.seek(len(b"prefix"))
    with km.open_encrypted(sink) as f:  # the message starts where the writer started
        assert f.read() == data
    assert km.decrypt(sink.getvalue()[len(b"prefix") :]) == data


def test_an_error_writing_into_a_file_object_leaves_it_to_its_owner(km: KeyManager) -> None:
    sink = io.BytesIO()

    def write_then_fail() -> None:
        with km.open_encrypting(sink, "models/key") as out:
            out.write(os.urandom(2 << 20))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert not sink.closed
    with pytest.raises(InvalidCiphertextError):  # the last segment was never sealed
        km.decrypt(sink.getvalue())


def test_open_encrypting_refuses_a_text_file_or_a_non_file(km: KeyManager, tmp_path: Path) -> None:
    with open(tmp_path / "t", "w") as text, pytest.raises(TypeError, match="binary mode"):
        km.open_encrypting(text, "models/key")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="writable binary file object"):
        km.open_encrypting(42, "models/key")  # type: ignore[arg-type]
