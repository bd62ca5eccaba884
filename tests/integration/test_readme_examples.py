"""The README's Python examples that other tests do not run (the spec's, the rotation
runbook, Transit and encryption have theirs) run as written against the real server.

Each runs with what its prose says is already there: ``km`` (a manager), ``df`` or
``table`` (the data the text talks about), an ``audit_log``. Nothing of the example is
changed: it is executed verbatim, then its results are checked.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def example(after: str) -> str:
    """The first Python block after the text ``after``."""
    text = README.read_text()
    found = re.search(r"```python\n(.*?)```", text[text.index(after) :], re.DOTALL)
    assert found is not None, f"no Python example after {after!r}"
    return found.group(1)


def run(code: str, where: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, f"README.md ({where})", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture
def km(bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch) -> KeyManager:
    for variable in ("SECUREML_VAULT_URL", "SECUREML_VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("VAULT_ADDR", bao_server.address)
    monkeypatch.setenv("VAULT_TOKEN", bao_server.root_token)
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    return KeyManager(bao_server.address, bao_server.root_token, vault_path)


def test_columns(km: KeyManager) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {"email": ["a@x.org", "b@x.org"], "ssn": ["1", "2"], "device_id": ["d1", "d2"]}
    )
    done = run(example("**Columns**"), "Columns", {"km": km, "df": df})
    assert done["back"]["email"].tolist() == ["a@x.org", "b@x.org"]
    assert done["cells"][1] is None


def test_parquet(km: KeyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    table = pa.table({"email": ["a@x.org"], "ssn": ["1"], "country": ["nl"], "n": [1]})
    done = run(example("**Parquet modular encryption**"), "Parquet", {"km": km, "table": table})
    assert done["table"].column("email").to_pylist() == ["a@x.org"]
    assert any(key.startswith("spark.hadoop.parquet") for key in done["spark_settings"])


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_asyncio_fastapi_app(km: KeyManager) -> None:
    pytest.importorskip("fastapi")
    import hashlib
    import hmac

    from fastapi.testclient import TestClient

    default_folder = KeyManager()  # as the example's: VAULT_ADDR, the default folder
    default_folder.set_secret("webhooks/signing-secret", "whsec")
    default_folder.generate_key("webhooks/archive", overwrite=True)
    done = run(example("aiohttp services. It is not a second client"), "asyncio", {})
    body = b'{"event": "paid"}'
    signature = hmac.new(b"whsec", body, hashlib.sha256).hexdigest()
    with TestClient(done["app"]) as client:
        answer = client.post("/webhook", content=body, headers={"x-signature": signature})
        refused = client.post("/webhook", content=body, headers={"x-signature": "0" * 64})
    assert refused.status_code == 401
    assert answer.status_code == 200, answer.text
    assert answer.json()["archived_bytes"] > len(body)


def test_workers_spec(km: KeyManager) -> None:
    pd = pytest.importorskip("pandas")
    KeyManager().generate_key("pii", overwrite=True)  # where the example's manager looks
    done = run(example("Send its **spec** to worker processes"), "Workers", {})
    batches = [pd.DataFrame({"email": ["a@x.org", "b@x.org"]})]
    (out,) = list(done["encrypt_batches"](batches))
    assert out["email"].tolist() != ["a@x.org", "b@x.org"]


def test_cluster_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from secureml.key_management import KubernetesAuth

    token = tmp_path / "token"
    token.write_text("a-service-account-jwt")
    monkeypatch.setenv("SECUREML_VAULT_K8S_TOKEN_PATH", str(token))
    done = run(
        example("then is treated as during an outage."),
        "Clusters",
        {
            "KeyManager": KeyManager,
            "KubernetesAuth": KubernetesAuth,
            "audit_log": logging.getLogger("audit"),
        },
    )
    assert len(done["km"]._core.vault._settings.urls) == 3  # type: ignore[union-attr]
    assert os.environ.get("SECUREML_VAULT_K8S_TOKEN_PATH")


def test_encrypted_checkpoints_parquet_and_fsspec_urls(
    km: KeyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)
    code = example("### Encrypted checkpoints, Parquet and fsspec URLs")
    done = run(code, "Encrypted checkpoints", {"km": km})
    model = done["model"]
    assert torch.equal(done["bias"], model.bias.detach())
    assert torch.equal(done["rows"], model.weight.detach()[:8])
    assert torch.equal(done["state"]["weight"], model.state_dict()["weight"])
    assert done["ages"].equals(pd.DataFrame({"age": [31, 42]}))
    for name in ("model.safetensors.sml", "model.pt.sml", "users.parquet"):
        assert km.decrypt((tmp_path / name).read_bytes())  # ciphertext at rest, all three
