"""Parquet modular encryption with master keys in Vault Transit.

Apache Parquet's modular encryption (``pyarrow.parquet.encryption``, and parquet-java,
which Spark uses) encrypts columns and the footer with data keys that are wrapped by
*master keys* in a KMS. Here the KMS is Vault (or OpenBao) Transit: wrapping is Transit
``encrypt``, unwrapping Transit ``decrypt``, and the wrapped key is the ``vault:vN:...``
string, stored verbatim, so parquet-java's Vault client protocol (and Spark) reads the
same files.

Rules built in:
- The Transit mount and the Vault address come from the manager, never from a file's key
  material: a crafted file cannot redirect the token (``kms_instance_url`` is ignored).
- Encryption properties are made fresh for every file (reusing them is a known failure,
  aws/aws-sdk-pandas #2642).
- Transit keys must be non-derived and non-convergent: parquet-java sends no context.

Example:
    >>> pk = ParquetKeys(km, footer_key="pq-footer", column_keys={"pq-pii": ["email"]})
    >>> pk.write_table(table, "users.parquet")                   # doctest: +SKIP
    >>> pk.read_table("users.parquet")                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .key_management import ConfigurationError, KeyManager, TransitKeys, atomic_output
from .key_management._core import core_of

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds

__all__ = ["ParquetKeys", "VaultKmsClient"]  # noqa: F822 - VaultKmsClient: see __getattr__

_WRAPPED = re.compile(r"vault:v\d+:[A-Za-z0-9+/=]+")
_MATERIAL_PREFIX = "_KEY_MATERIAL_FOR_"
#: pyarrow needs a non-empty "key access token"; the real one never leaves the manager.
_ACCESS_LABEL = "secureml-managed"


def _encryption() -> Any:
    try:
        from pyarrow.parquet import encryption
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "Parquet encryption needs pyarrow: pip install 'secureml[arrow]'"
        ) from None
    return encryption


def __getattr__(name: str) -> Any:
    # ``VaultKmsClient`` subclasses pyarrow's KmsClient, so it is made on first use:
    # importing this module must not import pyarrow (an optional extra).
    if name == "VaultKmsClient":
        return _client_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CLIENT: type | None = None


def _client_class() -> type:
    global _CLIENT  # noqa: PLW0603 - a lazily made class
    if _CLIENT is not None:
        return _CLIENT
    encryption = _encryption()

    class VaultKmsClient(encryption.KmsClient):  # type: ignore[misc, name-defined]
        """A ``pyarrow.parquet.encryption.KmsClient`` whose master keys are Vault
        Transit keys: wrap = Transit encrypt, unwrap = Transit decrypt, the wrapped key
        the ``vault:vN:...`` string (thread-safe: pyarrow calls it from several threads
        when writing datasets).

        Args:
            transit: The manager's Transit keys on the mount holding the master keys.
        """

        def __init__(self, transit: TransitKeys) -> None:
            super().__init__()
            self._transit = transit

        def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
            return self._transit.encrypt(master_key_identifier, bytes(key_bytes))

        def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
            return self._transit.decrypt(master_key_identifier, wrapped_key)

        def __repr__(self) -> str:
            return f"VaultKmsClient({self._transit!r})"

    VaultKmsClient.__module__ = __name__
    _CLIENT = VaultKmsClient
    return _CLIENT


class ParquetKeys:
    """Write and read encrypted Parquet with master keys in Vault Transit.

    Args:
        manager: The manager whose Vault (and identity) wraps and unwraps the keys.
        footer_key: The Transit key that protects the footer.
        column_keys: ``{transit_key: [column, ...]}``, as pyarrow's
            ``EncryptionConfiguration`` takes it.
        mount: The Transit mount (the files' ``kms_instance_id``).
        double_wrapping: Wrap data keys with local key-encryption keys, and only those
            with Transit (one Transit call per master key per ``cache_lifetime``, not
            per file).
        plaintext_footer: Leave the footer readable (schema and unencrypted columns open
            to readers without keys).
        external_key_material: Keep the wrapped keys in ``_KEY_MATERIAL_FOR_<file>.json``
            beside each file, which :meth:`rewrap` can update after a Transit rotation.
        cache_lifetime: How long pyarrow keeps unwrapped keys.

    Raises:
        ConfigurationError: pyarrow is not installed.
    """

    def __init__(
        self,
        manager: KeyManager,
        footer_key: str,
        column_keys: Mapping[str, Sequence[str]] | None = None,
        *,
        mount: str = "transit",
        double_wrapping: bool = True,
        plaintext_footer: bool = False,
        external_key_material: bool = False,
        cache_lifetime: timedelta = timedelta(minutes=10),
    ) -> None:
        encryption = _encryption()
        self._manager = manager
        self._transit = TransitKeys(manager, mount=mount)
        self._mount = mount
        self.footer_key = footer_key
        self.column_keys = {k: list(v) for k, v in (column_keys or {}).items()}
        self._double_wrapping = double_wrapping
        self._plaintext_footer = plaintext_footer
        self._external = external_key_material
        self._cache_lifetime = cache_lifetime
        transit = self._transit
        # The factory ignores the connection config's URL and mount: a file's key
        # material names them, and a crafted file must not send the token elsewhere.
        client = _client_class()
        self._factory = encryption.CryptoFactory(lambda _config: client(transit))
        self._connection = encryption.KmsConnectionConfig(
            kms_instance_id=mount, key_access_token=_ACCESS_LABEL
        )

    # -- properties --------------------------------------------------------------------

    def _encryption_config(self) -> Any:
        return _encryption().EncryptionConfiguration(
            footer_key=self.footer_key,
            column_keys=self.column_keys,
            double_wrapping=self._double_wrapping,
            plaintext_footer=self._plaintext_footer,
            internal_key_material=not self._external,
            cache_lifetime=self._cache_lifetime,
        )

    def _decryption_config(self) -> Any:
        return _encryption().DecryptionConfiguration(cache_lifetime=self._cache_lifetime)

    def encryption_properties(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Fresh ``FileEncryptionProperties`` for one file (``path`` is needed with
        external key material, which is written beside it)."""
        if self._external:
            if path is None:
                raise ValueError("external key material needs the file's path")
            from pyarrow import fs

            return self._factory.file_encryption_properties(
                self._connection, self._encryption_config(), os.fspath(path), fs.LocalFileSystem()
            )
        return self._factory.file_encryption_properties(self._connection, self._encryption_config())

    def decryption_properties(self, path: str | os.PathLike[str] | None = None) -> Any:
        """``FileDecryptionProperties`` for reading (``path`` with external material)."""
        if self._external and path is not None:
            from pyarrow import fs

            return self._factory.file_decryption_properties(
                self._connection, self._decryption_config(), os.fspath(path), fs.LocalFileSystem()
            )
        return self._factory.file_decryption_properties(self._connection, self._decryption_config())

    # -- files ----------------------------------------------------------------------------

    def write_table(self, table: pa.Table, path: str | os.PathLike[str], **kwargs: Any) -> None:
        """``pyarrow.parquet.write_table`` with fresh encryption properties."""
        import pyarrow.parquet as pq

        pq.write_table(
            table, path, encryption_properties=self.encryption_properties(path), **kwargs
        )

    def read_table(self, path: str | os.PathLike[str], **kwargs: Any) -> pa.Table:
        """``pyarrow.parquet.read_table`` with this manager's decryption properties."""
        import pyarrow.parquet as pq

        return pq.read_table(path, decryption_properties=self.decryption_properties(path), **kwargs)

    # -- datasets -------------------------------------------------------------------------

    def dataset_write_options(self) -> Any:
        """``file_options`` for ``pyarrow.dataset.write_dataset`` (per-file properties)."""
        import pyarrow.dataset as ds

        config = ds.ParquetEncryptionConfig(
            self._factory, self._connection, self._encryption_config()
        )
        return ds.ParquetFileFormat().make_write_options(encryption_config=config)

    def write_dataset(
        self, table: pa.Table, base_dir: str | os.PathLike[str], **kwargs: Any
    ) -> None:
        """``pyarrow.dataset.write_dataset`` of encrypted Parquet files."""
        import pyarrow.dataset as ds

        ds.write_dataset(
            table,
            os.fspath(base_dir),
            format="parquet",
            file_options=self.dataset_write_options(),
            **kwargs,
        )

    def dataset(self, base_dir: str | os.PathLike[str], **kwargs: Any) -> ds.Dataset:
        """``pyarrow.dataset.dataset`` over encrypted Parquet files (keys in each footer).

        Raises:
            ValueError: These keys use external key material, which pyarrow's dataset
                reader cannot open (it does not give the key tools each file's path).
        """
        import pyarrow.dataset as ds

        if self._external and any(_material_files(Path(base_dir))):
            raise ValueError(
                "pyarrow's dataset reader cannot open Parquet files with external key "
                "material (it does not pass each file's path on to find its "
                "_KEY_MATERIAL_FOR_*.json): read the files with read_table(path), or write "
                "datasets with ParquetKeys(..., external_key_material=False)"
            )

        config = ds.ParquetDecryptionConfig(
            self._factory, self._connection, self._decryption_config()
        )
        options = ds.ParquetFragmentScanOptions(decryption_config=config)
        file_format = ds.ParquetFileFormat(default_fragment_scan_options=options)
        return ds.dataset(os.fspath(base_dir), format=file_format, **kwargs)

    # -- rotation -------------------------------------------------------------------------

    def rewrap(self, path: str | os.PathLike[str]) -> int:
        """Re-wrap, inside Vault, every wrapped key in the external key material of
        ``path`` (a file or a folder of files) with the latest Transit key versions.

        No key bytes enter this process (Transit ``rewrap``). Run it after
        ``transit.rotate(key)`` and before raising ``min_decryption_version``. Each
        material file is replaced atomically, and Hadoop's ``.crc`` checksum sidecar for
        it is removed (Spark's local file system would otherwise refuse the new file).

        Returns:
            How many wrapped keys were rewrapped.

        Raises:
            ValueError: ``path`` has no external key material (keys inside a Parquet
                footer cannot change without rewriting the file).
        """
        materials = list(_material_files(Path(path)))
        if not materials:
            raise ValueError(
                f"{os.fspath(path)!r} has no external key material (_KEY_MATERIAL_FOR_*.json):"
                " keys inside a Parquet footer cannot be rewrapped in place; write files "
                "with external_key_material=True"
            )
        done = 0
        for material in materials:
            outer = json.loads(material.read_text())
            for slot, text in outer.items():
                inner = json.loads(text)
                field = "wrappedKEK" if inner.get("doubleWrapping") else "wrappedDEK"
                wrapped = inner.get(field, "")
                if not _WRAPPED.fullmatch(wrapped or ""):
                    raise ValueError(f"{material.name}: {slot} holds no Transit-wrapped key")
                inner[field] = self._transit.rewrap(inner["masterKeyID"], wrapped)
                outer[slot] = json.dumps(inner, separators=(",", ":"))
                done += 1
            with atomic_output(material, durable=True) as out:
                out.write(json.dumps(outer, separators=(",", ":")).encode())
            with contextlib.suppress(FileNotFoundError):
                (material.parent / f".{material.name}.crc").unlink()
        return done

    def spark_conf(self, kms_client_class: str, *, vault_url: str | None = None) -> dict[str, str]:
        """The Spark settings that read and write the same files with parquet-java.

        The access token is not included: set ``spark.hadoop.parquet.encryption.key.
        access.token`` from your secret store (Spark redacts ``*token*`` settings).

        Args:
            kms_client_class: The Java ``KmsClient`` class speaking the Vault Transit
                protocol (parquet-java's ``VaultClient`` sample, or your own).
            vault_url: The one Vault address the Java client calls (default: the
                manager's first address).
        """
        vault = core_of(self._manager).settings.vault
        url = vault_url or (vault.urls[0] if vault is not None else None)
        if url is None:
            raise ConfigurationError("spark_conf needs a Vault: this manager has none")
        columns = ";".join(f"{key}:{','.join(cols)}" for key, cols in self.column_keys.items())
        prefix = "spark.hadoop.parquet."
        conf = {
            f"{prefix}crypto.factory.class": (
                "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
            ),
            f"{prefix}encryption.kms.client.class": kms_client_class,
            f"{prefix}encryption.kms.instance.id": self._mount,
            f"{prefix}encryption.kms.instance.url": url,
            f"{prefix}encryption.footer.key": self.footer_key,
            f"{prefix}encryption.double.wrapping": str(self._double_wrapping).lower(),
            f"{prefix}encryption.plaintext.footer": str(self._plaintext_footer).lower(),
            f"{prefix}encryption.key.material.store.internally": str(not self._external).lower(),
        }
        if columns:
            conf[f"{prefix}encryption.column.keys"] = columns
        return conf

    def __repr__(self) -> str:
        return (
            f"ParquetKeys(footer_key={self.footer_key!r}, column_keys={self.column_keys!r}, "
            f"mount={self._mount!r})"
        )


def _material_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(path.rglob(f"{_MATERIAL_PREFIX}*.json"))
        return
    beside = path.parent / f"{_MATERIAL_PREFIX}{path.name}.json"
    if beside.exists():
        yield beside
