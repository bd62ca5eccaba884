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
#: Where dev defaults may be served. Anything else (``prod``, ``prd``, ``live``,
#: ``staging``, a typo) refuses them: an allow-list fails safe where a deny-list cannot.
DEVELOPMENT_VALUES = ("development", "dev", "test", "local")


def development_environment() -> str | None:
    """``None`` when ``SECUREML_ENV`` is unset (or empty) or names a development
    environment; otherwise its value, trimmed (dev defaults are then refused)."""
    value = os.environ.get(PRODUCTION_ENV_VAR, "").strip()
    if not value or value.lower() in DEVELOPMENT_VALUES:
        return None
    return value


def dev_default_key(name: str, key_bytes: int) -> bytes:
    """The development key for ``name``: the same bytes on every machine, every run."""
    return hkdf_sha256(_PUBLIC_SEED, f"key:{name}:{key_bytes}", key_bytes)


def dev_default_secret(name: str) -> str:
    """The development secret for ``name``: ``insecure-dev-`` and 64 hex digits, stable per name."""
    return "insecure-dev-" + hkdf_sha256(_PUBLIC_SEED, f"secret:{name}", 32).hex()
