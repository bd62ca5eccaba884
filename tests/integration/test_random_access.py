"""``km.open_encrypted`` under the readers ML code uses: ``torch.load`` of an encrypted
state dict, and pyarrow reading one column of an encrypted Parquet file, which opens
only the segments holding the footer and that column."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secureml.key_management import KeyManager
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
        real = f._cipher_or_none.open  # type: ignore[union-attr]

        def counted(index: int, segment: object, last: bool) -> bytes:
            opened.add(index)
            return real(index, segment, last)  # type: ignore[arg-type]

        f._cipher_or_none.open = counted  # type: ignore[method-assign,union-attr]
        back = pq.read_table(f, columns=["a"])
    assert back.column("a").to_pylist()[:3] == [0, 1, 2]
    assert back.num_rows == rows
    assert len(opened) < f._count * 0.6  # column b's segments were never opened
