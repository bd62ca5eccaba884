"""Interoperability with the real `bao` CLI, both ways, on KV v2, KV v1 and custom mounts."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import ConfigurationError, KeyFormatError, KeyManager


def kv_fields(server: DevServer, mount: str, path: str) -> dict[str, Any]:
    """What `bao kv get` sees at ``mount/path``, KV v1 or v2 alike."""
    out = server.bao("kv", "get", "-format=json", f"-mount={mount}", path).stdout
    data = json.loads(out)["data"]
    return data["data"] if "metadata" in data else data


@pytest.fixture(scope="module")
def kv1_mount(bao_server: DevServer) -> str:
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "-version=1", "kv")
    return mount


@pytest.fixture(scope="module")
def kv2_mount(bao_server: DevServer) -> str:
    mount = f"kv2-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={mount}", "-version=2", "kv")
    return mount


def manager_on(server: DevServer, mount: str, path: str, **kwargs: Any) -> KeyManager:
    return KeyManager(
        vault_url=server.address,
        vault_token=server.root_token,
        vault_path=path,
        vault_mount=mount,
        **kwargs,
    )


def test_default_layout_reads_what_bao_wrote(bao_server: DevServer) -> None:
    name = f"api_key_{uuid.uuid4().hex[:8]}"
    bao_server.bao("kv", "put", "-mount=secret", f"secureml/{name}", "value=abc")
    manager = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    assert manager.get_secret(name) == "abc"


@pytest.mark.parametrize("mount_kind", ["secret", "kv1", "kv2"])
def test_round_trip_both_ways(
    request: pytest.FixtureRequest, bao_server: DevServer, vault_path: str, mount_kind: str
) -> None:
    mount = mount_kind if mount_kind == "secret" else request.getfixturevalue(f"{mount_kind}_mount")
    manager = manager_on(bao_server, mount, vault_path)

    # bao -> secureml
    bao_server.bao("kv", "put", f"-mount={mount}", f"{vault_path}/from_cli", "value=cli-text")
    assert manager.get_secret("from_cli") == "cli-text"

    # secureml -> bao: text, bytes, fields, nested names
    assert manager.set_secret("text", "hello") is True
    assert kv_fields(bao_server, mount, f"{vault_path}/text") == {"value": "hello"}

    raw = os.urandom(24)
    assert manager.set_secret("blob", raw) is True
    assert kv_fields(bao_server, mount, f"{vault_path}/blob") == {
        "value": base64.b64encode(raw).decode(),
        "encoding": "base64",
    }
    assert manager.get_secret("blob") == raw

    assert manager.set_secret("db", {"username": "svc", "password": "pw"}) is True
    assert kv_fields(bao_server, mount, f"{vault_path}/db") == {"username": "svc", "password": "pw"}
    assert manager.get_secret("db") == {"username": "svc", "password": "pw"}

    assert manager.set_secret("team/db/password", "nested") is True
    assert kv_fields(bao_server, mount, f"{vault_path}/team/db/password") == {"value": "nested"}
    assert manager.get_secret("team/db/password") == "nested"


def test_multi_field_secret_from_cli_is_a_dict(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/creds", "user=u", "host=h")
    assert vault_manager.get_secret("creds") == {"user": "u", "host": "h"}


def test_value_field_wins_over_other_fields(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/tagged", "value=v", "owner=ml")
    assert vault_manager.get_secret("tagged") == "v"


@pytest.mark.parametrize("kv_version", [1, 2])
def test_explicit_kv_version(
    request: pytest.FixtureRequest, bao_server: DevServer, vault_path: str, kv_version: int
) -> None:
    mount = request.getfixturevalue(f"kv{kv_version}_mount")
    manager = manager_on(bao_server, mount, vault_path, vault_kv_version=kv_version)
    manager.set_secret("x", "explicit")
    assert manager.get_secret("x") == "explicit"


def test_soft_deleted_secret_is_absent(
    bao_server: DevServer,
    vault_manager: KeyManager,
    vault_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault_manager.set_secret("gone", "old")
    bao_server.bao("kv", "delete", "-mount=secret", f"{vault_path}/gone")
    monkeypatch.setenv("SECUREML_GONE", "from-env")
    assert vault_manager.get_secret("gone") == "from-env"


class TestKeys:
    def test_bytes_key_in_every_encoding(self, vault_manager: KeyManager) -> None:
        key = os.urandom(32)
        vault_manager.set_secret("k", key)
        assert vault_manager.get_encryption_key("k") == key
        assert vault_manager.get_encryption_key("k", encoding="hex") == key.hex()
        assert (
            vault_manager.get_encryption_key("k", encoding="base64")
            == base64.b64encode(key).decode()
        )
        assert (
            vault_manager.get_encryption_key("k", encoding="base64url")
            == base64.urlsafe_b64encode(key).decode()
        )

    @pytest.mark.parametrize(
        "render",
        [
            lambda k: k.hex(),
            lambda k: "hex:" + k.hex(),
            lambda k: base64.b64encode(k).decode(),
            lambda k: "base64:" + base64.b64encode(k).decode(),
        ],
        ids=["hex", "hex-prefixed", "base64", "base64-prefixed"],
    )
    def test_text_key_written_by_cli(
        self, bao_server: DevServer, vault_manager: KeyManager, vault_path: str, render: Any
    ) -> None:
        key = os.urandom(32)
        bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/tk", f"value={render(key)}")
        assert vault_manager.get_encryption_key("tk") == key

    def test_wrong_length_names_key_and_lengths_never_material(
        self, vault_manager: KeyManager
    ) -> None:
        key = os.urandom(16)
        vault_manager.set_secret("short", key)
        with pytest.raises(KeyFormatError) as caught:
            vault_manager.get_encryption_key("short", key_bytes=32)
        message = str(caught.value)
        assert "'short'" in message
        assert "16 bytes" in message
        assert "32" in message
        assert key.hex() not in message
        assert base64.b64encode(key).decode() not in message

    def test_fields_without_value_are_not_key_material(self, vault_manager: KeyManager) -> None:
        vault_manager.set_secret("notakey", {"a": "b"})
        with pytest.raises(KeyFormatError, match="notakey"):
            vault_manager.get_encryption_key("notakey")


class TestMountMisconfiguration:
    def test_non_kv_engine(self, bao_server: DevServer) -> None:
        mount = f"transit-{uuid.uuid4().hex[:8]}"
        bao_server.bao("secrets", "enable", f"-path={mount}", "transit")
        manager = manager_on(bao_server, mount, "secureml")
        with pytest.raises(ConfigurationError, match="transit"):
            manager.get_secret("x")

    def test_path_inside_a_mount_is_not_a_mount(self, bao_server: DevServer) -> None:
        manager = manager_on(bao_server, "secret/secureml", "")
        with pytest.raises(ConfigurationError, match="'secret'"):
            manager.get_secret("x")
