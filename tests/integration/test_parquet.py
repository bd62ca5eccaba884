"""Parquet modular encryption with master keys in real OpenBao Transit (issue 13, the
pyarrow half; Spark interop is still to come)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from secureml._devserver import DevServer  # noqa: E402
from secureml.key_management import KeyManager  # noqa: E402
from secureml.parquet import ParquetKeys  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402

TABLE = pa.table(
    {
        "id": pa.array(range(1000)),
        "email": pa.array([f"user{i}@example.com" for i in range(1000)]),
        "score": pa.array([i / 7 for i in range(1000)]),
    }
)


@pytest.fixture(scope="module")
def transit(bao_server: DevServer) -> tuple[str, str]:
    with contextlib.suppress(subprocess.CalledProcessError):
        bao_server.bao("secrets", "enable", "transit")
    footer, column = (f"pq-{part}-{uuid.uuid4().hex[:6]}" for part in ("footer", "pii"))
    manager = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    for name in (footer, column):
        manager.transit.ensure_key(name)
    return footer, column


@pytest.fixture
def proxy(bao_server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(bao_server.address) as fault_proxy:
        yield fault_proxy


def keys(url: str, token: str, transit: tuple[str, str], **options: bool) -> ParquetKeys:
    manager = KeyManager(vault_url=url, vault_token=token)
    footer, column = transit
    return ParquetKeys(manager, footer_key=footer, column_keys={column: ["email"]}, **options)


@pytest.mark.parametrize("double_wrapping", [True, False], ids=["double", "single"])
@pytest.mark.parametrize("external", [False, True], ids=["internal", "external"])
@pytest.mark.parametrize("plaintext_footer", [False, True], ids=["sealed-footer", "open-footer"])
def test_round_trip(  # noqa: PLR0917 - fixtures and three parameters
    bao_server: DevServer,
    transit: tuple[str, str],
    tmp_path: Path,
    double_wrapping: bool,
    external: bool,
    plaintext_footer: bool,
) -> None:
    options = {
        "double_wrapping": double_wrapping,
        "external_key_material": external,
        "plaintext_footer": plaintext_footer,
    }
    writer = keys(bao_server.address, bao_server.root_token, transit, **options)
    path = tmp_path / "users.parquet"
    writer.write_table(TABLE, path)
    reader = keys(bao_server.address, bao_server.root_token, transit, **options)
    assert reader.read_table(path).equals(TABLE)
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert bao_server.root_token.encode() not in written
    assert b"user1@example.com" not in written  # the column is encrypted
    if plaintext_footer:  # no keys: the schema and the open columns still read
        assert pq.read_table(path, columns=["id"]).column("id").to_pylist()[:3] == [0, 1, 2]
    if external:
        material = json.loads((tmp_path / "_KEY_MATERIAL_FOR_users.parquet.json").read_text())
        for text in material.values():
            inner = json.loads(text)
            field = "wrappedKEK" if double_wrapping else "wrappedDEK"
            assert inner[field].startswith("vault:v1:")
            assert inner.get("kmsInstanceID", "transit") == "transit"


def test_rewrap_after_a_rotation_keeps_files_readable(
    bao_server: DevServer, transit: tuple[str, str], tmp_path: Path
) -> None:
    writer = keys(bao_server.address, bao_server.root_token, transit, external_key_material=True)
    path = tmp_path / "users.parquet"
    writer.write_table(TABLE, path)
    (tmp_path / "._KEY_MATERIAL_FOR_users.parquet.json.crc").write_bytes(b"stale")
    admin = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    footer, column = transit
    for name in (footer, column):
        admin.transit.rotate(name)
    assert writer.rewrap(tmp_path) == 2
    text = (tmp_path / "_KEY_MATERIAL_FOR_users.parquet.json").read_text()
    assert "vault:v1:" not in text
    assert not (tmp_path / "._KEY_MATERIAL_FOR_users.parquet.json.crc").exists()
    version = admin.transit.key_info(footer).latest_version
    for name in (footer, column):
        admin.transit.set_min_decryption_version(name, version)
    reader = keys(bao_server.address, bao_server.root_token, transit, external_key_material=True)
    assert reader.read_table(path).equals(TABLE)
    with pytest.raises(ValueError, match="no external key material"):
        writer.rewrap(tmp_path / "missing.parquet")


def test_a_crafted_kms_url_in_a_file_is_never_called(
    bao_server: DevServer, transit: tuple[str, str], tmp_path: Path
) -> None:
    writer = keys(bao_server.address, bao_server.root_token, transit, external_key_material=True)
    path = tmp_path / "users.parquet"
    writer.write_table(TABLE, path)
    material_path = tmp_path / "_KEY_MATERIAL_FOR_users.parquet.json"
    material = json.loads(material_path.read_text())
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.5)
        evil = f"http://127.0.0.1:{listener.getsockname()[1]}"
        footer = json.loads(material["footerKey"])
        footer["kmsInstanceURL"] = evil
        material["footerKey"] = json.dumps(footer)
        material_path.write_text(json.dumps(material))
        reader = keys(
            bao_server.address, bao_server.root_token, transit, external_key_material=True
        )
        assert reader.read_table(path).equals(TABLE)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody ever connected: the token went nowhere else


def test_200_files_cost_one_wrap_per_master_key(
    bao_server: DevServer, transit: tuple[str, str], proxy: FaultProxy, tmp_path: Path
) -> None:
    writer = keys(proxy.origin, bao_server.root_token, transit)
    for i in range(200):  # fresh properties per file, one key cache
        writer.write_table(TABLE, tmp_path / f"part-{i}.parquet")
    wraps = [h for h in proxy.hits if "/transit/encrypt/" in h.path]
    assert len(wraps) == 2  # footer key and column key, once each (double wrapping)
    reader = keys(proxy.origin, bao_server.root_token, transit)
    proxy.hits.clear()
    for i in range(200):
        assert reader.read_table(tmp_path / f"part-{i}.parquet").num_rows == 1000
    assert len([h for h in proxy.hits if "/transit/decrypt/" in h.path]) == 2


def test_datasets_written_and_read_on_threads(
    bao_server: DevServer, transit: tuple[str, str], tmp_path: Path
) -> None:
    pk = keys(bao_server.address, bao_server.root_token, transit)
    bucketed = TABLE.append_column("bucket", pa.array([i % 8 for i in range(1000)]))
    pk.write_dataset(bucketed, tmp_path / "ds", partitioning=["bucket"], use_threads=True)
    back = pk.dataset(tmp_path / "ds", partitioning=["bucket"]).to_table()
    assert sorted(back.column("email").to_pylist()) == sorted(TABLE.column("email").to_pylist())


def test_spark_settings(bao_server: DevServer, transit: tuple[str, str]) -> None:
    pk = keys(bao_server.address, bao_server.root_token, transit)
    conf = pk.spark_conf("com.example.TransitKms")
    footer, column = transit
    assert conf["spark.hadoop.parquet.encryption.footer.key"] == footer
    assert conf["spark.hadoop.parquet.encryption.column.keys"] == f"{column}:email"
    assert conf["spark.hadoop.parquet.encryption.kms.instance.url"] == bao_server.address
    assert bao_server.root_token not in json.dumps(conf)


def test_a_dataset_with_external_key_material_is_refused_with_the_way_out(
    bao_server: DevServer, transit: tuple[str, str], tmp_path: Path
) -> None:
    """pyarrow's dataset reader does not give the key tools each file's path, so it
    cannot find external key material: refused up front, pointing at read_table."""
    pk = keys(bao_server.address, bao_server.root_token, transit, external_key_material=True)
    pk.write_dataset(TABLE, tmp_path / "ds")
    with pytest.raises(ValueError, match="read_table"):
        pk.dataset(tmp_path / "ds")
    (written,) = [p for p in (tmp_path / "ds").iterdir() if p.suffix == ".parquet"]
    assert pk.read_table(written).num_rows == TABLE.num_rows


def test_keys_with_external_material_still_read_a_dataset_keyed_in_its_footers(
    bao_server: DevServer, transit: tuple[str, str], tmp_path: Path
) -> None:
    keys(bao_server.address, bao_server.root_token, transit).write_dataset(TABLE, tmp_path / "ds")
    external = keys(bao_server.address, bao_server.root_token, transit, external_key_material=True)
    assert external.dataset(tmp_path / "ds").to_table().num_rows == TABLE.num_rows
