"""The spec's "Utility Functions" example, verbatim below the marker.

Uses the default key manager: the one configured by spec_global_configuration.py, or else
one built from SECUREML_VAULT_URL / SECUREML_VAULT_TOKEN (or VAULT_ADDR / VAULT_TOKEN).
"""

# --- verbatim from docs/key_management.rst ---
from secureml.key_management import get_encryption_key

# Get an encryption key using the default key manager
key = get_encryption_key(
    key_name="data_encryption_key",
    encoding="base64"
)

# Use the key for encryption operations
# ...
