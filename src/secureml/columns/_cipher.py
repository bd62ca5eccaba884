"""ColumnCipher: one managed key, one mode, one column; each key version resolved once.

Keys come through :class:`~secureml.key_management._materials.KeyMaterials`, so the
manager's trust policy holds for columns as it does for messages: only a managed key
(labelled by ``generate_key``/``rotate_key``) or a declared one serves, for the current
version when encrypting and for the version a cell names when decrypting (a cell is
attacker input: the version it names is checked as a message header's is). Each
version is resolved and derived once per cipher, then kept for the cipher's lifetime.

Values are Python sequences (a list comes back), pyarrow arrays and chunked arrays (the
same kind comes back, binary), or pandas Series (a Series of the same index). Equal
values of a deterministic or tokenized column are encrypted once when a sample says the
column repeats itself enough to pay for it (a dictionary of its distinct values).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from secureml.key_management._boundary import guarded_class
from secureml.key_management._core import Core
from secureml.key_management._materials import KeyMaterials
from secureml.key_management._observe import Served
from secureml.key_management.errors import (
    ConfigurationError,
    InvalidCiphertextError,
    UnsupportedOperationError,
)

from . import _cells as cells
from ._arrow import decrypt_arrow, encrypt_arrow, series_to_arrow
from ._cells import MODES, CellError, Mode, RandomizedKey, SivKey, TokenKey, UnknownKeyError
from ._values import (
    InvalidCellError,
    RowError,
    deduplicated,
    plaintexts,
    shown,
    utf8,
)

__all__ = ["ColumnCipher", "decrypting_cipher", "open_cipher"]

ColumnKey = SivKey | RandomizedKey | TokenKey

_MAKERS: Final[dict[str, type[ColumnKey]]] = {
    "deterministic": SivKey,
    "randomized": RandomizedKey,
    "tokenize": TokenKey,
}


class _Ring:
    """The derived keys of one managed key in one mode, per version, each resolved
    through :class:`KeyMaterials` (the trust policy) once. Thread-safe: a version two
    threads resolve at once is resolved twice, to the same key."""

    def __init__(self, core: Core, key_name: str, mode: Mode) -> None:
        if mode == "deterministic" and not cells.siv_takes_empty_values():
            import cryptography

            raise ConfigurationError(
                "deterministic column encryption needs cryptography 46 or later, whose "
                "AES-SIV encrypts empty values (this is cryptography "
                f"{cryptography.__version__}): pip install -U 'cryptography>=46'"
            )
        self.name = key_name
        self.mode = mode
        self.observer = core.observer
        self._materials = KeyMaterials(core)
        self._make = _MAKERS[mode]
        self._versions: dict[int, ColumnKey] = {}
        self._sources: dict[int, str] = {}

    def source(self, version: int) -> str | None:
        """Where version ``version`` came from (an event's source), if resolved."""
        return self._sources.get(version)

    def current(self) -> ColumnKey:
        """The current version's key (the trust policy of new data)."""

        def run() -> Served:
            m = self._materials.for_encryption(self.name, None)
            key = self._keep(m.key, m.key_version, m.source)
            return Served(key, m.source, m.outcome, m.version)

        key: ColumnKey = self.observer.observed("column_cipher", self.name, run)
        return key

    def pinned(self, version: int) -> ColumnKey:
        """Version ``version``'s key, asked for by the caller to encrypt with."""
        try:
            return self._opening(version)
        except InvalidCiphertextError as exc:
            raise ConfigurationError(
                f"version {version} of {self.name!r} cannot serve as a column key: {exc}"
            ) from None

    def opening(self, version: int) -> ColumnKey:
        """The key of the version a cell names (attacker input); what may not open it
        is an :class:`UnknownKeyError`, with the reason (no secret in it)."""
        key = self._versions.get(version)
        if key is not None:
            return key
        try:
            return self._opening(version)
        except InvalidCiphertextError as exc:
            raise UnknownKeyError(
                f"the cell names version {version} of key {self.name!r}, which does not "
                f"open it here: {exc}"
            ) from exc

    def _opening(self, version: int) -> ColumnKey:
        key = self._versions.get(version)
        if key is not None:
            return key

        def run() -> Served:
            m = self._materials.for_version(self.name, version)
            return Served(self._keep(m.key, version, m.source), m.source, m.outcome, m.version)

        found: ColumnKey = self.observer.observed(
            "column_cipher", self.name, run, version=version or None
        )
        return found

    def _keep(self, key: bytes, version: int, source: str) -> ColumnKey:
        made = self._versions.get(version)
        if made is None:
            made = self._make(cells.derive(key, self.mode), version)
            self._sources[version] = source
            self._versions[version] = made
        return made

    def __repr__(self) -> str:
        return f"_Ring(name={self.name!r}, mode={self.mode!r}, versions={sorted(self._versions)})"


def open_cipher(
    core: Core, key_name: str, mode: str, *, column: str, version: int | None = None
) -> ColumnCipher:
    """A cipher encrypting with the current version of ``key_name`` (or ``version``)."""
    ring = _Ring(core, key_name, _mode(mode))
    if version is not None:
        if type(version) is not int or not 0 <= version < 1 << 32:
            raise ValueError("version must be a key version (an int from 0 to 2**32-1)")
        key: ColumnKey | None = ring.pinned(version)
    else:
        key = ring.current()
    return ColumnCipher(ring, key, column)


def decrypting_cipher(core: Core, key_name: str, mode: str, *, column: str) -> ColumnCipher:
    """A cipher that decrypts only: no key is resolved until a cell names one."""
    return ColumnCipher(_Ring(core, key_name, _mode(mode)), None, column)


def _mode(mode: object) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


@guarded_class
class ColumnCipher:
    """Encrypts and decrypts the values of one column with one managed key, in one mode.

    Made by :meth:`KeyManager.column_cipher`: the key is resolved once, there, and kept
    for the cipher's lifetime (make a new cipher to pick up a rotation). Cells other
    versions of the key made are decrypted with the version each names, resolved
    through the manager (once per version). Safe to share between threads. Cannot be
    pickled (it holds keys): make one in each process.

    Modes:
        ``deterministic``: equal values give equal cells (joins, group-by), AES-SIV;
            a cell is what Tink's deterministic AEAD makes (see :mod:`secureml.columns`).
            Equality, and how often each value occurs, show.
        ``randomized``: AES-GCM with a fresh subkey per call and a counter nonce per
            cell; equal values give different cells.
        ``tokenize``: 32-byte HMAC-SHA256 tokens, for join keys that are never
            decrypted.

    The column name is the associated data of every cell: a cell moved to another
    column does not decrypt. ``None`` stays ``None``.
    """

    def __init__(self, ring: _Ring, key: ColumnKey | None, column: str) -> None:
        if not isinstance(column, str):
            raise TypeError(
                f"column must be the column's name (a str), not {type(column).__name__}"
            )
        ad = column.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError
        if len(ad) >= 1 << 32:
            raise ValueError("a column name is shorter than 4 GiB")
        self._ring = ring
        self._key = key
        self._column = column
        self._ad = ad
        self._observed = ring.observer.observed

    # -- what it is ------------------------------------------------------------------

    @property
    def key_name(self) -> str:
        """The managed key's name."""
        return self._ring.name

    @property
    def key_version(self) -> int | None:
        """The version :meth:`encrypt` uses (``0``: an unversioned key; ``None``: a
        cipher made to decrypt only)."""
        return None if self._key is None else self._key.version

    @property
    def mode(self) -> Mode:
        """``deterministic``, ``randomized`` or ``tokenize``."""
        return self._ring.mode

    @property
    def column(self) -> str:
        """The column name, bound into every cell."""
        return self._column

    def for_column(self, column: str) -> ColumnCipher:
        """A cipher for another column, with the same key and mode (and the versions
        already resolved).

        Raises:
            TypeError: ``column`` is not a str.
        """
        return ColumnCipher(self._ring, self._key, column)

    # -- encrypt -----------------------------------------------------------------------

    def encrypt(self, values: Any) -> Any:
        """Encrypt (or tokenize) a column's values.

        Args:
            values: ``str`` and ``bytes`` values (``None`` for null): a list or any
                iterable, a pyarrow ``Array`` or ``ChunkedArray`` of type string, binary,
                their large and view variants, a dictionary of those, or null; or a
                pandas ``Series`` of such values.

        Returns:
            The cells (``bytes``; ``None`` where the value was ``None``), in the same
            kind of container: a list, a pyarrow binary (``large_binary`` for large
            input) array or chunked array, or an object Series with the same index.

        Raises:
            TypeError: A value (or the array) is of another type; the message names the
                column, the row and the type, never the value.
            ValueError: A str that is not valid Unicode (a lone surrogate).
            UnsupportedOperationError: A cipher made to decrypt only.
        """
        key = self._key
        if key is None:
            raise UnsupportedOperationError(
                "this column cipher was made to decrypt only; make one with "
                "KeyManager.column_cipher to encrypt"
            )

        def run() -> Served:
            sealed = self._convert(values, self._seal_values, lambda a: encrypt_arrow(self, a))
            return Served(sealed, self._ring.source(key.version))

        return self._observed("column_encrypt", self._ring.name, run, version=key.version or None)

    def _seal_values(self, values: list[Any]) -> list[bytes | None]:
        """Cells of Python values. The fast path takes them to be str (or bytes, as the
        first one is) or ``None``, and encodes as it encrypts; what it trips on goes
        through the checked conversion, which names the row of a wrong value."""
        first = next((v for v in values if v is not None), None)
        try:
            return self._seal(values, nulls=True, text=type(first) is str)
        except (AttributeError, TypeError, ValueError):  # UnicodeEncodeError too
            pass
        converted, nulls = plaintexts(values, self._column)
        return self._seal(converted, nulls=nulls, text=False)

    def _seal(self, plaintexts: list[Any], *, nulls: bool, text: bool) -> list[bytes | None]:
        """Cells of ``plaintexts`` under the current key (equal values once, when
        worth it); see :func:`~._cells.seal_deterministic` for ``nulls`` and ``text``."""
        key = self._key
        ad = self._ad
        if isinstance(key, RandomizedKey):
            return cells.seal_randomized(key, plaintexts, ad, nulls=nulls, text=text)
        if isinstance(key, SivKey):
            siv = key

            def seal(values: list[Any], nulls: bool) -> list[bytes | None]:
                return cells.seal_deterministic(siv, values, ad, nulls=nulls, text=text)
        else:
            assert isinstance(key, TokenKey)  # noqa: S101 - the three modes
            token = key

            def seal(values: list[Any], nulls: bool) -> list[bytes | None]:
                return cells.tokens(token, values, ad, text=text)

        done = deduplicated(plaintexts, seal, nulls)
        return seal(plaintexts, nulls) if done is None else done

    # -- decrypt -----------------------------------------------------------------------

    def decrypt(self, values: Any, *, text: bool = False) -> Any:
        """Decrypt cells this cipher's key made for this column, whatever version of
        the key made them.

        Args:
            values: Cells (``bytes``, ``None`` for null): a list or any iterable, a
                pyarrow binary (or ``large_binary``, ``binary_view``, null) ``Array`` or
                ``ChunkedArray``, or a pandas ``Series``.
            text: Return ``str`` values (a pyarrow string array) instead of ``bytes``:
                for columns that held text.

        Returns:
            The values, in the same kind of container.

        Raises:
            InvalidCellError: A cell does not decrypt (a wrong key, tampered, from
                another column, not a cell, or naming a key version that may not open
                it), or with ``text``, is not UTF-8. An :class:`InvalidCiphertextError`;
                it names the column and the row.
            UnsupportedOperationError: A ``tokenize`` cipher: tokens are one-way.
            TypeError: The values are not a container of cells (e.g. an Arrow int array).
        """
        return self._decrypt(values, text=text, to=None)

    def _decrypt(self, values: Any, *, text: bool, to: Any) -> Any:
        """:meth:`decrypt`; an Arrow result of type ``to`` when given (a table's
        recorded type)."""
        if self._ring.mode == "tokenize":
            raise UnsupportedOperationError(
                f"column {shown(self._column)} holds tokens (mode tokenize), which are "
                "one-way: they cannot be decrypted"
            )

        def open_list(found: list[Any]) -> list[Any]:
            return self._open_list(found, text=text)

        def run() -> Served:
            on_arrow = lambda a: decrypt_arrow(self, a, text=text, to=to)  # noqa: E731
            opened = self._convert(values, open_list, on_arrow, cells_in=True)
            return Served(opened, None)

        return self._observed("column_decrypt", self._ring.name, run)

    def _open_list(self, found: Sequence[object], *, text: bool) -> list[Any]:
        """Plaintexts of cells (equal cells once, when worth it), str with ``text``."""
        ring, ad = self._ring, self._ad
        if self._ring.mode == "deterministic":
            first = self._key if isinstance(self._key, SivKey) else None

            def open_some(batch: list[Any], nulls: bool) -> list[bytes | None]:
                return cells.open_deterministic(ring.opening, first, batch, ad)  # type: ignore[arg-type]

            listed = found if isinstance(found, list) else list(found)
            try:
                done = deduplicated(listed, open_some, True)
                opened = open_some(listed, True) if done is None else done
            except RowError as exc:
                raise self._bad(exc.row, exc.reason) from exc.__cause__
            except CellError as exc:
                raise self._bad(exc.index, exc.reason) from exc.__cause__
        else:
            first_r = self._key if isinstance(self._key, RandomizedKey) else None
            try:
                opened = cells.open_randomized(ring.opening, first_r, found, ad)  # type: ignore[arg-type]
            except CellError as exc:
                raise self._bad(exc.index, exc.reason) from exc.__cause__
        return self._text(opened) if text else opened

    def _text(self, plaintexts: list[bytes | None]) -> list[Any]:
        try:
            return [None if p is None else p.decode("utf-8") for p in plaintexts]
        except UnicodeDecodeError:
            row = next(i for i, p in enumerate(plaintexts) if p is not None and not utf8(p))
            raise self._bad(row, "the value is not UTF-8 text") from None

    def _bad(self, row: int | None, reason: str) -> InvalidCellError:
        return InvalidCellError(self._column, row, reason)

    # -- containers --------------------------------------------------------------------

    def _convert(
        self,
        values: Any,
        on_list: Callable[[list[Any]], list[Any]],
        on_arrow: Callable[[Any], Any],
        *,
        cells_in: bool = False,
    ) -> Any:
        """Run ``on_list`` or ``on_arrow`` on ``values``, in the container it came in."""
        arrow = sys.modules.get("pyarrow")
        if arrow is not None and isinstance(values, (arrow.Array, arrow.ChunkedArray)):
            return on_arrow(values)
        pandas = sys.modules.get("pandas")
        if pandas is not None and isinstance(values, pandas.Series):
            return self._series(values, on_arrow, cells_in=cells_in)
        if isinstance(values, (str, bytes, bytearray, memoryview)) or not isinstance(
            values, Iterable
        ):
            raise TypeError(
                f"column {shown(self._column)}: values must be a list (or other iterable, "
                f"a pyarrow array, a pandas Series) of values, not a single "
                f"{type(values).__name__}"
            )
        return on_list(values if isinstance(values, list) else list(values))

    def _series(self, series: Any, on_arrow: Callable[[Any], Any], *, cells_in: bool) -> Any:
        """A pandas Series through the Arrow path, back as an object Series."""
        import pandas as pd

        done = on_arrow(series_to_arrow(series, self._column, cells_in=cells_in))
        return pd.Series(
            done.to_numpy(zero_copy_only=False), index=series.index, name=series.name, dtype=object
        )

    def __repr__(self) -> str:
        return (
            f"ColumnCipher(key_name={self.key_name!r}, key_version={self.key_version}, "
            f"mode={self.mode!r}, column={self._column!r})"
        )

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(
            "a ColumnCipher cannot be pickled (it holds keys); make one in each process "
            "with KeyManager.column_cipher"
        )
