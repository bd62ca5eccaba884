"""The README's "minimal policy" is enough, verbatim, for everything it claims."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager, PermissionDeniedError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_policy() -> str:
    """The policy in the "Production Vault" section (the rotation one is tested apart)."""
    text = README.read_text()
    production = text[text.index("\n## Production Vault\n") :]
    production = production[: production.index("\n## ", 1)]
    blocks = re.findall(r"```hcl\n(.*?)```", production, flags=re.DOTALL)
    assert len(blocks) == 1, "the Production Vault section should show exactly one policy"
    return str(blocks[0])


def test_the_minimal_policy_reads_writes_and_detects_kv(bao_server: DevServer) -> None:
    name = f"readme-{uuid.uuid4().hex[:8]}"
    bao_server.bao("policy", "write", name, "-", input=readme_policy().encode())
    token = bao_server.bao(
        "token", "create", f"-policy={name}", "-field=token", "-ttl=5m"
    ).stdout.decode()
    manager = KeyManager(vault_url=bao_server.address, vault_token=token.strip())
    secret = f"policy-probe-{uuid.uuid4().hex[:8]}"
    assert manager.set_secret(secret, b"k" * 32) is True
    assert manager.set_secret(secret, b"K" * 32) is True  # update, not only create
    assert manager.get_encryption_key(secret) == b"K" * 32
    assert manager.status().kv_version == 2
    other = KeyManager(
        vault_url=bao_server.address, vault_token=token.strip(), vault_path="elsewhere"
    )
    with pytest.raises(PermissionDeniedError):
        other.get_secret("x")
