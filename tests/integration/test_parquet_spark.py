"""Spark reads what ParquetKeys writes, and ParquetKeys reads what Spark writes (issue 13):
pyspark in local mode, parquet-java's PropertiesDrivenCryptoFactory with a test-only
Java KmsClient speaking the Vault Transit protocol (tests/support/java/TransitKms.java,
compiled here with javac against pyspark's jars), and the real OpenBao."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pyspark = pytest.importorskip("pyspark")
if shutil.which("javac") is None or shutil.which("java") is None:
    pytest.skip("Spark needs Java 17+ (java and javac)", allow_module_level=True)

from secureml._devserver import DevServer  # noqa: E402
from secureml.key_management import KeyManager  # noqa: E402
from secureml.parquet import ParquetKeys  # noqa: E402

CLIENT_SOURCE = Path(__file__).resolve().parents[1] / "support" / "java" / "TransitKms.java"
CLIENT_CLASS = "secureml.test.TransitKms"
ROWS = [(i, f"user{i}@example.com", i / 3) for i in range(500)]
TABLE = pa.table(
    {
        "id": pa.array([r[0] for r in ROWS], pa.int64()),
        "email": pa.array([r[1] for r in ROWS]),
        "score": pa.array([r[2] for r in ROWS]),
    }
)


@pytest.fixture(scope="module")
def client_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kms-client")
    jars = Path(pyspark.__file__).parent / "jars"
    subprocess.run(
        ["javac", "-cp", f"{jars}/*", "-d", str(out), str(CLIENT_SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def keys(bao_server: DevServer) -> ParquetKeys:
    with contextlib.suppress(subprocess.CalledProcessError):
        bao_server.bao("secrets", "enable", "transit")
    manager = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    footer, column = (f"spark-{part}-{uuid.uuid4().hex[:6]}" for part in ("footer", "pii"))
    for name in (footer, column):
        manager.transit.ensure_key(name)
    return ParquetKeys(manager, footer_key=footer, column_keys={column: ["email"]})


@pytest.fixture(scope="module")
def spark(bao_server: DevServer, keys: ParquetKeys, client_classes: Path) -> Iterator[Any]:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("secureml-parquet-interop")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")  # loopback only
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.extraClassPath", str(client_classes))
        .config("spark.hadoop.parquet.encryption.key.access.token", bao_server.root_token)
    )
    for name, value in keys.spark_conf(CLIENT_CLASS).items():
        builder = builder.config(name, value)
    session = builder.getOrCreate()
    try:
        yield session
    finally:
        session.stop()


def test_spark_reads_what_parquet_keys_wrote(spark: Any, keys: ParquetKeys, tmp_path: Path) -> None:
    path = tmp_path / "from-pyarrow.parquet"
    keys.write_table(TABLE, path)
    rows = spark.read.parquet(str(path)).orderBy("id").collect()
    assert [(r.id, r.email, r.score) for r in rows] == ROWS


def test_parquet_keys_reads_what_spark_wrote(spark: Any, keys: ParquetKeys, tmp_path: Path) -> None:
    folder = tmp_path / "from-spark"
    spark.createDataFrame(ROWS, "id long, email string, score double").coalesce(1).write.parquet(
        str(folder)
    )
    parts = sorted(folder.glob("part-*.parquet"))
    assert parts
    assert b"user1@example.com" not in b"".join(p.read_bytes() for p in parts)
    table = pa.concat_tables([keys.read_table(p) for p in parts]).sort_by("id")
    assert table.column("email").to_pylist() == [r[1] for r in ROWS]


def test_spark_reads_after_a_rotation_and_rewrap(
    spark: Any, bao_server: DevServer, keys: ParquetKeys, tmp_path: Path
) -> None:
    manager = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    external = ParquetKeys(
        manager,
        footer_key=keys.footer_key,
        column_keys=keys.column_keys,
        external_key_material=True,
    )
    path = tmp_path / "rotated.parquet"
    external.write_table(TABLE, path)
    # A stale Hadoop checksum sidecar (Spark's local file system wrote one when it wrote
    # the material): left in place, Spark would refuse the rewrapped material.
    (tmp_path / "._KEY_MATERIAL_FOR_rotated.parquet.json.crc").write_bytes(b"stale")
    for name in (keys.footer_key, *keys.column_keys):
        manager.transit.rotate(name)
    assert external.rewrap(path) == 2
    for name in (keys.footer_key, *keys.column_keys):
        latest = manager.transit.key_info(name).latest_version
        manager.transit.set_min_decryption_version(name, latest)
    # Spark's first unwrap of these keys: only the rewrapped (latest version) material opens.
    rows = spark.read.parquet(str(path)).orderBy("id").collect()
    assert [r.email for r in rows] == [r[1] for r in ROWS]
