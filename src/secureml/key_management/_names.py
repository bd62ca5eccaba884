"""How a secret name maps to an environment variable (what a name may be is
:func:`~._validate.validate_name`'s)."""

from __future__ import annotations

import functools
import re

ENV_PREFIX = "SECUREML_"
#: Variables that configure secureml itself, never secrets it serves by name.
SETTINGS_VARIABLES = ("SECUREML_ENV", "SECUREML_VAULT", "SECUREML_FINGERPRINT_KEY")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


@functools.lru_cache(maxsize=1024)  # asked twice per env lookup (reserved check, read)
def env_var_name(name: str) -> str:
    """The environment variable that holds secret ``name``.

    ``SECUREML_`` followed by the name upper-cased, every character other than an ASCII
    letter or digit turned into ``_``: ``db/password`` -> ``SECUREML_DB_PASSWORD``.
    Distinct names can share a variable (``a-b`` and ``a_b``); that is the price of
    portable variable names.
    """
    return ENV_PREFIX + _NOT_ALNUM.sub("_", name).upper()


def is_reserved_name(name: str) -> bool:
    """Whether ``name``'s variable is one of secureml's settings (or could become one:
    every ``SECUREML_VAULT_*``)."""
    variable = env_var_name(name)
    return variable in SETTINGS_VARIABLES or variable.startswith("SECUREML_VAULT_")
