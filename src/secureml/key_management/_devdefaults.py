"""Deterministic development defaults: never secret, only convenient.

Every value here is derivable by anyone who reads this file. They exist so a laptop with
no Vault and no environment variables can run a pipeline end to end; the manager warns
the first time each name is served and refuses them in production.
"""

from __future__ import annotations

import os

from ._derivation import hkdf_sha256

# Public on purpose: these defaults protect nothing.
_PUBLIC_SEED = b"secureml insecure development default v1"

PRODUCTION_ENV_VAR = "SECUREML_ENV"
_PRODUCTION_VALUES = frozenset({"production", "prod"})


def running_in_production() -> bool:
    """True when ``SECUREML_ENV`` says ``production`` or ``prod`` (any case, trimmed)."""
    return os.environ.get(PRODUCTION_ENV_VAR, "").strip().lower() in _PRODUCTION_VALUES


def dev_default_key(name: str, key_bytes: int) -> bytes:
    """The development key for ``name``: the same bytes on every machine, every run."""
    return hkdf_sha256(_PUBLIC_SEED, f"key:{name}:{key_bytes}", key_bytes)


def dev_default_secret(name: str) -> str:
    """The development secret for ``name``: ``insecure-dev-`` and 64 hex digits, stable per name."""
    return "insecure-dev-" + hkdf_sha256(_PUBLIC_SEED, f"secret:{name}", 32).hex()
