"""The process-wide default manager: built on first use, replaceable, thread-safe."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from ._boundary import guarded
from ._encoding import Encoding
from ._manager import KeyManager
from ._process import reset_after_fork

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Slot:
    """The default manager and the lock that guards it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.manager: KeyManager | None = None
        reset_after_fork(self)

    def after_fork(self) -> None:
        # A parent's thread may have held the lock at fork time: it never lets go here.
        self.lock = threading.Lock()


_slot = _Slot()


def _signature_of(
    model: Callable[_P, Any],
) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Give the decorated function ``model``'s parameters, for type checkers and help()."""

    def decorate(func: Callable[..., _R]) -> Callable[_P, _R]:
        func.__signature__ = inspect.signature(model)  # type: ignore[attr-defined]
        return func

    return decorate


@guarded
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
    manager = KeyManager(*args, **kwargs)
    with _slot.lock:
        _slot.manager = manager
    return manager


def get_default_key_manager() -> KeyManager:
    """Return the default manager, building ``KeyManager()`` from the environment if none.

    Never called at import, so importing secureml touches no network and warns nothing.

    Raises:
        ConfigurationError: The environment's Vault settings are incomplete or unsafe.
    """
    with _slot.lock:
        if _slot.manager is None:
            _slot.manager = KeyManager()
        return _slot.manager


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
