"""The process-wide default manager: built on first use, replaceable, thread-safe."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from ._encoding import Encoding
from ._manager import KeyManager

_P = ParamSpec("_P")
_R = TypeVar("_R")

_lock = threading.Lock()
_default: KeyManager | None = None


def _signature_of(
    model: Callable[_P, Any],
) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Give the decorated function ``model``'s parameters, for type checkers and help()."""

    def decorate(func: Callable[..., _R]) -> Callable[_P, _R]:
        func.__signature__ = inspect.signature(model)  # type: ignore[attr-defined]
        return func

    return decorate


@_signature_of(KeyManager)
def configure_default_key_manager(*args: Any, **kwargs: Any) -> KeyManager:
    """Build a :class:`KeyManager` and make it the process-wide default.

    Takes exactly :class:`KeyManager`'s arguments. Call it once at start-up; later calls
    replace the default (threads already holding the old manager keep using it).

    Returns:
        The new default manager.

    Raises:
        ConfigurationError: As :class:`KeyManager` does; the old default then stays.
    """
    global _default  # noqa: PLW0603 - the module-level default is the point
    manager = KeyManager(*args, **kwargs)
    with _lock:
        _default = manager
    return manager


def get_default_key_manager() -> KeyManager:
    """Return the default manager, building ``KeyManager()`` from the environment if none.

    Never called at import, so importing secureml touches no network and warns nothing.

    Raises:
        ConfigurationError: The environment's Vault settings are incomplete or unsafe.
    """
    global _default  # noqa: PLW0603
    with _lock:
        if _default is None:
            _default = KeyManager()
        return _default


@overload
def get_encryption_key(
    key_name: str = ..., key_bytes: int = ..., encoding: Literal["bytes"] = ...
) -> bytes: ...
@overload
def get_encryption_key(
    key_name: str = ..., key_bytes: int = ..., *, encoding: Literal["hex", "base64", "base64url"]
) -> str: ...
@overload
def get_encryption_key(
    key_name: str, key_bytes: int, encoding: Literal["hex", "base64", "base64url"]
) -> str: ...


@overload
def get_encryption_key(
    key_name: str = ..., key_bytes: int = ..., encoding: Encoding = ...
) -> bytes | str: ...


def get_encryption_key(
    key_name: str = "master_key", key_bytes: int = 32, encoding: Encoding = "bytes"
) -> bytes | str:
    """:meth:`KeyManager.get_encryption_key` on the default manager.

    Args:
        key_name: The key's secret name.
        key_bytes: The key length in bytes.
        encoding: ``bytes``, ``hex``, ``base64`` or ``base64url``.

    Returns:
        The key, as ``bytes`` or encoded ``str``.

    Raises:
        SecretNotFoundError, KeyFormatError, VaultError: As the method does.
    """
    return get_default_key_manager().get_encryption_key(key_name, key_bytes, encoding)
