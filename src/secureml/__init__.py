"""secureml: secrets and encryption keys for ML and data pipelines.

The API lives in :mod:`secureml.key_management`; its main names are re-exported here,
imported on first use so that ``import secureml`` (and the command line's ``--help``)
stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .key_management import KeyManager, configure_default_key_manager, get_encryption_key

__all__ = ["KeyManager", "configure_default_key_manager", "get_encryption_key"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import key_management

        return getattr(key_management, name)
    raise AttributeError(f"module 'secureml' has no attribute {name!r}")
