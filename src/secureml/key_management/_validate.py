"""Every argument check, once: wrong types are ``TypeError``, bad values ``ValueError``.

Entry points call these before any I/O, so a malformed call fails where it was made and
says what is wrong with which argument (never quoting a secret value).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, SupportsIndex

from ._encoding import ENCODINGS, MAX_KEY_BYTES, Encoding
from ._memo import NameMemo
from ._names import is_reserved_name

__all__ = [
    "DEFAULT_CHOSEN_SEGMENT_BYTES",
    "MAX_CHOSEN_SEGMENT_BYTES",
    "MAX_NAME_BYTES",
    "MIN_CHOSEN_SEGMENT_BYTES",
    "VALUE_FIELD",
    "check_aad",
    "check_age",
    "check_bytes",
    "check_data",
    "check_encoding",
    "check_flag",
    "check_jitter",
    "check_labels",
    "check_length",
    "check_now",
    "check_progress",
    "check_seconds",
    "check_secret_value",
    "check_segment_size",
    "check_sequence",
    "check_size",
    "check_transit_ciphertext",
    "check_version",
    "validate_name",
    "validate_path",
    "validate_secret_name",
]

#: The KV field that holds a secret's value (so a mapping may not use it as a field).
VALUE_FIELD = "value"

#: The longest name, in UTF-8 bytes: what a ciphertext header can record.
MAX_NAME_BYTES = 512

# Vault's limits on KV v2 custom metadata; checked here so a bad label fails before I/O.
_MAX_LABELS = 64
_MAX_LABEL_KEY_BYTES = 128
_MAX_LABEL_VALUE_BYTES = 512

_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]+")

Progress = Callable[[int], object]


# -- names -----------------------------------------------------------------------------


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
    if len(name) > MAX_NAME_BYTES or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        # Checked first, and never quoted whole: a huge name must cost nothing.
        raise ValueError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
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


#: Secret names that passed :func:`validate_secret_name` (a hot read checks its name
#: on every call).
_valid_secret_names: NameMemo[bool] = NameMemo()


def validate_secret_name(name: object, *, what: str = "secret name") -> str:
    """:func:`validate_name`, and not a name whose environment variable is one of
    secureml's own settings (``SECUREML_VAULT_*``, ``SECUREML_ENV``): a secret lookup must
    never answer with the Vault token or the AppRole secret id."""
    if _valid_secret_names.get(name):
        return name  # type: ignore[return-value] # a str: only a str is remembered
    checked = validate_name(name, what=what)
    if is_reserved_name(checked):
        raise ValueError(
            f"{what} {checked!r} is reserved: its environment variable would be one of "
            "secureml's settings (SECUREML_VAULT_*, SECUREML_ENV, SECUREML_FINGERPRINT_KEY); "
            "pick another name (data already under it stays readable by version=, "
            "get_key_ring and decrypt, to move)"
        )
    _valid_secret_names.put(checked, True)
    return checked


def validate_path(path: object, *, what: str) -> str:
    """Like :func:`validate_name`, but an empty string (the mount's root) is allowed."""
    if path == "":
        return ""
    return validate_name(path, what=what)


# -- scalars ---------------------------------------------------------------------------


def check_flag(value: object, what: str) -> bool:
    """``True`` or ``False``, nothing that merely looks like one."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def check_seconds(value: object, what: str) -> float:
    """A number of seconds, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{what} must be 0 or more seconds; got {value}")
    return float(value)


def check_jitter(value: object, what: str = "login_jitter") -> float:
    """A finite number of seconds, 0 or more (``time.sleep`` refuses infinity)."""
    seconds = check_seconds(value, what)
    if seconds == float("inf"):
        raise ValueError(f"{what} must be a finite number of seconds")
    return seconds


def check_size(value: object, what: str) -> int:
    """A count of 1 or more."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1; got {value}")
    return value


#: The segment sizes a writer may choose (``segment_size=``): below 64 KiB the tags and
#: per-segment work dominate; above 4 MiB a reader would refuse to buffer one.
MIN_CHOSEN_SEGMENT_BYTES = 64 << 10
MAX_CHOSEN_SEGMENT_BYTES = 4 << 20
DEFAULT_CHOSEN_SEGMENT_BYTES = 1 << 20


def check_segment_size(value: object) -> int:
    """A writer's ``segment_size=``: ``None`` (1 MiB) or 64 KiB to 4 MiB, in bytes."""
    if value is None:
        return DEFAULT_CHOSEN_SEGMENT_BYTES
    if isinstance(value, bool):
        raise TypeError("segment_size must be an int (bytes) or None, not bool")
    if not isinstance(value, SupportsIndex):
        raise TypeError(f"segment_size must be an int (bytes) or None, not {type(value).__name__}")
    value = operator.index(value)  # an exact int: numpy's ints too, no lying subclass
    if not MIN_CHOSEN_SEGMENT_BYTES <= value <= MAX_CHOSEN_SEGMENT_BYTES:
        raise ValueError(
            f"segment_size must be 64 KiB to 4 MiB ({MIN_CHOSEN_SEGMENT_BYTES} to "
            f"{MAX_CHOSEN_SEGMENT_BYTES} bytes); got {value}"
        )
    return value


def check_length(value: object, *, what: str, low: int, high: int = MAX_KEY_BYTES) -> int:
    """A byte length: an ``int`` (not ``bool``) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}; got {value}")
    return value


def check_encoding(encoding: object) -> Encoding:
    """One of ``bytes``, ``hex``, ``base64``, ``base64url``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    return encoding  # type: ignore[return-value]


def check_version(version: object) -> int:
    """A version number: an ``int`` of 1 or more."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"version must be an int, not {type(version).__name__}")
    if version < 1:
        raise ValueError(f"version must be 1 or more; got {version}")
    return version


def check_age(max_age: object) -> timedelta:
    """A positive ``timedelta``, or a positive number of seconds."""
    if isinstance(max_age, timedelta):
        age = max_age
    elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
        age = timedelta(seconds=max_age)
    else:
        raise TypeError(
            f"max_age must be a timedelta or a number of seconds, not {type(max_age).__name__}"
        )
    if age <= timedelta(0):
        raise ValueError(f"max_age must be positive; got {age}")
    return age


def check_now(now: object) -> datetime:
    """A timezone-aware ``datetime``; ``None`` is the real clock."""
    if now is None:
        return datetime.now(timezone.utc)
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now


# -- data ------------------------------------------------------------------------------


def check_bytes(value: object, what: str) -> bytes:
    """Bytes-like, copied to ``bytes``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def check_data(value: object, what: str) -> bytes | memoryview:
    """Bytes-like, not copied: ``bytes`` as is, anything else as a flat byte view."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        view = memoryview(value)
        if not view.contiguous:
            raise TypeError(f"{what} must be contiguous bytes")
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_aad(aad: object) -> bytes:
    """Associated data: bytes-like."""
    if type(aad) is bytes:
        return aad
    return check_bytes(aad, "aad")


def check_progress(progress: object) -> Progress | None:
    """``None``, or a callable taking the number of bytes done."""
    if progress is not None and not callable(progress):
        raise TypeError("progress must be a callable taking the number of bytes done")
    return progress


def check_sequence(items: object, what: str) -> Sequence[object]:
    """A list-like of items (not a str or bytes, which are sequences of characters)."""
    if isinstance(items, (str, bytes, bytearray, memoryview)) or not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list (or other sequence) of items, one per item")
    return items


def check_transit_ciphertext(value: object) -> str:
    """Transit ciphertext: text such as ``vault:v1:...``."""
    if not isinstance(value, str):
        raise TypeError(f"ciphertext must be a str (vault:v1:...), not {type(value).__name__}")
    return value


def check_secret_value(value: object, name: str) -> str | bytes | dict[str, Any]:
    """What ``set_secret`` can store: text, bytes, or a mapping of fields."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"secret {name!r}: a mapping value needs at least one field")
        if not all(isinstance(k, str) and k for k in value):
            raise ValueError(f"secret {name!r}: field names must be non-empty str")
        if VALUE_FIELD in value:
            raise ValueError(
                f"secret {name!r}: a mapping with a {VALUE_FIELD!r} field would read back as "
                "that field alone; pass the value itself, or rename the field"
            )
        return dict(value)
    raise TypeError(
        f"secret {name!r} must be str, bytes or a mapping of fields, not {type(value).__name__}"
    )


def check_labels(metadata: object) -> dict[str, str] | None:
    """Key labels within Vault's custom-metadata limits (or ``None``)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    if len(metadata) > _MAX_LABELS:
        raise ValueError(f"metadata may hold at most {_MAX_LABELS} labels; got {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values must be str (Vault stores labels as text)")
        if not key or len(key.encode()) > _MAX_LABEL_KEY_BYTES:
            raise ValueError(
                f"metadata key {key[:40]!r} must be 1 to {_MAX_LABEL_KEY_BYTES} bytes long"
            )
        if len(value.encode()) > _MAX_LABEL_VALUE_BYTES:
            raise ValueError(
                f"metadata value for {key!r} is longer than {_MAX_LABEL_VALUE_BYTES} bytes"
            )
    return dict(metadata)


def check_names(names: object, what: str) -> frozenset[str]:
    """A collection of key or secret names (each as :func:`validate_name` checks it);
    a lone string is refused, since it would be read as its characters."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"{what} must be a list of names, not {type(names).__name__}")
    return frozenset(validate_name(name, what=f"a name in {what}") for name in names)
