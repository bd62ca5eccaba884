"""The spec's examples live in examples/ verbatim and run against the real server."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager, _default

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import run_spec as spec_examples  # noqa: E402

SHARED_SPEC = ROOT.parent / "shared" / "SPEC-key-management.rst"


def test_docs_copy_is_the_spec() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip(
            "maintainers only: compares docs/key_management.rst with the upstream spec, "
            f"which is not at {SHARED_SPEC} in this checkout (nothing is wrong)"
        )
    assert spec_examples.SPEC_DOC.read_text() == SHARED_SPEC.read_text()


def test_every_spec_block_is_an_example_verbatim() -> None:
    blocks = spec_examples.spec_code_blocks(spec_examples.SPEC_DOC.read_text())
    examples = [spec_examples.verbatim_part(name) for name in spec_examples.SPEC_EXAMPLES]
    assert blocks == examples


@pytest.fixture
def fresh_default() -> Iterator[None]:
    _default._slot.manager = None
    yield
    _default._slot.manager = None


@pytest.fixture
def server_secrets(bao_server: DevServer) -> dict[str, Any]:
    manager = KeyManager(vault_url=bao_server.address, vault_token=bao_server.root_token)
    spec_examples.seed_secrets(manager)
    return {name: manager.get_secret(name) for name in spec_examples.SEEDED_SECRETS}


@pytest.mark.integration
@pytest.mark.usefixtures("fresh_default")
def test_spec_examples_run_against_the_server(
    bao_server: DevServer, server_secrets: dict[str, Any]
) -> None:
    def run(name: str) -> dict[str, Any]:
        return spec_examples.run_example(
            name, vault_url=bao_server.address, vault_token=bao_server.root_token
        )

    basic = run("spec_basic_usage.py")
    assert basic["api_key"] == server_secrets["api_key"]
    assert basic["encryption_key"] == server_secrets["master_key"]

    configured = run("spec_global_configuration.py")
    assert _default._slot.manager is not None
    assert _default._slot.manager.__repr__().startswith(
        f"KeyManager(vault_url={bao_server.address!r}"
    )
    assert configured  # ran to the end

    utility = run("spec_utility_functions.py")
    assert base64.b64decode(utility["key"]) == server_secrets["data_encryption_key"]

    derivation = run("spec_key_derivation.py")
    assert derivation["master_key"] == server_secrets["master_key"]
    assert len(derivation["encryption_key"]) == len(derivation["hmac_key"]) == 32
    assert derivation["encryption_key"] != derivation["hmac_key"]
    expected = KeyManager().derive_key(server_secrets["master_key"], "data_encryption")
    assert derivation["encryption_key"] == expected


@pytest.mark.integration
@pytest.mark.usefixtures("fresh_default")
def test_utility_example_alone_uses_environment_config(
    bao_server: DevServer, server_secrets: dict[str, Any]
) -> None:
    """Without configure_default_key_manager, the default manager reads SECUREML_VAULT_*."""
    utility = spec_examples.run_example(
        "spec_utility_functions.py",
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
    )
    assert base64.b64decode(utility["key"]) == server_secrets["data_encryption_key"]
