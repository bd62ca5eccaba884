"""Secret names: what is allowed, and how a name maps to an environment variable."""

from __future__ import annotations

import re

ENV_PREFIX = "SECUREML_"

_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]+")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def validate_name(name: object, *, what: str = "secret name") -> str:
    """Return ``name`` if it is a valid secret name, else raise.

    A name is one or more segments of letters, digits, ``_``, ``-`` and ``.``, joined by
    single ``/``; ``..`` is refused anywhere so a name can never climb out of the
    configured Vault path.

    Raises:
        TypeError: ``name`` is not a ``str``.
        ValueError: ``name`` breaks the rules; the message quotes it and says which rule.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if ".." in name:
        raise ValueError(f"{what} {name!r} must not contain '..'")
    for segment in name.split("/"):
        if not segment:
            raise ValueError(
                f"{what} {name!r} has an empty segment: no leading, trailing or double '/'"
            )
        if segment == "." or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"{what} {name!r} may only use letters, digits, '_', '-', '.' "
                "and '/' between segments"
            )
    return name


def validate_path(path: object, *, what: str) -> str:
    """Like :func:`validate_name`, but an empty string (the mount's root) is allowed."""
    if path == "":
        return ""
    return validate_name(path, what=what)


def env_var_name(name: str) -> str:
    """The environment variable that holds secret ``name``.

    ``SECUREML_`` followed by the name upper-cased, every character other than an ASCII
    letter or digit turned into ``_``: ``db/password`` -> ``SECUREML_DB_PASSWORD``.
    Distinct names can share a variable (``a-b`` and ``a_b``); that is the price of
    portable variable names.
    """
    return ENV_PREFIX + _NOT_ALNUM.sub("_", name).upper()
