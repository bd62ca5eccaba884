"""TLS: verification is on by default, a CA bundle makes it pass, a failure never falls back."""

from __future__ import annotations

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager, VaultError, VaultUnavailableError


def test_ca_bundle_verifies_the_server(tls_server: DevServer) -> None:
    manager = KeyManager(
        vault_url=tls_server.address,
        vault_token=tls_server.root_token,
        vault_ca_cert=tls_server.ca_cert,
    )
    assert manager.get_secret("tls_probe") == "over-tls"


def test_ca_bundle_from_vault_cacert(
    tls_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_CACERT", str(tls_server.ca_cert))
    manager = KeyManager(vault_url=tls_server.address, vault_token=tls_server.root_token)
    assert manager.get_secret("tls_probe") == "over-tls"


def test_unverified_certificate_is_an_error_not_a_fallback(
    tls_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_TLS_PROBE", "from-env")
    manager = KeyManager(vault_url=tls_server.address, vault_token=tls_server.root_token)
    with pytest.raises(VaultError, match="TLS verification") as caught:
        manager.get_secret("tls_probe")
    assert not isinstance(caught.value, VaultUnavailableError)
    assert tls_server.root_token not in str(caught.value)
