from __future__ import annotations

from secureml._devserver import DevServer
from secureml.key_management import KeyManager


def test_reads_what_bao_cli_wrote(
    bao_server: DevServer, vault_manager: KeyManager, vault_path: str
) -> None:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=abc")
    assert vault_manager.get_secret("x") == "abc"
