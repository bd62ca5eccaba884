"""examples/asgi_app.py against the real OpenBao server, through Starlette's TestClient."""

from __future__ import annotations

import base64
import importlib.util
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

# Starlette 1.x wants httpx2 under its TestClient and warns (an error here) when it
# falls back to httpx, which is what the dev extras install. Only that warning is let by.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient

APP = Path(__file__).resolve().parents[2] / "examples" / "asgi_app.py"


def load_app() -> ModuleType:
    """examples/ is no package: load the module from its file, under a name of its own."""
    name = f"asgi_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture
def key_name() -> str:
    return f"asgi-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def writer(bao_server: DevServer) -> KeyManager:
    """A manager of the test's own on the same server, to seed and check what the app sees."""
    return KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)


@pytest.fixture
def client(
    bao_server: DevServer, key_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("VAULT_ADDR", bao_server.address)
    monkeypatch.setenv("VAULT_TOKEN", bao_server.root_token)
    monkeypatch.setenv("ASGI_APP_KEY", key_name)
    with TestClient(load_app().app) as client:  # runs the lifespan: startup, shutdown
        yield client


def test_secret_facts_tell_the_length_never_the_value(
    client: TestClient, writer: KeyManager
) -> None:
    folder = uuid.uuid4().hex[:12]
    value = f"api-{uuid.uuid4().hex}"
    writer.set_secret(f"demo/{folder}/api_token", value)

    answer = client.get(f"/secrets/{folder}/api_token")
    assert answer.status_code == 200
    assert answer.json() == {
        "name": f"demo/{folder}/api_token",
        "type": "str",
        "length": len(value),
    }
    assert value not in answer.text

    assert client.get(f"/secrets/{folder}/missing").status_code == 404
    refused = client.get(f"/secrets/{folder}/a..b")
    assert refused.status_code == 400
    assert refused.json() == {"error": "invalid secret name"}


def test_secrets_outside_the_demo_folder_are_out_of_reach(
    client: TestClient, writer: KeyManager
) -> None:
    name = f"outside-{uuid.uuid4().hex[:12]}"
    writer.set_secret(name, "not for the web")
    assert client.get(f"/secrets/{name}").status_code == 404  # it reads demo/<name>


def test_encrypt_decrypt_round_trip(client: TestClient, writer: KeyManager, key_name: str) -> None:
    plaintext = b"row 42: alice@example.com"
    sealed = client.post("/encrypt", content=plaintext)
    assert sealed.status_code == 200
    blob = base64.b64decode(sealed.json()["ciphertext"])
    assert plaintext not in blob
    assert writer.key_versions(key_name)  # the app made its key at startup

    opened = client.post("/decrypt", json=sealed.json())
    assert opened.status_code == 200
    assert base64.b64decode(opened.json()["plaintext"]) == plaintext


def test_tampered_ciphertext_is_a_one_line_400_without_secrets(
    client: TestClient, writer: KeyManager, key_name: str
) -> None:
    plaintext = b"the quarterly numbers"
    blob = bytearray(
        base64.b64decode(client.post("/encrypt", content=plaintext).json()["ciphertext"])
    )
    blob[-1] ^= 0x01  # flip one bit of the tag
    answer = client.post("/decrypt", json={"ciphertext": base64.b64encode(blob).decode()})

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid ciphertext"}
    assert "\n" not in answer.text
    key = writer.get_encryption_key(key_name)
    for secret in (
        plaintext,
        key.hex().encode(),
        base64.b64encode(key),
        base64.b64encode(plaintext),
    ):
        assert secret not in answer.content

    garbled = client.post("/decrypt", content=b"not json")
    assert garbled.status_code == 400
    assert "\n" not in garbled.text


def test_health_reports_vault_without_the_token(client: TestClient, bao_server: DevServer) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200
    health = answer.json()
    assert health["ok"] is True
    assert health["reachable"] is True
    assert health["sealed"] is False
    assert health["vault_url"] == bao_server.address
    assert health["kv_version"] == 2
    assert bao_server.root_token not in answer.text
