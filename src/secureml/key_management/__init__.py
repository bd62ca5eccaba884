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

from . import errors
from ._amanager import AsyncKeyManager, AsyncTransitKeys
from ._auth import (
    AppRoleAuth,
    JWTAuth,
    KubernetesAuth,
    TokenAuth,
    UserpassAuth,
    VaultAuth,
)
from ._credentials import AuthSpec
from ._default import configure_default_key_manager, get_default_key_manager, get_encryption_key
from ._encoding import Encoding, encode_key
from ._explain import CacheReport, Explanation, SourceReport
from ._files import atomic_output
from ._manager import KeyManager
from ._spec import KeyManagerSpec
from ._status import AccessEvent, KeyManagerStats, KeyManagerStatus
from ._transit import TransitKeyInfo, TransitKeys
from .backends.base import KeyVersion
from .errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyFormatError,
    KeyManagementError,
    KeyVersionUnavailableError,
    PermissionDeniedError,
    SecretNotFoundError,
    SecurityWarning,
    UnsupportedOperationError,
    VaultError,
    VaultSealedError,
    VaultUnavailableError,
    VersionConflictError,
    WriteOutcomeUnknownError,
)

__all__ = [
    "AccessEvent",
    "AppRoleAuth",
    "AsyncKeyManager",
    "AsyncTransitKeys",
    "AuthSpec",
    "AuthenticationError",
    "CacheReport",
    "ConfigurationError",
    "Encoding",
    "Explanation",
    "InvalidCiphertextError",
    "JWTAuth",
    "KeyFormatError",
    "KeyManagementError",
    "KeyManager",
    "KeyManagerSpec",
    "KeyManagerStats",
    "KeyManagerStatus",
    "KeyVersion",
    "KeyVersionUnavailableError",
    "KubernetesAuth",
    "PermissionDeniedError",
    "SecretNotFoundError",
    "SecurityWarning",
    "SourceReport",
    "TokenAuth",
    "TransitKeyInfo",
    "TransitKeys",
    "UnsupportedOperationError",
    "UserpassAuth",
    "VaultAuth",
    "VaultError",
    "VaultSealedError",
    "VaultUnavailableError",
    "VersionConflictError",
    "WriteOutcomeUnknownError",
    "atomic_output",
    "configure_default_key_manager",
    "encode_key",
    "get_default_key_manager",
    "get_encryption_key",
]

# Exported classes and functions show the public module path (httpx does the same);
# the errors keep theirs (secureml.key_management.errors), which is public too.
for _name in __all__:
    _obj = globals()[_name]
    _home = getattr(_obj, "__module__", "")
    if _home.startswith(f"{__name__}.") and _home != errors.__name__:
        _obj.__module__ = __name__
del _name, _obj, _home
