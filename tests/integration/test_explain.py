"""``km.explain`` and ``secureml explain`` against the real server: every source in lookup
order, the winner and what it shadows, the cache, keyed fingerprints, and never a value."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

pytestmark = pytest.mark.integration

SECUREML = str(Path(sys.executable).with_name("secureml"))


@pytest.fixture
def km(bao_server: DevServer, vault_path: str) -> KeyManager:
    return KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )


def states(report: object) -> list[tuple[str, str, bool]]:
    return [(s.kind, s.state, s.shadowed) for s in report.sources]  # type: ignore[attr-defined]


def test_the_winner_and_what_it_shadows_without_the_value(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2-" + os.urandom(6).hex()
    km.set_secret("db_password", "old")
    km.set_secret("db_password", secret)
    monkeypatch.setenv("SECUREML_DB_PASSWORD", "from-env")
    report = km.explain("db_password", default="a-default")
    assert report.served_from == km._core.primary.locate("db_password")  # type: ignore[union-attr]
    assert states(report) == [
        ("vault", "answers", False),
        ("env", "answers", True),
        ("default", "answers", True),
        ("dev-default", "off", False),
    ]
    vault = report.sources[0]
    assert vault.version == 2
    assert vault.kv_version == 2
    assert vault.created_at is not None
    assert 0 <= (vault.age_seconds or 0) < 60
    assert report.sources[1].location == "env:SECUREML_DB_PASSWORD"
    # Never the value, nor an unkeyed hash of it, anywhere in the report.
    shown = repr(report) + json.dumps(report.as_dict())
    for forbidden in (
        secret,
        "from-env",
        "a-default",
        hashlib.sha256(secret.encode()).hexdigest()[:16],
    ):
        assert forbidden not in shown
    assert report.fingerprint == vault.fingerprint
    assert report.fingerprint != report.sources[1].fingerprint  # other values, other prints
    assert report.key_check_value is None  # a password: no check value to brute-force


def test_fingerprints_compare_across_managers_only_with_a_shared_key(
    km: KeyManager, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    km.set_secret("shared", "same-value")
    other = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    key = os.urandom(32)
    assert (
        km.explain("shared", fingerprint_key=key).fingerprint
        == other.explain("shared", fingerprint_key=key).fingerprint
    )
    assert km.explain("shared", fingerprint_key=key).fingerprint_scope == "shared"
    assert km.explain("shared").fingerprint_scope == "process"
    assert km.explain("shared").fingerprint != km.explain("shared", fingerprint_key=key).fingerprint
    monkeypatch.setenv("SECUREML_FINGERPRINT_KEY", "hex:" + key.hex())
    assert (
        km.explain("shared").fingerprint == other.explain("shared", fingerprint_key=key).fingerprint
    )
    with pytest.raises(ValueError, match="at least 16 bytes"):
        km.explain("shared", fingerprint_key=b"short")


def test_the_cache_state_is_reported(bao_server: DevServer, vault_path: str) -> None:
    km = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        cache_ttl=0.3,
        max_stale=60,
    )
    km.set_secret("cached", "v")
    assert km.explain("cached").cache.state == "none"
    km.get_secret("cached")
    fresh = km.explain("cached").cache
    assert fresh.state == "fresh"
    assert 0 < (fresh.seconds_left or 0) <= 0.3
    time.sleep(0.4)
    stale = km.explain("cached").cache
    assert stale.state == "stale"
    assert 59 < (stale.seconds_left or 0) <= 60


def test_an_outage_is_reported_and_the_fallback_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_DOWN_SECRET", "env-value")
    km = KeyManager(vault_url="http://127.0.0.1:9", vault_token="t", timeout=0.5, retries=0)
    report = km.explain("down_secret")
    assert states(report)[:2] == [("vault", "unavailable", False), ("env", "answers", False)]
    assert report.sources[0].detail
    assert report.served_from == "env:SECUREML_DOWN_SECRET"


def test_dev_defaults_and_keys(
    km: KeyManager, bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    km.generate_key("model_key")
    report = km.explain("model_key")
    assert report.key_check_value is not None
    assert len(report.key_check_value) == 6
    loose = KeyManager(use_default_fallback=True, use_env_fallback=False)
    assert states(loose.explain("anything")) == [
        ("env", "off", False),
        ("default", "not-given", False),
        ("dev-default", "answers", False),
    ]
    monkeypatch.setenv("SECUREML_ENV", "production")
    refused = loose.explain("anything")
    assert refused.sources[-1].state == "refused"
    assert refused.served_from is None


def test_a_soft_deleted_latest_version_is_reported(km: KeyManager) -> None:
    km.set_secret("gone", "v")
    km.delete_secret("gone")
    report = km.explain("gone")
    assert report.sources[0].state == "deleted"
    assert report.sources[0].version == 1


def test_the_command_prints_the_report_never_the_value(
    bao_server: DevServer, vault_path: str, km: KeyManager
) -> None:
    secret = "cli-" + os.urandom(6).hex()
    km.set_secret("api", secret)
    env = {
        **os.environ,
        "VAULT_ADDR": bao_server.address,
        "VAULT_TOKEN": bao_server.root_token,
        "SECUREML_API": "shadowed-env",
    }

    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SECUREML, "--vault-path", vault_path, "explain", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    text = explain("api")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"api: served from vault:secret/{vault_path}/api\n")
    assert "shadowed by the source above" in text.stdout
    assert "fingerprint      hmac-sha256:" in text.stdout
    data = json.loads(explain("api", "--json").stdout)
    assert data["fingerprint"].startswith("hmac-sha256:")
    assert data["sources"][0]["created_at"].endswith("Z")  # RFC 3339
    assert data["sources"][1]["shadowed"] is True
    for done in (text, explain("api", "--json")):
        assert secret not in done.stdout + done.stderr
        assert "shadowed-env" not in done.stdout + done.stderr
    assert explain("nosuch").returncode == 3


def test_explain_agrees_with_what_a_read_returns(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache decides what a read returns while it is fresh, and (Vault down) while
    it is stale within max_stale: explain says so, and fingerprints what a read gets."""
    from tests.support.fault_proxy import Fault, FaultProxy

    with FaultProxy(bao_server.address) as proxy:
        km = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            cache_ttl=60,
            timeout=1,
            retries=0,
        )
        writer = KeyManager(
            vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
        )
        writer.set_secret("c", "first")
        assert km.get_secret("c") == "first"
        writer.set_secret("c", "second")  # elsewhere: km's cache still serves "first"
        key = os.urandom(32)
        report = km.explain("c", fingerprint_key=key)
        first = KeyManager(use_env_fallback=False)
        monkeypatch.setenv("SECUREML_ONLY_FOR_PRINT", "first")
        expected = KeyManager().explain("only_for_print", fingerprint_key=key).fingerprint
        assert report.fingerprint == expected  # what a read returns: the cached value
        assert report.sources[0].detail == "from the cache; Vault holds another value now"
        del first
        # Vault down, the entry past its TTL but within max_stale: a read serves it.
        stale_km = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=vault_path,
            cache_ttl=0.1,
            max_stale=60,
            timeout=1,
            retries=0,
        )
        monkeypatch.setenv("SECUREML_C", "env-value")
        assert stale_km.get_secret("c") == "second"
        time.sleep(0.2)
        proxy.inject(*[Fault.drop(forward=False)] * 10)
        report = stale_km.explain("c")
        assert report.served_from == stale_km._core.primary.locate("c")  # type: ignore[union-attr]
        assert (report.sources[0].detail or "").startswith("from the cache (stale:")
        assert report.sources[1].shadowed


def test_explain_refuses_reserved_names_and_emits_an_event(bao_server: DevServer) -> None:
    events: list[object] = []
    km = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, audit_hook=events.append
    )
    for reserved in ("vault_token", "fingerprint_key"):
        with pytest.raises(ValueError, match="is reserved"):
            km.explain(reserved)
    km.explain("anything")
    assert [e.operation for e in events][-1] == "explain"  # type: ignore[attr-defined]


def test_no_key_check_value_for_a_password_in_a_keys_place(
    km: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    km.generate_key("k")
    km.delete_secret("k")
    monkeypatch.setenv("SECUREML_K", "Summer2024Summer2024Summ")  # decodes as base64
    report = km.explain("k")
    assert report.served_from == "env:SECUREML_K"
    assert report.key_check_value is None


def test_the_process_fingerprint_key_is_new_in_a_forked_child() -> None:
    from secureml.key_management import _explain

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, _explain._PROCESS_KEY.key)
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64) != _explain._PROCESS_KEY.key
    os.close(read)
    os.close(write)
