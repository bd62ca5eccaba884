"""The spec's "Key Derivation" example, verbatim below the marker.

The spec's snippet continues the basic usage example; here ``key_manager`` is built from
the environment (SECUREML_VAULT_URL / SECUREML_VAULT_TOKEN) instead.
"""

from secureml.key_management import KeyManager

key_manager = KeyManager()

# --- verbatim from docs/key_management.rst ---
# Get the master key
master_key = key_manager.get_encryption_key(key_name="master_key")

# Derive purpose-specific keys
encryption_key = key_manager.derive_key(master_key, purpose="data_encryption")
hmac_key = key_manager.derive_key(master_key, purpose="data_integrity")
