"""The spec's "Basic Usage Example", verbatim below the marker.

Run against a real server by examples/spec_examples.py (which swaps the placeholder URL and
token for a local OpenBao's); needs ``api_key`` and ``master_key`` in Vault or the
environment.
"""

# --- verbatim from docs/key_management.rst ---
from secureml.key_management import KeyManager

# Initialize a key manager
key_manager = KeyManager(
    vault_url="https://vault.example.com:8200",
    vault_token="s.your-vault-token",
    vault_path="secureml",
    use_env_fallback=True,
    use_default_fallback=False
)

# Retrieve a secret
api_key = key_manager.get_secret("api_key")

# Get an encryption key
encryption_key = key_manager.get_encryption_key(
    key_name="master_key", 
    key_bytes=32, 
    encoding="bytes"
)
