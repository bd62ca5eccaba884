"""The spec's "Global Configuration" example, verbatim below the marker."""

# --- verbatim from docs/key_management.rst ---
from secureml.key_management import configure_default_key_manager

# Configure the default key manager (do this once at startup)
configure_default_key_manager(
    vault_url="https://vault.example.com:8200",
    vault_token="s.your-vault-token",
    vault_path="secureml",
    use_env_fallback=True
)
