"""Where secrets live: one small Protocol and the backends that implement it.

:class:`SecretBackend` is the seam; :class:`VaultBackend` (Vault / OpenBao KV) and
:class:`EnvBackend` (``SECUREML_*`` variables) are the built-in sources. Importing this
package never imports hvac.
"""

from __future__ import annotations

from .._config import VaultSettings
from .base import (
    KeyVersion,
    SecretBackend,
    SecretMetadata,
    SecretValue,
    VersionedSecretBackend,
)
from .env import EnvBackend
from .vault import VaultBackend

__all__ = [
    "EnvBackend",
    "KeyVersion",
    "SecretBackend",
    "SecretMetadata",
    "SecretValue",
    "VaultBackend",
    "VaultSettings",
    "VersionedSecretBackend",
]
