"""encrypt_columns and decrypt_columns: whole columns of a pandas DataFrame or a pyarrow
Table (or RecordBatch), with what decryption needs recorded beside them.

An encrypted column records its key name, key version, mode, original type and
original name: in its Arrow field's metadata under ``secureml.columns`` (JSON), which
Parquet and Arrow IPC files keep, or, for pandas, in ``DataFrame.attrs["secureml.columns"]``
(one entry per column), which pandas keeps through copies and its Parquet files. The
record is not trusted: the key it names passes the manager's trust policy, and every
cell is authenticated under the name of the column it is found in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, Final

from secureml.key_management import KeyManager, get_default_key_manager
from secureml.key_management._boundary import guarded
from secureml.key_management._core import core_of
from secureml.key_management.errors import InvalidCiphertextError, UnsupportedOperationError

from ._arrow import arrow_type_named, series_to_arrow
from ._cells import MODES, Mode
from ._cipher import ColumnCipher, decrypting_cipher
from ._values import InvalidCellError

__all__ = ["METADATA_KEY", "decrypt_columns", "encrypt_columns"]

#: Where a column's record is kept: its Arrow field metadata key, and the DataFrame.attrs
#: key (a dict of records by column name).
METADATA_KEY: Final = "secureml.columns"
_FIELD_KEY: Final = METADATA_KEY.encode()
_RECORD_FORMAT = 1
#: The pandas dtypes a decrypted column may be given back (by their kind).
_PANDAS_TEXT_TYPES: Final = frozenset(
    {"string", "large_string", "binary", "large_binary", "string_view", "binary_view"}
)


@guarded
def encrypt_columns(
    data: Any,
    columns: str | Iterable[str],
    *,
    key_name: str,
    mode: Mode = "deterministic",
    manager: KeyManager | None = None,
) -> Any:
    """Encrypt some columns of a pandas DataFrame or a pyarrow Table.

    Args:
        data: A ``pandas.DataFrame``, ``pyarrow.Table`` or ``pyarrow.RecordBatch``.
        columns: The name of a column, or names: str or bytes columns (Arrow string,
            binary and their large and view variants, or dictionaries of them).
        key_name: A managed (or declared) key.
        mode: ``deterministic``, ``randomized`` or ``tokenize`` (see
            :meth:`KeyManager.column_cipher`).
        manager: The key manager (default: :func:`get_default_key_manager`).

    Returns:
        A new object of the same kind: the columns hold cells (binary; pandas: object
        of ``bytes``), ``None`` where the value was null, and record their key name,
        version, mode and type (Arrow field metadata; pandas ``DataFrame.attrs``).

    Raises:
        TypeError: ``data`` is of another kind, or a column holds other types (the
            message names the column and the type).
        ValueError: A column is missing, appears twice, or is already encrypted.
        ConfigurationError: ``key_name`` is not a managed or declared key.
    """
    kind = _kind(data)
    names = _names(columns)
    if not names:
        return data.copy(deep=False) if kind == "pandas" else data
    km = manager if manager is not None else get_default_key_manager()
    first = km.column_cipher(key_name, mode, column=names[0])
    if kind == "pandas":
        return _encrypt_frame(data, names, first)
    return _encrypt_table(data, names, first)


@guarded
def decrypt_columns(
    data: Any, columns: str | Iterable[str] | None = None, *, manager: KeyManager | None = None
) -> Any:
    """Decrypt columns :func:`encrypt_columns` encrypted, with what they recorded: no key
    name or mode is needed, and each cell opens with the key version it names (so this
    works after the key was rotated).

    Args:
        data: A ``pandas.DataFrame``, ``pyarrow.Table`` or ``pyarrow.RecordBatch``.
        columns: The columns to decrypt; ``None``: every encrypted column but tokenized
            ones (tokens are one-way and stay as they are).
        manager: The key manager (default: :func:`get_default_key_manager`).

    Returns:
        A new object of the same kind, with the columns' original types (pandas: their
        dtypes) and without their records.

    Raises:
        InvalidCellError: A cell does not decrypt (a wrong key, tampered, moved from
            another column, or naming a key version that cannot open it), or a record
            is malformed: an ``InvalidCiphertextError`` naming the column and the row.
        ValueError: A named column is missing or was not encrypted here.
        UnsupportedOperationError: A named column holds tokens.
    """
    kind = _kind(data)
    wanted = None if columns is None else _names(columns)
    km = manager if manager is not None else get_default_key_manager()
    if kind == "pandas":
        return _decrypt_frame(data, wanted, km)
    return _decrypt_table(data, wanted, km)


# -- shared -----------------------------------------------------------------------------


def _kind(data: object) -> str:
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return "pandas"
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and isinstance(data, (arrow.Table, arrow.RecordBatch)):
        return "arrow"
    raise TypeError(
        f"expected a pandas DataFrame or a pyarrow Table (or RecordBatch), not "
        f"{type(data).__name__}"
    )


def _names(columns: object) -> list[str]:
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, (bytes, bytearray)) or not isinstance(columns, Iterable):
        raise TypeError("columns must be a column name or an iterable of column names")
    names = list(dict.fromkeys(columns))
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"column names must be str (a name is the cells' associated data), not "
                f"{type(name).__name__}"
            )
    return names


def _record(
    cipher: ColumnCipher, column: str, value_type: str, dtype: str | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "format": _RECORD_FORMAT,
        "key": cipher.key_name,
        "version": cipher.key_version,
        "mode": cipher.mode,
        "type": value_type,
        "column": column,
    }
    if dtype is not None:
        record["dtype"] = dtype
    return record


def _checked(record: object, column: str) -> dict[str, Any]:
    """A column's record, checked field by field (it is attacker input)."""
    ok = (
        isinstance(record, dict)
        and record.get("format") == _RECORD_FORMAT
        and isinstance(record.get("key"), str)
        and record.get("mode") in MODES
        and isinstance(record.get("type"), str)
        and isinstance(record.get("column"), str)
        and (record.get("version") is None or type(record.get("version")) is int)
        and isinstance(record.get("dtype", ""), str)
        and isinstance(record.get("pandas", {}), dict)
    )
    if not ok:
        raise InvalidCellError(column, None, "its secureml.columns record is malformed")
    assert isinstance(record, dict)  # noqa: S101 - for mypy: checked above
    return record


class _Ciphers:
    """One decrypting key ring per (key, mode) across the columns of one call."""

    def __init__(self, km: KeyManager) -> None:
        self._core = core_of(km)
        self._first: dict[tuple[str, str], ColumnCipher] = {}

    def cipher(self, record: dict[str, Any], column: str) -> ColumnCipher:
        slot = (record["key"], record["mode"])
        first = self._first.get(slot)
        if first is None:
            first = self._first[slot] = decrypting_cipher(
                self._core, record["key"], record["mode"], column=column
            )
        return first.for_column(column)


def _opened(cipher: ColumnCipher, cells: Any, to: Any, record: dict[str, Any]) -> Any:
    """The column's values, of Arrow type ``to``; a cell that does not open says when the
    column was encrypted under another name (cells are bound to that name)."""
    try:
        return cipher._decrypt(cells, text=False, to=to)
    except InvalidCellError as exc:
        recorded = record["column"]
        if recorded == cipher.column:
            raise
        raise InvalidCellError(
            cipher.column,
            exc.row,
            f"{exc.reason}; the column was encrypted as {recorded!r}, and cells are bound "
            "to that name: rename it back to decrypt it",
        ) from exc.__cause__


def _selected(
    found: dict[str, dict[str, Any]], wanted: list[str] | None, present: Iterable[str]
) -> list[str]:
    """The encrypted columns to decrypt: all but tokens, or those asked for."""
    if wanted is None:
        return [name for name in present if name in found and found[name]["mode"] != "tokenize"]
    names = list(present)
    for name in wanted:
        if name not in names:
            raise ValueError(f"no column {name!r}")
        if name not in found:
            raise ValueError(
                f"column {name!r} has no secureml.columns record: it was not encrypted by "
                "encrypt_columns, or its record was lost (decrypt it with "
                "KeyManager.column_cipher)"
            )
        if found[name]["mode"] == "tokenize":
            raise UnsupportedOperationError(
                f"column {name!r} holds tokens (mode tokenize), which are one-way: they "
                "cannot be decrypted"
            )
    return wanted


# -- Arrow ------------------------------------------------------------------------------


def _field_index(schema: Any, name: str) -> int:
    indices = schema.get_all_field_indices(name)
    if not indices:
        raise ValueError(f"no column {name!r}")
    if len(indices) > 1:
        raise ValueError(f"column {name!r} appears {len(indices)} times")
    return int(indices[0])


def _field_record(field: Any) -> dict[str, Any] | None:
    raw = (field.metadata or {}).get(_FIELD_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        record = None
    return _checked(record, field.name)


def _encrypt_table(table: Any, names: list[str], first: ColumnCipher) -> Any:
    import pyarrow as pa

    schema = table.schema
    fields = list(schema)
    arrays = list(table.columns)
    described = _PandasColumns(schema.metadata)
    for name in names:
        i = _field_index(schema, name)
        field = fields[i]
        if _field_record(field) is not None:
            raise ValueError(f"column {name!r} is already encrypted")
        value_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        cells = first.for_column(name).encrypt(arrays[i])
        record = _record(first, name, str(value_type), None)
        original = described.encrypted(name)
        if original is not None:
            record["pandas"] = original
        metadata = dict(field.metadata or {})
        metadata[_FIELD_KEY] = json.dumps(record, separators=(",", ":")).encode()
        fields[i] = pa.field(name, cells.type, nullable=field.nullable, metadata=metadata)
        arrays[i] = cells
    return type(table).from_arrays(arrays, schema=pa.schema(fields, metadata=described.metadata))


def _decrypt_table(table: Any, wanted: list[str] | None, km: KeyManager) -> Any:
    import pyarrow as pa

    schema = table.schema
    fields = list(schema)
    found: dict[str, dict[str, Any]] = {}
    for field in fields:
        record = _field_record(field)
        if record is not None:
            found[field.name] = record
    names = _selected(found, wanted, schema.names)
    ciphers = _Ciphers(km)
    arrays = list(table.columns)
    described = _PandasColumns(schema.metadata)
    for name in names:
        i = _field_index(schema, name)
        field, record = fields[i], found[name]
        to = arrow_type_named(record["type"])
        if to is None:
            raise InvalidCellError(name, None, "its secureml.columns record is malformed")
        arrays[i] = _opened(ciphers.cipher(record, name), arrays[i], to, record)
        metadata = {k: v for k, v in (field.metadata or {}).items() if k != _FIELD_KEY}
        fields[i] = pa.field(name, to, nullable=field.nullable, metadata=metadata or None)
        described.decrypted(name, record.get("pandas"))
    return type(table).from_arrays(arrays, schema=pa.schema(fields, metadata=described.metadata))


class _PandasColumns:
    """The ``pandas`` schema metadata of a table made from a DataFrame: it describes each
    column's dtype, and pyarrow's ``to_pandas`` follows it (a ``str`` column read back
    as one would fail on cells). An encrypted column is described as bytes; its
    original description goes into its record, and comes back when it is decrypted."""

    def __init__(self, metadata: dict[bytes, bytes] | None) -> None:
        self.metadata = metadata
        self._parsed: dict[str, Any] | None = None
        raw = (metadata or {}).get(b"pandas")
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("columns"), list):
                self._parsed = parsed

    def _entry(self, name: str) -> tuple[int, dict[str, Any]] | None:
        if self._parsed is None:
            return None
        for i, entry in enumerate(self._parsed["columns"]):
            if isinstance(entry, dict) and entry.get("field_name") == name:
                return i, entry
        return None

    def encrypted(self, name: str) -> dict[str, Any] | None:
        """Describe column ``name`` as bytes; return what described it before."""
        found = self._entry(name)
        if found is None:
            return None
        i, entry = found
        cells = {**entry, "pandas_type": "bytes", "numpy_type": "object", "metadata": None}
        self._replace(i, cells)
        return entry

    def decrypted(self, name: str, original: object) -> None:
        """Describe column ``name`` as it was before it was encrypted."""
        found = self._entry(name)
        if found is None or not isinstance(original, dict):
            return
        self._replace(found[0], {**original, "name": found[1].get("name"), "field_name": name})

    def _replace(self, i: int, entry: dict[str, Any]) -> None:
        assert self._parsed is not None  # noqa: S101 - only with an entry found
        self._parsed["columns"][i] = entry
        self.metadata = {**(self.metadata or {}), b"pandas": json.dumps(self._parsed).encode()}


# -- pandas -----------------------------------------------------------------------------


def _frame_records(frame: Any) -> dict[str, Any]:
    records = frame.attrs.get(METADATA_KEY, {})
    if not isinstance(records, dict):
        raise InvalidCiphertextError("DataFrame.attrs['secureml.columns'] is malformed")
    return records


def _frame_column(frame: Any, name: str) -> Any:
    if name not in frame.columns:
        raise ValueError(f"no column {name!r}")
    if not isinstance(frame.columns.get_loc(name), int):
        raise ValueError(f"column {name!r} appears more than once")
    return frame[name]


def _encrypt_frame(frame: Any, names: list[str], first: ColumnCipher) -> Any:
    import pandas as pd
    import pyarrow as pa

    records = dict(_frame_records(frame))
    out = frame.copy(deep=False)
    for name in names:
        series = _frame_column(frame, name)
        if name in records:
            raise ValueError(f"column {name!r} is already encrypted")
        array = series_to_arrow(series, name, cells_in=False)
        value_type = array.type.value_type if pa.types.is_dictionary(array.type) else array.type
        cells = first.for_column(name).encrypt(array)
        out[name] = pd.Series(
            cells.to_numpy(zero_copy_only=False), index=frame.index, name=name, dtype=object
        )
        records[name] = _record(first, name, str(value_type), str(series.dtype))
    out.attrs = {**frame.attrs, METADATA_KEY: records}
    return out


def _decrypt_frame(frame: Any, wanted: list[str] | None, km: KeyManager) -> Any:
    import pandas as pd

    records = _frame_records(frame)
    present = [c for c in frame.columns if isinstance(c, str)]
    found = {name: _checked(r, name) for name, r in records.items() if name in present}
    names = _selected(found, wanted, present)
    ciphers = _Ciphers(km)
    out = frame.copy(deep=False)
    for name in names:
        series, record = _frame_column(frame, name), found[name]
        to = arrow_type_named(record["type"])
        if to is None:
            raise InvalidCellError(name, None, "its secureml.columns record is malformed")
        dtype = _pandas_dtype(record.get("dtype", "object"), name)
        cells = series_to_arrow(series, name, cells_in=True)
        values = _opened(ciphers.cipher(record, name), cells, to, record)
        restored = pd.Series(
            values.to_numpy(zero_copy_only=False), index=frame.index, name=name, dtype=object
        )
        out[name] = restored if dtype is None else restored.astype(dtype)
    left = {name: r for name, r in records.items() if name not in names}
    attrs = {k: v for k, v in frame.attrs.items() if k != METADATA_KEY}
    if left:
        attrs[METADATA_KEY] = left
    out.attrs = attrs
    return out


def _pandas_dtype(name: str, column: str) -> Any:
    """The dtype a record names, if it is one a str or bytes column has (``None``:
    object); anything else is a malformed record."""
    import pandas as pd

    if name == "object":
        return None
    try:
        dtype = pd.api.types.pandas_dtype(name)
    except TypeError:
        dtype = None
    if isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype)):
        return dtype
    arrow_dtype = getattr(pd, "ArrowDtype", None)
    if (
        arrow_dtype is not None
        and isinstance(dtype, arrow_dtype)
        and str(dtype.pyarrow_dtype) in _PANDAS_TEXT_TYPES
    ):
        return dtype
    raise InvalidCellError(column, None, f"its secureml.columns record names dtype {name!r}")
