"""secureml.columns over an in-memory versioned store: the cell formats (and Tink's
reading of deterministic cells), round trips over lists, pyarrow and pandas, rotation,
and what never decrypts (tampered, moved or foreign cells; keys that are no keys)."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secureml.columns import (
    METADATA_KEY,
    ColumnCipher,
    InvalidCellError,
    _arrow,
    _cells,
    _values,
    decrypt_columns,
    encrypt_columns,
)
from secureml.key_management import (
    AccessEvent,
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    UnsupportedOperationError,
)
from tests.support.memory_backend import MemoryVersions

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

TEXT = ["alice@example.com", None, "", "Zoë 🌍 ü", "alice@example.com", "b" * 300]
BINARY = [b"\x00\xff", None, b"", b"x" * (1 << 20), b"\x00\xff"]
DECRYPTABLE = ("deterministic", "randomized")
MODES = ("deterministic", "randomized", "tokenize")


@pytest.fixture
def store() -> MemoryVersions:
    return MemoryVersions()


@pytest.fixture
def km(store: MemoryVersions) -> KeyManager:
    manager = KeyManager(backend=store, use_env_fallback=False)
    manager.generate_key("pii")
    return manager


def _hkdf(key: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    return HKDF(SHA256(), length, salt, info).derive(key)


def _flip(cell: bytes, at: int = -1) -> bytes:
    changed = bytearray(cell)
    changed[at] ^= 0x01
    return bytes(changed)


# -- cell formats -----------------------------------------------------------------------


def test_deterministic_cells_are_tink_daead_cells_of_the_derived_key(km: KeyManager) -> None:
    key = km.get_encryption_key("pii", version=1)
    k64 = _hkdf(key, b"secureml/columns/v1/deterministic", 64)
    cells = km.column_cipher("pii", column="email").encrypt(["a@x", ""])
    for plain, cell in zip([b"a@x", b""], cells, strict=True):
        assert cell == b"\x01\x00\x00\x00\x01" + AESSIV(k64).encrypt(plain, [b"email"])


def test_tink_and_cryptography_engines_make_the_same_deterministic_cells(
    km: KeyManager, store: MemoryVersions, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tink")
    with_tink = km.column_cipher("pii", column="email")
    assert _cells.SivKey(bytes(64), 3).seal is not None  # tink is in the dev extra
    monkeypatch.setattr(_cells, "_tink_daead_of", lambda key, version: None)
    assert _cells.SivKey(bytes(64), 3).seal is None
    without = KeyManager(backend=store, use_env_fallback=False).column_cipher("pii", column="email")
    for values in (TEXT, BINARY, [b"x", bytearray(b"y"), None]):
        cells = with_tink.encrypt(values)
        assert cells == without.encrypt(values)
        assert without.decrypt(cells) == with_tink.decrypt(cells)


def test_randomized_cells_open_with_the_batch_subkey(km: KeyManager) -> None:
    key = km.get_encryption_key("pii", version=1)
    k_rand = _hkdf(key, b"secureml/columns/v1/randomized", 32)
    cells = km.column_cipher("pii", "randomized", column="ssn").encrypt(["1", "2", None, "4"])
    salts = {c[5:21] for c in cells if c is not None}
    assert len(salts) == 1  # one batch: one subkey
    for i, (plain, cell) in enumerate(zip(["1", "2", None, "4"], cells, strict=True)):
        if plain is None:
            assert cell is None
            continue
        assert cell is not None
        assert cell[:5] == b"\x01\x00\x00\x00\x01"
        assert cell[21:33] == i.to_bytes(12, "big")  # the counter nonce
        subkey = _hkdf(k_rand, b"batch", 32, salt=cell[5:21])
        assert AESGCM(subkey).decrypt(cell[21:33], cell[33:], b"ssn") == plain.encode()


def test_tokens_are_hmac_of_the_length_prefixed_column_and_value(km: KeyManager) -> None:
    key = km.get_encryption_key("pii", version=1)
    k_tok = _hkdf(key, b"secureml/columns/v1/tokenize", 32)
    tokens = km.column_cipher("pii", "tokenize", column="user").encrypt(["u1", None, b"u1"])
    expected = hmac.digest(k_tok, b"\x00\x00\x00\x04user" + b"u1", hashlib.sha256)
    assert tokens == [expected, None, expected]


def test_randomized_batches_split_before_the_nonce_counter_wraps(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cells, "BATCH_CELLS", 3)
    cipher = km.column_cipher("pii", "randomized", column="c")
    values = [str(i) for i in range(10)]
    cells = cipher.encrypt(values)
    assert len({c[5:21] for c in cells}) == 4  # 3 + 3 + 3 + 1
    assert [c[21:33] for c in cells[:4]] == [i.to_bytes(12, "big") for i in (0, 1, 2, 0)]
    assert cipher.decrypt(cells, text=True) == values


def test_tink_decrypts_our_deterministic_cells_and_we_decrypt_its(km: KeyManager) -> None:
    try:
        from tink import cleartext_keyset_handle, daead
        from tink.proto import aes_siv_pb2, tink_pb2
    except ImportError as exc:  # pragma: no cover - tink is in the dev extra
        pytest.skip(f"tink is not installed: {exc}")
    km.rotate_key("pii")  # version 2: the key id Tink must find
    key = km.get_encryption_key("pii", version=2)
    k64 = _hkdf(key, b"secureml/columns/v1/deterministic", 64)
    daead.register()
    keyset = tink_pb2.Keyset(primary_key_id=2)
    entry = keyset.key.add()
    entry.key_data.type_url = "type.googleapis.com/google.crypto.tink.AesSivKey"
    entry.key_data.value = aes_siv_pb2.AesSivKey(version=0, key_value=k64).SerializeToString()
    entry.key_data.key_material_type = tink_pb2.KeyData.SYMMETRIC
    entry.status = tink_pb2.ENABLED
    entry.key_id = 2
    entry.output_prefix_type = tink_pb2.TINK
    tink_daead = cleartext_keyset_handle.from_keyset(keyset).primitive(daead.DeterministicAead)

    cipher = km.column_cipher("pii", column="email")
    ours = cipher.encrypt(["a@example.com", ""])
    assert [tink_daead.decrypt_deterministically(c, b"email") for c in ours] == [
        b"a@example.com",
        b"",
    ]
    theirs = [tink_daead.encrypt_deterministically(p, b"email") for p in (b"tink", b"")]
    assert theirs == cipher.encrypt([b"tink", b""])
    assert cipher.decrypt(theirs) == [b"tink", b""]


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", DECRYPTABLE)
def test_lists_round_trip(km: KeyManager, mode: str) -> None:
    cipher = km.column_cipher("pii", mode, column="c")  # type: ignore[arg-type]
    text_cells = cipher.encrypt(TEXT)
    assert text_cells[1] is None
    assert all(isinstance(c, bytes) for i, c in enumerate(text_cells) if i != 1)
    assert cipher.decrypt(text_cells, text=True) == TEXT
    assert cipher.decrypt(text_cells) == [None if v is None else v.encode() for v in TEXT]
    assert cipher.decrypt(cipher.encrypt(BINARY)) == BINARY
    assert cipher.encrypt([]) == []
    assert cipher.decrypt(cipher.encrypt(iter(("x", bytearray(b"y"))))) == [b"x", b"y"]


@pytest.mark.parametrize("mode", DECRYPTABLE)
@pytest.mark.parametrize(
    ("arrow_type", "cells_type", "values"),
    [
        ("string", "binary", TEXT),
        ("large_string", "large_binary", TEXT),
        ("binary", "binary", BINARY),
        ("large_binary", "large_binary", BINARY),
        ("string_view", "binary", TEXT),
        ("binary_view", "binary", BINARY),
    ],
)
def test_arrow_arrays_round_trip(
    km: KeyManager, mode: str, arrow_type: str, cells_type: str, values: list[Any]
) -> None:
    make = getattr(pa, arrow_type, None)
    if make is None:  # pragma: no cover - view types came in pyarrow 16
        pytest.skip(f"pyarrow {pa.__version__} has no {arrow_type}")
    cipher = km.column_cipher("pii", mode, column="c")  # type: ignore[arg-type]
    array = pa.array(values, type=make())
    cells = cipher.encrypt(array)
    assert isinstance(cells, pa.Array)
    assert str(cells.type) == cells_type
    assert cells.null_count == array.null_count
    text = arrow_type.endswith("string") or arrow_type == "string_view"
    opened = cipher.decrypt(cells, text=text)
    assert opened.to_pylist() == values


@pytest.mark.parametrize("mode", MODES)
def test_chunked_dictionary_and_null_arrays(km: KeyManager, mode: str) -> None:
    cipher = km.column_cipher("pii", mode, column="c")  # type: ignore[arg-type]
    chunked = pa.chunked_array([pa.array(TEXT[:3]), pa.array([], pa.string()), pa.array(TEXT[3:])])
    cells = cipher.encrypt(chunked)
    assert isinstance(cells, pa.ChunkedArray)
    assert cells.num_chunks == 3
    assert cells.type == pa.binary()
    dictionary = pa.array(TEXT).dictionary_encode()
    dictionary_cells = cipher.encrypt(dictionary)
    nulls = cipher.encrypt(pa.nulls(3))
    assert nulls.type == pa.binary()
    assert nulls.null_count == 3
    if mode == "tokenize":
        assert cells.combine_chunks().equals(dictionary_cells)
        return
    assert cipher.decrypt(cells, text=True).to_pylist() == TEXT
    assert cipher.decrypt(dictionary_cells, text=True).to_pylist() == TEXT
    assert cipher.decrypt(nulls).to_pylist() == [None] * 3
    assert cipher.decrypt(pa.chunked_array([], pa.binary())).num_chunks == 0


def test_equal_values_are_encrypted_once_when_they_repeat(km: KeyManager) -> None:
    """The dictionary path gives the same cells as encrypting every value."""
    cipher = km.column_cipher("pii", column="country")
    values = [f"c{i % 37}" if i % 11 else None for i in range(20_000)]
    assert _values.worth_deduplicating(values)
    array = pa.array(values)
    assert _arrow._arrow_worth_deduplicating(pa, array)
    once = cipher.encrypt(values)
    distinct = {v: cipher.encrypt([v])[0] for v in set(values)}
    assert once == [distinct[v] for v in values]
    assert cipher.encrypt(array).to_pylist() == once
    assert cipher.decrypt(pa.array(once, pa.binary()), text=True).to_pylist() == values
    assert not _values.worth_deduplicating([str(i) for i in range(20_000)])
    assert not _arrow._arrow_worth_deduplicating(pa, pa.array([str(i) for i in range(20_000)]))


@pytest.mark.parametrize("mode", DECRYPTABLE)
def test_pandas_frames_round_trip_with_their_dtypes(km: KeyManager, mode: str) -> None:
    frame = pd.DataFrame(
        {
            "email": pd.Series(["a@x", None, "", "é"], dtype=object),
            "name": pd.Series(["A", None, "C", "D"], dtype="string"),
            "plain": pd.Series(["A", None, "C", "D"]),  # pandas' default text dtype
            "blob": pd.Series([b"\x00", None, b"", b"z" * 70_000], dtype=object),
            "kind": pd.Categorical(["x", "y", "x", None]),
            "n": [1, 2, 3, 4],
        }
    ).set_axis([10, 20, 30, 40])
    frame.attrs["owner"] = "team"
    columns = ["email", "name", "plain", "blob", "kind"]
    encrypted = encrypt_columns(frame, columns, key_name="pii", mode=mode, manager=km)  # type: ignore[arg-type]
    assert list(encrypted.index) == [10, 20, 30, 40]
    for name in columns:
        assert encrypted[name].dtype == object
        assert encrypted[name].iloc[3 if name == "kind" else 1] is None
        assert isinstance(encrypted[name].iloc[0], bytes)
    assert frame["email"].iloc[0] == "a@x"  # the input is left alone
    records = encrypted.attrs[METADATA_KEY]
    assert records["email"] == {
        "format": 1,
        "key": "pii",
        "version": 1,
        "mode": mode,
        "type": "string",
        "column": "email",
        "dtype": "object",
    }
    assert encrypted.attrs["owner"] == "team"
    decrypted = decrypt_columns(encrypted, manager=km)
    pd.testing.assert_frame_equal(decrypted, frame)
    assert METADATA_KEY not in decrypted.attrs
    assert decrypted.attrs == {"owner": "team"}


@pytest.mark.parametrize("mode", DECRYPTABLE)
def test_arrow_tables_round_trip_with_their_types(km: KeyManager, mode: str) -> None:
    table = pa.table(
        {
            "email": pa.chunked_array([["a@x", None], ["", "é"]]),
            "blob": pa.array([b"\x00", None, b"", b"z"], pa.large_binary()),
            "n": [1, 2, 3, 4],
        }
    )
    table = table.replace_schema_metadata({b"origin": b"test"})
    encrypted = encrypt_columns(table, ["email", "blob"], key_name="pii", mode=mode, manager=km)  # type: ignore[arg-type]
    assert isinstance(encrypted, pa.Table)
    assert encrypted.schema.field("email").type == pa.binary()
    assert encrypted.schema.field("blob").type == pa.large_binary()
    assert encrypted.column("email").num_chunks == 2
    record = json.loads(encrypted.schema.field("email").metadata[b"secureml.columns"])
    assert record == {
        "format": 1,
        "key": "pii",
        "version": 1,
        "mode": mode,
        "type": "string",
        "column": "email",
    }
    decrypted = decrypt_columns(encrypted, manager=km)
    assert decrypted.equals(table)
    assert decrypted.schema.field("email").metadata is None
    assert decrypted.schema.metadata == {b"origin": b"test"}
    batch = table.to_batches()[0]
    encrypted_batch = encrypt_columns(batch, "email", key_name="pii", mode=mode, manager=km)  # type: ignore[arg-type]
    assert isinstance(encrypted_batch, pa.RecordBatch)
    assert decrypt_columns(encrypted_batch, manager=km).equals(batch)


def test_a_table_from_pandas_still_converts_to_pandas_and_back(km: KeyManager) -> None:
    frame = pd.DataFrame({"email": pd.Series(["a", None], dtype="string"), "n": [1, 2]})
    table = pa.Table.from_pandas(frame)
    encrypted = encrypt_columns(table, "email", key_name="pii", manager=km)
    cells = encrypted.to_pandas()  # pandas' metadata says bytes now, not text
    assert isinstance(cells["email"].iloc[0], bytes)
    decrypted = decrypt_columns(encrypted, manager=km)
    pd.testing.assert_frame_equal(decrypted.to_pandas(), frame)


def test_records_survive_parquet_files(km: KeyManager, tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    table = pa.table({"email": ["a", None, "c"]})
    pq.write_table(encrypt_columns(table, "email", key_name="pii", manager=km), tmp_path / "t")
    assert decrypt_columns(pq.read_table(tmp_path / "t"), manager=km).equals(table)
    frame = pd.DataFrame({"email": ["a", None, "c"]})
    encrypt_columns(frame, "email", key_name="pii", manager=km).to_parquet(tmp_path / "f")
    read = pd.read_parquet(tmp_path / "f")
    pd.testing.assert_frame_equal(decrypt_columns(read, manager=km), frame)


def test_null_typed_columns_round_trip(km: KeyManager) -> None:
    table = pa.table({"nothing": pa.nulls(3), "s": ["a", "b", None]})
    encrypted = encrypt_columns(table, ["nothing", "s"], key_name="pii", manager=km)
    assert encrypted.column("nothing").type == pa.binary()
    assert decrypt_columns(encrypted, manager=km).equals(table)


def test_a_declared_environment_key_makes_version_0_cells(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECUREML_ENV_KEY", "hex:" + "ab" * 32)
    km = KeyManager(declared_keys=["env_key"])
    cipher = km.column_cipher("env_key", column="c")
    cells = cipher.encrypt(["x"])
    assert cipher.key_version == 0
    assert cells[0][:5] == b"\x01\x00\x00\x00\x00"
    assert KeyManager(declared_keys=["env_key"]).column_cipher("env_key", column="c").decrypt(
        cells
    ) == [b"x"]
    with pytest.raises(ConfigurationError, match="not a managed key"):
        KeyManager().column_cipher("env_key", column="c")  # not declared: no key


def test_one_cipher_serves_many_threads(km: KeyManager) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for mode in DECRYPTABLE:
        cipher = km.column_cipher("pii", mode, column="c")  # type: ignore[arg-type]

        def round_trip(i: int, cipher: ColumnCipher = cipher) -> bool:
            values = [f"{i}-{j}" for j in range(500)]
            return bool(cipher.decrypt(cipher.encrypt(values), text=True) == values)

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(round_trip, range(32)))


def test_pandas_series_in_series_out(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", column="s")
    series = pd.Series(["a", None, "b"], index=[5, 6, 7], name="s")
    cells = cipher.encrypt(series)
    assert list(cells.index) == [5, 6, 7]
    assert cells.dtype == object
    assert cells.iloc[1] is None
    assert cipher.decrypt(cells, text=True).tolist() == ["a", None, "b"]


# -- what it is for -----------------------------------------------------------------------


def test_deterministic_cells_join(km: KeyManager) -> None:
    users = pd.DataFrame({"email": ["a@x", "b@x", "c@x"], "name": ["A", "B", "C"]})
    orders = pd.DataFrame({"email": ["b@x", "a@x", "b@x", "z@x"], "total": [1, 2, 3, 4]})
    expected = users.merge(orders, on="email")
    users_enc = encrypt_columns(users, "email", key_name="pii", manager=km)
    orders_enc = encrypt_columns(orders, "email", key_name="pii", manager=km)
    joined = users_enc.merge(orders_enc, on="email")
    joined.attrs = users_enc.attrs
    pd.testing.assert_frame_equal(decrypt_columns(joined, manager=km), expected)
    counts = orders_enc.groupby("email").size()
    assert sorted(counts.tolist()) == [1, 1, 2]


def test_tokens_join_and_stay_tokens(km: KeyManager) -> None:
    left = encrypt_columns(
        pd.DataFrame({"id": ["1", "2"]}), "id", key_name="pii", mode="tokenize", manager=km
    )
    right = encrypt_columns(
        pd.DataFrame({"id": ["2", "3"]}), "id", key_name="pii", mode="tokenize", manager=km
    )
    assert len(left.merge(right, on="id")) == 1
    assert all(len(t) == 32 for t in left["id"])
    assert decrypt_columns(left, manager=km)["id"].tolist() == left["id"].tolist()
    with pytest.raises(UnsupportedOperationError, match="one-way"):
        decrypt_columns(left, ["id"], manager=km)
    with pytest.raises(UnsupportedOperationError, match="one-way"):
        km.column_cipher("pii", "tokenize", column="id").decrypt(left["id"].tolist())


def test_randomized_cells_of_equal_values_differ(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", "randomized", column="c")
    cells = cipher.encrypt(["same"] * 100)
    again = cipher.encrypt(["same"] * 100)
    assert len(set(cells) | set(again)) == 200
    assert cipher.decrypt(cells + again, text=True) == ["same"] * 200


def test_cells_of_older_versions_decrypt_after_rotations(km: KeyManager) -> None:
    table = pa.table({"email": ["a", None, "c"]})
    old = encrypt_columns(table, "email", key_name="pii", manager=km)
    km.rotate_key("pii")
    new = encrypt_columns(table, "email", key_name="pii", manager=km)
    assert new.column("email")[0].as_py()[:5] == b"\x01\x00\x00\x00\x02"
    assert old.column("email")[0].as_py() != new.column("email")[0].as_py()
    mixed = pa.concat_tables([old, new.cast(old.schema)])
    assert decrypt_columns(mixed, manager=km).column("email").to_pylist() == ["a", None, "c"] * 2
    for mode in DECRYPTABLE:
        km.rotate_key("pii")
        cipher = km.column_cipher("pii", mode, column="c")
        assert cipher.key_version == km.key_versions("pii")[-1].version
        cells = cipher.encrypt(["x"])
        km.rotate_key("pii")
        assert km.column_cipher("pii", mode, column="c").decrypt(cells) == [b"x"]


def test_a_pinned_version_keeps_cells_equal_across_rotations(km: KeyManager) -> None:
    before = km.column_cipher("pii", column="email").encrypt(["a@x"])
    km.rotate_key("pii")
    assert km.column_cipher("pii", column="email").encrypt(["a@x"]) != before
    pinned = km.column_cipher("pii", column="email", version=1)
    assert pinned.key_version == 1
    assert pinned.encrypt(["a@x"]) == before
    with pytest.raises(ConfigurationError, match="version 7"):
        km.column_cipher("pii", column="email", version=7)


# -- what never decrypts ------------------------------------------------------------------


@pytest.mark.parametrize("mode", DECRYPTABLE)
def test_tampered_moved_and_foreign_cells_name_column_and_row(km: KeyManager, mode: str) -> None:
    table = pa.table({"a": ["a0", "a1", "a2", "a3"], "b": ["b0", "b1", "b2", "b3"]})
    encrypted = encrypt_columns(table, ["a", "b"], key_name="pii", mode=mode, manager=km)  # type: ignore[arg-type]
    a = encrypted.column("a").to_pylist()
    b = encrypted.column("b").to_pylist()

    def with_a(cells: list[Any]) -> Any:
        field = encrypted.schema.field("a")
        return encrypted.set_column(0, field, pa.array(cells, pa.binary()))

    cases = {
        "tampered": ([*a[:2], _flip(a[2]), a[3]], 2),
        "from column b": ([a[0], b[1], a[2], a[3]], 1),
        "truncated": ([a[0], a[1], a[2], a[3][:20]], 3),
        "version byte": ([a[0], a[1], a[2], a[3][:4] + b"\x09" + a[3][5:]], 3),
        "format byte": ([b"\x02" + a[0][1:], *a[1:]], 0),
    }
    for what, (cells, row) in cases.items():
        with pytest.raises(InvalidCellError) as caught:
            decrypt_columns(with_a(cells), manager=km)
        assert caught.value.column == "a", what
        assert caught.value.row == row, what
        assert "column 'a', row" in str(caught.value)
        assert "a0" not in str(caught.value)
        assert isinstance(caught.value, InvalidCiphertextError)

    swapped = encrypted.rename_columns(["b", "a"])  # whole columns swapped, records too
    with pytest.raises(InvalidCellError, match="encrypted as 'a'") as caught:
        decrypt_columns(swapped, manager=km)
    assert caught.value.row == 0


def test_a_wrong_key_and_rows_in_later_chunks(km: KeyManager) -> None:
    km.generate_key("other")
    cells = km.column_cipher("pii", column="c").encrypt(pa.array(["x", "y"]))
    with pytest.raises(InvalidCellError, match="does not authenticate") as caught:
        km.column_cipher("other", column="c").decrypt(cells)
    assert caught.value.row == 0
    good = km.column_cipher("pii", column="c").encrypt(pa.array(["x", "y", "z"]))
    bad = pa.array([good[0].as_py(), _flip(good[1].as_py())], pa.binary())
    chunked = pa.chunked_array([good, bad])
    with pytest.raises(InvalidCellError) as caught:
        km.column_cipher("pii", column="c").decrypt(chunked)
    assert caught.value.row == 4


def test_a_tampered_cell_among_repeated_values_names_its_row(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", column="c")
    cells = cipher.encrypt([f"v{i % 5}" for i in range(10_000)])
    cells[7777] = _flip(cells[7777])
    with pytest.raises(InvalidCellError) as caught:
        cipher.decrypt(cells)
    assert caught.value.row == 7777
    with pytest.raises(InvalidCellError) as caught:
        cipher.decrypt(pa.array(cells, pa.binary()))
    assert caught.value.row == 7777


def test_what_is_no_cell_is_an_invalid_cell(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", column="c")
    for junk in ("text", 5, b"", b"\x01\x00\x00\x00\x01" + b"x" * 10):
        with pytest.raises(InvalidCellError) as caught:
            cipher.decrypt([None, junk])
        assert caught.value.row == 1
    with pytest.raises(InvalidCellError, match="not UTF-8"):
        cipher.decrypt(cipher.encrypt([b"\xff"]), text=True)
    with pytest.raises(InvalidCellError, match="not UTF-8") as caught:
        cipher.decrypt(cipher.encrypt(pa.array([b"ok", b"\xff"])), text=True)
    assert caught.value.row == 1


def test_malformed_records(km: KeyManager) -> None:
    encrypted = encrypt_columns(pa.table({"a": ["x"]}), "a", key_name="pii", manager=km)
    for record in (b"{", b'{"format": 2}', json.dumps({"format": 1, "key": "pii"}).encode()):
        field = encrypted.schema.field("a").with_metadata({b"secureml.columns": record})
        broken = encrypted.set_column(0, field, encrypted.column("a"))
        with pytest.raises(InvalidCellError, match="record is malformed") as caught:
            decrypt_columns(broken, manager=km)
        assert caught.value.row is None
    frame = encrypt_columns(pd.DataFrame({"a": ["x"]}), "a", key_name="pii", manager=km)
    frame.attrs[METADATA_KEY]["a"]["dtype"] = "int64"
    with pytest.raises(InvalidCellError, match="dtype 'int64'"):
        decrypt_columns(frame, manager=km)


def test_unsupported_types_are_type_errors_naming_column_and_type(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", column="age")
    with pytest.raises(TypeError, match=r"column 'age', row 2: a value of type int"):
        cipher.encrypt(["1", None, 3])
    with pytest.raises(TypeError, match="column 'age' is of type int64"):
        cipher.encrypt(pa.array([1, 2]))
    with pytest.raises(TypeError, match="not a single str"):
        cipher.encrypt("abc")
    with pytest.raises(ValueError, match="row 0: the str is not valid Unicode"):
        cipher.encrypt(["\ud800"])
    with pytest.raises(TypeError, match="column 'n' is of type int64"):
        encrypt_columns(pd.DataFrame({"n": [1, 2]}), "n", key_name="pii", manager=km)
    with pytest.raises(TypeError, match="column 'n' is of type double"):
        encrypt_columns(pa.table({"n": [1.5]}), "n", key_name="pii", manager=km)
    mixed = pd.DataFrame({"m": ["secret-text", b"secret-bytes"]})
    with pytest.raises(TypeError, match="column 'm'") as caught:
        encrypt_columns(mixed, "m", key_name="pii", manager=km)
    assert "secret" not in str(caught.value)
    with pytest.raises(TypeError, match="cells are binary"):
        cipher.decrypt(pa.array(["text"]))
    with pytest.raises(TypeError, match="pandas DataFrame or a pyarrow Table"):
        encrypt_columns({"a": ["x"]}, "a", key_name="pii", manager=km)


def test_table_argument_errors(km: KeyManager) -> None:
    table = pa.table({"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="no column 'z'"):
        encrypt_columns(table, "z", key_name="pii", manager=km)
    encrypted = encrypt_columns(table, "a", key_name="pii", manager=km)
    with pytest.raises(ValueError, match="already encrypted"):
        encrypt_columns(encrypted, "a", key_name="pii", manager=km)
    with pytest.raises(ValueError, match=r"no secureml\.columns record"):
        decrypt_columns(encrypted, ["b"], manager=km)
    duplicated = pa.Table.from_arrays([pa.array(["x"]), pa.array(["y"])], names=["a", "a"])
    with pytest.raises(ValueError, match="appears 2 times"):
        encrypt_columns(duplicated, "a", key_name="pii", manager=km)
    with pytest.raises(ValueError, match="mode must be one of"):
        km.column_cipher("pii", "ecb", column="a")  # type: ignore[arg-type]
    assert encrypt_columns(table, [], key_name="pii", manager=km) is table


# -- which keys serve ---------------------------------------------------------------------


def test_deterministic_columns_need_an_aessiv_that_takes_empty_values(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _cells.siv_takes_empty_values()  # cryptography 46 and later
    monkeypatch.setattr(_cells, "siv_takes_empty_values", lambda: False)
    with pytest.raises(ConfigurationError, match="cryptography 46 or later"):
        km.column_cipher("pii", column="c")
    assert km.column_cipher("pii", "randomized", column="c").encrypt([""])[0] is not None


def test_a_plain_secret_is_no_column_key(km: KeyManager, store: MemoryVersions) -> None:
    km.set_secret("db_password", "hunter2")
    km.set_secret("raw_bytes", b"k" * 32)  # bytes, but not labelled as a managed key
    for name in ("db_password", "raw_bytes"):
        with pytest.raises(ConfigurationError, match="not a managed key"):
            km.column_cipher(name, column="c")
        with pytest.raises(ConfigurationError, match="not a managed key"):
            encrypt_columns(pa.table({"c": ["x"]}), "c", key_name=name, manager=km)
    declared = KeyManager(backend=store, use_env_fallback=False, declared_keys=["raw_bytes"])
    cipher = declared.column_cipher("raw_bytes", column="c")
    assert cipher.decrypt(cipher.encrypt(["x"])) == [b"x"]


def test_a_record_naming_a_plain_secret_opens_nothing(km: KeyManager) -> None:
    km.set_secret("db_password", "hunter2")
    encrypted = encrypt_columns(pa.table({"a": ["x"]}), "a", key_name="pii", manager=km)
    record = json.loads(encrypted.schema.field("a").metadata[b"secureml.columns"])
    record["key"] = "db_password"
    field = encrypted.schema.field("a").with_metadata(
        {b"secureml.columns": json.dumps(record).encode()}
    )
    forged = encrypted.set_column(0, field, encrypted.column("a"))
    with pytest.raises(InvalidCellError, match="not a managed key") as caught:
        decrypt_columns(forged, manager=km)
    assert caught.value.row == 0
    assert "hunter2" not in str(caught.value)


def test_a_destroyed_version_no_longer_decrypts(km: KeyManager) -> None:
    cells = km.column_cipher("pii", column="c").encrypt(["x"])
    km.rotate_key("pii")
    km.delete_secret("pii", versions=[1], destroy=True)
    with pytest.raises(InvalidCellError, match="version 1 of key 'pii'") as caught:
        km.column_cipher("pii", column="c").decrypt(cells)
    assert caught.value.row == 0


# -- hygiene ------------------------------------------------------------------------------


def test_audit_events_name_key_and_version(store: MemoryVersions) -> None:
    events: list[AccessEvent] = []
    km = KeyManager(backend=store, use_env_fallback=False, audit_hook=events.append)
    km.generate_key("pii")
    events.clear()
    cipher = km.column_cipher("pii", column="c")
    cells = cipher.encrypt(["x"])
    cipher.decrypt(cells)
    with pytest.raises(InvalidCellError):
        cipher.decrypt([_flip(cells[0])])
    assert events[1].source == "memory:pii"
    seen = [(e.operation, e.name, e.version, e.outcome) for e in events]
    assert seen == [
        ("column_cipher", "pii", 1, "ok"),
        ("column_encrypt", "pii", 1, "ok"),
        ("column_decrypt", "pii", None, "ok"),
        ("column_decrypt", "pii", None, "rejected"),
    ]


def test_ciphers_hide_keys_and_refuse_pickling(km: KeyManager) -> None:
    cipher = km.column_cipher("pii", column="c")
    assert isinstance(cipher, ColumnCipher)
    assert repr(cipher) == (
        "ColumnCipher(key_name='pii', key_version=1, mode='deterministic', column='c')"
    )
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(cipher)
    other = cipher.for_column("d")
    assert (other.column, other.key_version) == ("d", 1)
    assert other.encrypt(["x"]) != cipher.encrypt(["x"])
    error = InvalidCellError("c", 3, "why")
    assert pickle.loads(pickle.dumps(error)).row == 3  # noqa: S301 - our own bytes


def test_importing_columns_imports_neither_pandas_nor_pyarrow() -> None:
    probe = (
        "import sys, secureml.key_management\n"
        "print('columns' if 'secureml.columns' in sys.modules else '')\n"
        "import secureml.columns\n"
        "print(sorted(m for m in ('pandas', 'pyarrow', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["", "[]"]  # key_management does not import columns


def test_public_names_resolve_and_are_documented() -> None:
    import inspect

    from secureml import columns

    for name in columns.__all__:
        obj = getattr(columns, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name
            assert obj.__module__ == "secureml.columns", name
    params = inspect.signature(KeyManager.column_cipher).parameters
    assert [(n, p.default, p.kind.name) for n, p in params.items()][1:] == [
        ("key_name", inspect.Parameter.empty, "POSITIONAL_OR_KEYWORD"),
        ("mode", "deterministic", "POSITIONAL_OR_KEYWORD"),
        ("column", inspect.Parameter.empty, "KEYWORD_ONLY"),
        ("version", None, "KEYWORD_ONLY"),
    ]
    assert list(inspect.signature(encrypt_columns).parameters) == [
        "data",
        "columns",
        "key_name",
        "mode",
        "manager",
    ]
    assert list(inspect.signature(decrypt_columns).parameters) == ["data", "columns", "manager"]
