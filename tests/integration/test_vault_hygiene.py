"""No secret value or token in any log record, exception message or repr; thread safety."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import KeyManagementError, KeyManager


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)


@pytest.fixture
def all_logs() -> Iterator[_Everything]:
    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_no_secret_or_token_anywhere(
    bao_server: DevServer,
    vault_path: str,
    all_logs: _Everything,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_text = "s3cr3t-" + uuid.uuid4().hex
    key = os.urandom(32)
    limited_rules = f'path "secret/data/{vault_path}/a" {{ capabilities = ["read"] }}'
    bao_server.bao("policy", "write", "hygiene", "-", input=limited_rules.encode())
    limited = bao_server.bao("token", "create", "-policy=hygiene", "-field=token").stdout.decode()
    env_secret = "env-" + uuid.uuid4().hex
    monkeypatch.setenv("SECUREML_ENV_ONLY", env_secret)
    tokens = [bao_server.root_token, limited, "bogus-" + uuid.uuid4().hex]
    forbidden = [secret_text, key.hex(), env_secret, *tokens]

    root = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
    root.set_secret("a", secret_text)
    root.set_secret("k", key)
    assert root.get_secret("a") == secret_text
    assert root.get_encryption_key("k") == key
    assert root.get_secret("env_only") == env_secret
    errors: list[BaseException] = []
    managers = [
        root,
        KeyManager(vault_url=bao_server.address, vault_token=limited, vault_path=vault_path),
        KeyManager(vault_url=bao_server.address, vault_token=tokens[2], vault_path=vault_path),
        KeyManager(
            vault_url=f"http://127.0.0.1:{free_loopback_port()}",
            vault_token=tokens[2],
            use_env_fallback=False,
            timeout=1,
        ),
    ]
    for manager in managers:
        for call in (
            lambda m=manager: m.get_secret("k"),
            lambda m=manager: m.set_secret("a", "other"),
            lambda m=manager: m.get_encryption_key("a"),
        ):
            try:
                call()
            except KeyManagementError as exc:
                errors.append(exc)
    assert len(errors) >= 7
    texts = all_logs.texts + [str(e) for e in errors] + [repr(m) for m in managers]
    texts += [repr(e) for e in errors]
    assert any("secureml" in t for t in texts)
    for text in texts:
        for value in forbidden:
            assert value not in text


def test_threads_share_one_manager(vault_manager: KeyManager) -> None:
    for i in range(16):
        vault_manager.set_secret(f"t{i}", f"value-{i}")

    def work(i: int) -> int:
        ok = 0
        for _ in range(50):
            ok += vault_manager.get_secret(f"t{i}") == f"value-{i}"
        vault_manager.set_secret(f"w{i}", f"written-{i}")
        return ok

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(work, range(16))) == 16 * 50
    assert all(vault_manager.get_secret(f"w{i}") == f"written-{i}" for i in range(16))
