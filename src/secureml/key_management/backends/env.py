"""Read-only secrets from environment variables (``SECUREML_<NAME>``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .._names import env_var_name
from ..errors import UnsupportedOperationError
from .base import SecretValue


class EnvBackend:
    """Secrets from ``SECUREML_<NAME>`` environment variables.

    The environment is read at every call, so a variable set after the manager was built
    is seen. An empty variable counts as unset: container tooling often passes empty
    strings for variables it does not know.

    Args:
        environ: The mapping to read; the process environment when omitted.

    Example:
        >>> EnvBackend({"SECUREML_API_KEY": "abc"}).get("api_key")
        'abc'
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    @property
    def source(self) -> str:
        return "env"

    def locate(self, name: str) -> str:
        return f"env:{env_var_name(name)}"

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        if version is not None:
            raise UnsupportedOperationError(
                f"environment variable {env_var_name(name)} has no versions; "
                "store versioned secrets in Vault (KV v2)"
            )
        return self._environ.get(env_var_name(name)) or None

    def put(self, name: str, value: SecretValue) -> None:
        raise UnsupportedOperationError(
            f"cannot write {name!r}: environment variables are read-only to secureml; "
            "configure Vault to store secrets"
        )

    def delete(self, name: str) -> None:
        raise UnsupportedOperationError(
            f"cannot delete {name!r}: environment variables are read-only to secureml"
        )

    def __repr__(self) -> str:
        return "EnvBackend()"
