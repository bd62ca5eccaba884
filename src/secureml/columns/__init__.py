"""Column encryption for data frames and tables, under secureml's managed keys.

A :class:`ColumnCipher` encrypts the values of one column with one managed key in one
mode; :func:`encrypt_columns` and :func:`decrypt_columns` do whole columns of a pandas
DataFrame or a pyarrow Table and record, beside each column, what decryption needs.
pandas and pyarrow are optional (``pip install 'secureml[pandas]'`` or
``'secureml[arrow]'``) and imported only when such objects are passed in.

Modes:

- ``deterministic``: equal values give equal cells, so encrypted columns still join,
  group and deduplicate. AES-SIV; each cell is byte for byte what Tink's deterministic
  AEAD (``AES256_SIV``) makes: ``0x01 || key id || AES-SIV(value, [column name])``, with
  the key version as the Tink key id. It shows which values are equal and how often
  each occurs.
- ``randomized``: AES-GCM with a fresh subkey per call and a counter nonce per cell:
  equal values give different cells.
- ``tokenize``: 32-byte HMAC-SHA256 tokens for join keys that are never decrypted.

Keys: the managed key's version (as ``encrypt`` uses: only managed keys, labelled by
``generate_key``/``rotate_key``, or declared ones serve), then a subkey per mode with
HKDF-SHA256 (info ``secureml/columns/v1/<mode>``: 64 bytes for deterministic, 32 for the
others). Deterministic and randomized cells name the key version, so decryption finds
it after rotations; cells of different versions never compare equal (pass ``version=``
to keep encrypting new data with the version old data used).

The column name is the associated data of every cell: a cell moved to another column,
a tampered cell or a wrong key raises :class:`InvalidCellError` (an
``InvalidCiphertextError``) naming the column and the row. ``None`` stays ``None``.

Example:
    >>> from secureml.columns import encrypt_columns, decrypt_columns
    >>> enc = encrypt_columns(df, ["email", "ssn"], key_name="pii")   # doctest: +SKIP
    >>> decrypt_columns(enc).equals(df)                               # doctest: +SKIP
    True
"""

from __future__ import annotations

from ._cells import MODES
from ._cells import Mode as ColumnMode
from ._cipher import ColumnCipher
from ._tables import METADATA_KEY, decrypt_columns, encrypt_columns
from ._values import InvalidCellError

__all__ = [
    "METADATA_KEY",
    "MODES",
    "ColumnCipher",
    "ColumnMode",
    "InvalidCellError",
    "decrypt_columns",
    "encrypt_columns",
]

for _name in ("ColumnCipher", "InvalidCellError", "decrypt_columns", "encrypt_columns"):
    globals()[_name].__module__ = __name__
del _name
