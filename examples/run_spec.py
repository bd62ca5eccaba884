"""Run the spec's examples against a real Vault/OpenBao server.

The spec's snippets name a placeholder server (``https://vault.example.com:8200``) and
token (``s.your-vault-token``). To run them verbatim, this swaps exactly those two
literals for a real server's address and token, and nothing else. Used by
``make demo`` (examples/demo.py) and by the test suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secureml.key_management import KeyManager, SecretNotFoundError

EXAMPLES_DIR = Path(__file__).resolve().parent
SPEC_DOC = EXAMPLES_DIR.parent / "docs" / "key_management.rst"
PLACEHOLDER_URL = "https://vault.example.com:8200"
PLACEHOLDER_TOKEN = "s.your-vault-token"
VERBATIM_MARKER = "# --- verbatim from docs/key_management.rst ---\n"

#: In the order they build on each other.
SPEC_EXAMPLES = (
    "spec_basic_usage.py",
    "spec_global_configuration.py",
    "spec_utility_functions.py",
    "spec_key_derivation.py",
)

#: What the examples read, and how each is seeded when absent.
SEEDED_SECRETS = ("api_key", "master_key", "data_encryption_key")


def spec_code_blocks(rst: str) -> list[str]:
    """Every ``.. code-block:: python`` body of an RST document, dedented."""
    bodies = re.findall(r"\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", rst)
    return [textwrap.dedent(body).rstrip() + "\n" for body in bodies]


def verbatim_part(example: str) -> str:
    """The part of an example file below its verbatim marker."""
    return (EXAMPLES_DIR / example).read_text().split(VERBATIM_MARKER, 1)[1]


def seed_secrets(manager: KeyManager) -> None:
    """Store what the examples read (random keys, a made-up API key) if it is missing."""
    for name in SEEDED_SECRETS:
        try:
            manager.get_secret(name)
        except SecretNotFoundError:
            value: str | bytes = (
                "demo-" + secrets.token_hex(8) if name == "api_key" else secrets.token_bytes(32)
            )
            manager.set_secret(name, value)


@contextlib.contextmanager
def _vault_env(vault_url: str, vault_token: str) -> Iterator[None]:
    """Point environment-configured managers at the server while an example runs."""
    saved = {k: os.environ.get(k) for k in ("SECUREML_VAULT_URL", "SECUREML_VAULT_TOKEN")}
    os.environ["SECUREML_VAULT_URL"] = vault_url
    os.environ["SECUREML_VAULT_TOKEN"] = vault_token
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_example(example: str, *, vault_url: str, vault_token: str) -> dict[str, Any]:
    """Run one example file with the placeholders swapped; return its globals."""
    path = EXAMPLES_DIR / example
    source = path.read_text()
    source = source.replace(PLACEHOLDER_URL, vault_url).replace(PLACEHOLDER_TOKEN, vault_token)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    with _vault_env(vault_url, vault_token):
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - our own examples
    return namespace
