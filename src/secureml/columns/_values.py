"""Python values and cells: the error naming a column's row, str/bytes conversion,
and whether a dictionary of a column's distinct values pays for itself."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Final

from secureml.key_management.errors import InvalidCiphertextError

from ._cells import CellError

__all__ = [
    "MIN_DEDUPLICATE",
    "SAMPLE",
    "InvalidCellError",
    "RowError",
    "deduplicated",
    "few_distinct",
    "plaintexts",
    "shown",
    "utf8",
    "worth_deduplicating",
]

#: Below this many values, no dictionary of distinct values is tried.
MIN_DEDUPLICATE: Final = 64
#: How many values the estimate of distinct values looks at.
SAMPLE: Final = 2048
_MAX_NAME_SHOWN = 200


class InvalidCellError(InvalidCiphertextError):
    """A cell of an encrypted column does not decrypt.

    Raised for a wrong key, a tampered cell, a cell moved from another column, a value
    that is no cell at all, or a cell naming a key version that may not (or can no
    longer) open it. It names the column and the row (``None`` when the problem is the
    column's recorded metadata), never the cell's content.

    Attributes:
        column: The column's name.
        row: The row (0-based position), or ``None``.
        reason: What is wrong with it.
    """

    def __init__(self, column: str, row: int | None, reason: str) -> None:
        self.column = column
        self.row = row
        self.reason = reason
        where = f"column {shown(column)}" + ("" if row is None else f", row {row}")
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidCellError], tuple[str, int | None, str]]:
        return (type(self), (self.column, self.row, self.reason))


def shown(column: str) -> str:
    """A column name as a message shows it: repr, cut when huge."""
    text = repr(column)
    return text if len(text) <= _MAX_NAME_SHOWN else text[:_MAX_NAME_SHOWN] + "..."


def plaintexts(values: Iterable[Any], column: str) -> tuple[list[bytes | None], bool]:
    """``values`` as bytes (str as UTF-8), and whether any is ``None``."""
    listed = values if isinstance(values, list) else list(values)
    try:
        converted = [
            v if type(v) is bytes else (v.encode("utf-8") if type(v) is str else _other(v))
            for v in listed
        ]
    except (_NotAValueError, UnicodeEncodeError):
        for row, v in enumerate(listed):
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(
                        f"column {shown(column)}, row {row}: the str is not valid Unicode "
                        "(a lone surrogate)"
                    ) from None
            elif v is not None and not isinstance(v, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"column {shown(column)}, row {row}: a value of type {type(v).__name__}; "
                    "a column holds str or bytes (None for null)"
                ) from None
        raise  # pragma: no cover - the loop finds what the comprehension refused
    return converted, None in converted


class _NotAValueError(Exception):
    """A value that is neither str nor bytes nor None."""


def _other(value: object) -> bytes | None:
    """A value of no exact type str or bytes: ``None``, a subclass, or bytes-like."""
    if value is None:
        return None
    if isinstance(value, str):
        return str.encode(value, "utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _NotAValueError


def utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RowError(Exception):
    """A :class:`CellError` moved to the row it came from."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(row, reason)
        self.row = row
        self.reason = reason


def worth_deduplicating(values: list[Any]) -> bool:
    """Whether a dictionary of the distinct values pays: exact on short lists, else
    estimated from a random sample by its repeats (as in the birthday problem, ``s``
    draws from ``d`` equally common values repeat ``s * s / (2 * d)`` times)."""
    n = len(values)
    if n < MIN_DEDUPLICATE:
        return False
    try:
        if n <= 4 * SAMPLE:
            return len(set(values)) <= 0.75 * n
        sample = random.sample(values, SAMPLE)  # a performance estimate, not a secret
        distinct = len(set(sample))
    except TypeError:  # unhashable values (bytearray): no dictionary
        return False
    return few_distinct(n, SAMPLE, distinct)


def few_distinct(n: int, drawn: int, distinct: int) -> bool:
    """From ``drawn`` values of ``n`` holding ``distinct`` different ones: whether the
    whole has at most half as many distinct values as values."""
    repeats = drawn - distinct
    if repeats == 0:
        return False
    if distinct <= drawn / 2:
        return True
    return drawn * drawn / (2 * repeats) <= n / 2


def deduplicated(
    values: list[Any],
    op: Callable[[list[Any], bool], list[Any]],
    nulls: bool,
) -> list[Any] | None:
    """``op`` over the distinct values, spread back over ``values``; ``None`` when not
    worth it. A :class:`CellError` of a distinct value names its first row."""
    if not worth_deduplicating(values):
        return None
    distinct = list(dict.fromkeys(values))
    try:
        done = op(distinct, nulls)
    except CellError as exc:
        raise RowError(values.index(distinct[exc.index]), exc.reason) from exc.__cause__
    table = dict(zip(distinct, done, strict=True))
    return [table[v] for v in values]
