"""secureml: secrets and encryption keys for ML and data pipelines.

The API lives in :mod:`secureml.key_management`; its main names are re-exported here.
"""

from __future__ import annotations

from .key_management import KeyManager, configure_default_key_manager, get_encryption_key

__all__ = ["KeyManager", "configure_default_key_manager", "get_encryption_key"]
__version__ = "0.1.0"
