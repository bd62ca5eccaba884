"""Secrets and encryption keys for ML and data pipelines.

Reads secrets and keys from HashiCorp Vault or OpenBao, falls back to ``SECUREML_*``
environment variables and, in development only, to deterministic defaults; derives
purpose-separated keys with HKDF-SHA256. Importing this module touches no network,
builds no Vault client and emits no warning.

Example:
    >>> from secureml.key_management import KeyManager
    >>> km = KeyManager(vault_url="https://vault.example.com:8200", vault_token="...")
    >>> km.get_secret("api_key")                       # doctest: +SKIP
"""

from __future__ import annotations

from ._default import configure_default_key_manager, get_default_key_manager, get_encryption_key
from ._manager import KeyManager
from .errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyFormatError,
    KeyManagementError,
    PermissionDeniedError,
    SecretNotFoundError,
    SecurityWarning,
    UnsupportedOperationError,
    VaultError,
    VaultSealedError,
    VaultUnavailableError,
)

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "InvalidCiphertextError",
    "KeyFormatError",
    "KeyManagementError",
    "KeyManager",
    "PermissionDeniedError",
    "SecretNotFoundError",
    "SecurityWarning",
    "UnsupportedOperationError",
    "VaultError",
    "VaultSealedError",
    "VaultUnavailableError",
    "configure_default_key_manager",
    "get_default_key_manager",
    "get_encryption_key",
]

# Exported objects show the public module path (httpx does the same).
for _name in (
    "KeyManager",
    "configure_default_key_manager",
    "get_default_key_manager",
    "get_encryption_key",
):
    globals()[_name].__module__ = __name__
del _name
