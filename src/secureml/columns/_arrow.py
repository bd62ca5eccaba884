"""pyarrow arrays (and chunked arrays, pandas Series through them) to and from cells.

Arrays are read as Python bytes and made from Python bytes (Arrow's conversions are
fast next to a cipher call). A deterministic or tokenized array that repeats itself
enough (estimated from a sample) is dictionary-encoded by Arrow, its distinct values
encrypted once and the cells spread back with ``take``: no Python object per row.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

from ._values import (
    MIN_DEDUPLICATE,
    SAMPLE,
    InvalidCellError,
    RowError,
    few_distinct,
    shown,
    utf8,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Cipher",
    "arrow_type_named",
    "decrypt_arrow",
    "encrypt_arrow",
    "pyarrow",
    "series_to_arrow",
]


class Cipher(Protocol):
    """What the Arrow path needs of a column cipher."""

    @property
    def column(self) -> str: ...

    @property
    def mode(self) -> str: ...

    def _seal(self, plaintexts: list[Any], *, nulls: bool, text: bool) -> list[bytes | None]: ...

    def _open_list(self, found: list[Any], *, text: bool) -> list[Any]: ...


def pyarrow() -> Any:
    try:
        import pyarrow as module
    except ImportError:  # pragma: no cover - pandas without pyarrow
        raise ImportError(
            "pandas columns are encrypted through pyarrow: pip install 'secureml[pandas]'"
        ) from None
    return module


def series_to_arrow(series: Any, column: str, *, cells_in: bool) -> Any:
    """A pandas Series as an Arrow array; values Arrow cannot hold as one type are a
    TypeError naming the column and its dtype (Arrow's own message would quote a value)."""
    import pandas as pd

    pa = pyarrow()
    what = "cells (bytes)" if cells_in else "str or bytes (one or the other)"
    # Arrow would read str and bytes mixed as binary: the str would come back as bytes.
    mixed = series.dtype == object and pd.api.types.infer_dtype(series) == "mixed"
    if not mixed:
        try:
            return pa.Array.from_pandas(series)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    raise TypeError(
        f"column {shown(column)} (dtype {series.dtype}) holds values other than {what}"
    ) from None


def _text_type(pa: Any, arrow_type: Any) -> bool:
    return bool(
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or _is(pa, "is_string_view", arrow_type)
    )


def _is(pa: Any, test: str, arrow_type: Any) -> bool:
    check = getattr(pa.types, test, None)  # view types: pyarrow 16 and later
    return bool(check is not None and check(arrow_type))


def _binary_kind(pa: Any, arrow_type: Any) -> Any:
    """The binary type an Arrow value type is read as; ``None`` if it is not str/bytes."""
    t = pa.types
    if t.is_string(arrow_type) or t.is_binary(arrow_type):
        return pa.binary()
    if t.is_large_string(arrow_type) or t.is_large_binary(arrow_type):
        return pa.large_binary()
    if _is(pa, "is_string_view", arrow_type) or _is(pa, "is_binary_view", arrow_type):
        return pa.binary()
    if t.is_null(arrow_type):
        return pa.binary()
    return None


def _chunks(pa: Any, values: Any) -> tuple[list[Any], bool]:
    """The arrays of ``values`` and whether it was a ChunkedArray."""
    if isinstance(values, pa.ChunkedArray):
        return list(values.chunks), True
    return [values], False


def _rejoin(pa: Any, parts: list[Any], out_type: Any, chunked: bool) -> Any:
    """The arrays made, as what came in; a chunked array also when one part overflowed
    binary's 2 GiB (``pa.array`` then makes a chunked array)."""
    arrays = [
        a for part in parts for a in (part.chunks if isinstance(part, pa.ChunkedArray) else [part])
    ]
    if chunked or len(arrays) != 1:
        return pa.chunked_array(arrays, type=out_type)
    return arrays[0]


def encrypt_arrow(cipher: Cipher, values: Any) -> Any:
    """Cells of an Arrow array (or chunked array) of str/bytes values."""
    pa = pyarrow()
    value_type = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    read_as = _binary_kind(pa, value_type)
    if read_as is None:
        raise TypeError(
            f"column {shown(cipher.column)} is of type {values.type}; a column to encrypt "
            "holds str or bytes (Arrow string, binary, their large and view variants)"
        )
    out_type = pa.large_binary() if read_as == pa.large_binary() else pa.binary()
    parts, chunked = _chunks(pa, values)
    done = [_encrypt_chunk(cipher, pa, part, read_as, out_type) for part in parts]
    return _rejoin(pa, done, out_type, chunked)


def _encrypt_chunk(cipher: Cipher, pa: Any, part: Any, read_as: Any, out_type: Any) -> Any:
    if pa.types.is_null(part.type):
        return pa.nulls(len(part), type=out_type)
    deterministic = cipher.mode != "randomized"
    if pa.types.is_dictionary(part.type):
        dictionary, indices = part.dictionary, part.indices
    elif deterministic and _arrow_worth_deduplicating(pa, part):
        encoded = part.dictionary_encode()
        dictionary, indices = encoded.dictionary, encoded.indices
    else:
        plain = _as_binary(pa, part, read_as).to_pylist()
        return pa.array(cipher._seal(plain, nulls=part.null_count > 0, text=False), type=out_type)
    plain = _as_binary(pa, dictionary, read_as).to_pylist()
    nulls = dictionary.null_count > 0
    sealed = pa.array(cipher._seal(plain, nulls=nulls, text=False), type=out_type)
    return sealed.take(indices)


def _as_binary(pa: Any, array: Any, read_as: Any) -> Any:
    """A string/binary array as binary bytes (a view when the layouts agree)."""
    if array.type == read_as:
        return array
    try:
        return array.view(read_as)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError):
        return array.cast(read_as)


def _arrow_worth_deduplicating(pa: Any, array: Any) -> bool:
    """:func:`_worth_deduplicating` for an Arrow array, counted by Arrow."""
    import pyarrow.compute as pc

    n = len(array) - array.null_count
    if n < MIN_DEDUPLICATE:
        return False
    if len(array) <= 4 * SAMPLE:
        return bool(int(pc.count_distinct(array).as_py()) <= 0.75 * n)
    rows = random.sample(range(len(array)), SAMPLE)  # a performance estimate, not a secret
    sample = array.take(pa.array(rows, type=pa.int64()))
    drawn = len(sample) - sample.null_count
    if drawn < MIN_DEDUPLICATE:
        return False
    return few_distinct(n, drawn, int(pc.count_distinct(sample).as_py()))


def decrypt_arrow(cipher: Cipher, values: Any, *, text: bool, to: Any = None) -> Any:
    """Plaintexts of an Arrow array (or chunked array) of cells: binary, or ``to``
    (string with ``text``)."""
    pa = pyarrow()
    arrow_type = values.type
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if _text_type(pa, arrow_type) or _binary_kind(pa, arrow_type) is None:
        raise TypeError(f"column {shown(cipher.column)} is of type {values.type}; cells are binary")
    large = pa.types.is_large_binary(arrow_type)
    binary = pa.large_binary() if large else pa.binary()
    if to is None:
        to = (pa.large_string() if large else pa.string()) if text else binary
    parts, chunked = _chunks(pa, values)
    done = []
    offset = 0
    for part in parts:
        try:
            opened = _decrypt_chunk(cipher, pa, part, binary)
        except RowError as exc:
            raise InvalidCellError(cipher.column, offset + exc.row, exc.reason) from exc.__cause__
        except InvalidCellError as exc:
            row = None if exc.row is None else offset + exc.row
            raise InvalidCellError(cipher.column, row, exc.reason) from exc.__cause__
        done.append(_restored(cipher, pa, opened, to, offset))
        offset += len(part)
    return _rejoin(pa, done, to, chunked)


def _decrypt_chunk(cipher: Cipher, pa: Any, part: Any, binary: Any) -> Any:
    if pa.types.is_null(part.type):
        return pa.nulls(len(part), type=binary)
    if pa.types.is_dictionary(part.type):
        dictionary, indices = part.dictionary, part.indices
    elif cipher.mode == "deterministic" and _arrow_worth_deduplicating(pa, part):
        encoded = part.dictionary_encode()
        dictionary, indices = encoded.dictionary, encoded.indices
    else:
        found = _as_binary(pa, part, _binary_kind(pa, part.type)).to_pylist()
        return pa.array(cipher._open_list(found, text=False), type=binary)
    found = _as_binary(pa, dictionary, _binary_kind(pa, dictionary.type)).to_pylist()
    try:
        opened = cipher._open_list(found, text=False)
    except InvalidCellError as exc:
        if exc.row is None:
            raise
        import pyarrow.compute as pc

        row = int(pc.index(indices, pa.scalar(exc.row, type=indices.type)).as_py())
        raise RowError(row, exc.reason) from exc.__cause__
    return pa.array(opened, type=binary).take(indices)


def _restored(cipher: Cipher, pa: Any, opened: Any, to: Any, offset: int) -> Any:
    """Decrypted bytes as type ``to``; a value that is not of it names its row."""
    if opened.type == to:
        return opened
    if pa.types.is_null(to) and opened.null_count == len(opened):
        return pa.nulls(len(opened))  # Arrow casts nothing to null
    try:
        return opened.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if _text_type(pa, to):
        for row, value in enumerate(opened.to_pylist()):
            if value is not None and not utf8(value):
                raise InvalidCellError(cipher.column, offset + row, "the value is not UTF-8 text")
    raise InvalidCellError(cipher.column, None, f"the decrypted values are not of type {to}")


def arrow_type_named(name: str) -> pa.DataType | None:
    """The Arrow type a column's metadata names (string, binary and their variants,
    null); ``None`` for any other name."""
    pa_module = pyarrow()
    made = {
        "string": pa_module.string,
        "large_string": pa_module.large_string,
        "binary": pa_module.binary,
        "large_binary": pa_module.large_binary,
        "null": pa_module.null,
        "string_view": getattr(pa_module, "string_view", None),
        "binary_view": getattr(pa_module, "binary_view", None),
    }.get(name)
    return None if made is None else made()
