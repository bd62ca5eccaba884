"""TLS against a real OpenBao server whose certificates come from a CA made by the test.

``test_tls.py`` covers bao's own ``-dev-tls``. Here the fixture builds a PKI
(tests/support/pki.py) and starts one dev server with two extra listeners:

- ``tls``: HTTPS with a server certificate signed by the test CA;
- ``mtls``: the same, and it also requires a client certificate signed by that CA.

What must hold:

- the CA can be given as ``vault_ca_cert=``, ``VAULT_CACERT`` (a file) or
  ``VAULT_CAPATH`` (a directory of OpenSSL-hashed CA files);
- a certificate that does not verify (no CA, the wrong CA, no client certificate on the
  mTLS listener) is a :class:`VaultError` but never a :class:`VaultUnavailableError`,
  so an environment fallback cannot hide it; its message names the setting to fix and
  never the token;
- ``verify=False`` warns once, at construction, and is refused next to a CA bundle;
- plain ``http://`` to a host other than loopback warns once per address, never for
  loopback, and building a manager never connects.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import (
    ConfigurationError,
    KeyManager,
    SecurityWarning,
    VaultError,
    VaultUnavailableError,
)
from secureml.key_management._auth import Login
from tests.support.pki import Pki, make_pki

SECRET_NAME = "tls_pki_probe"
SECRET_VALUE = "over-test-ca"


@dataclass(frozen=True)
class PkiVault:
    """The running server, its PKI, and the addresses of its two TLS listeners."""

    server: DevServer
    pki: Pki
    tls_url: str
    mtls_url: str

    @property
    def token(self) -> str:
        return self.server.root_token


def _listener(port: int, pki: Pki, *, require_client_cert: bool) -> str:
    client_auth = (
        f'  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = "{pki.ca_cert}"\n'
        if require_client_cert
        else ""
    )
    return (
        'listener "tcp" {\n'
        f'  address = "127.0.0.1:{port}"\n'
        f'  tls_cert_file = "{pki.server.cert}"\n'
        f'  tls_key_file = "{pki.server.key}"\n'
        f"{client_auth}"
        "}\n"
    )


@pytest.fixture(scope="module")
def pki_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PkiVault]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tls_port = free_loopback_port()
    mtls_port = free_loopback_port()
    while mtls_port == tls_port:
        mtls_port = free_loopback_port()
    config = _listener(tls_port, pki, require_client_cert=False) + _listener(
        mtls_port, pki, require_client_cert=True
    )
    server = DevServer(extra_config=config)
    try:
        server.start()
        server.bao("kv", "put", "-mount=secret", f"secureml/{SECRET_NAME}", f"value={SECRET_VALUE}")
        yield PkiVault(
            server=server,
            pki=pki,
            tls_url=f"https://127.0.0.1:{tls_port}",
            mtls_url=f"https://127.0.0.1:{mtls_port}",
        )
    finally:
        server.stop()


def _assert_no_token(exc: BaseException, token: str) -> None:
    assert token not in str(exc)
    assert token not in repr(exc)
    assert all(token not in str(arg) for arg in exc.args)


# -- trusting the CA -------------------------------------------------------------------


def test_trusted_ca_reads_over_https(pki_vault: PkiVault) -> None:
    manager = KeyManager(
        vault_url=pki_vault.tls_url,
        vault_token=pki_vault.token,
        vault_ca_cert=str(pki_vault.pki.ca_cert),
    )
    assert manager.get_secret(SECRET_NAME) == SECRET_VALUE


def test_ca_file_from_vault_cacert(pki_vault: PkiVault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_CACERT", str(pki_vault.pki.ca_cert))
    manager = KeyManager(vault_url=pki_vault.tls_url, vault_token=pki_vault.token)
    assert manager.get_secret(SECRET_NAME) == SECRET_VALUE


def test_ca_directory_from_vault_capath(
    pki_vault: PkiVault, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is needed to compute the CA's subject hash")
    subject_hash = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(pki_vault.pki.ca_cert)],
        capture_output=True,
        check=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    capath = tmp_path / "capath"
    capath.mkdir()
    shutil.copyfile(pki_vault.pki.ca_cert, capath / f"{subject_hash}.0")
    monkeypatch.setenv("VAULT_CAPATH", str(capath))
    manager = KeyManager(vault_url=pki_vault.tls_url, vault_token=pki_vault.token)
    assert manager.get_secret(SECRET_NAME) == SECRET_VALUE


# -- certificates that do not verify ---------------------------------------------------


@pytest.mark.parametrize("ca", ["none", "other"])
def test_untrusted_certificate_is_an_error_not_a_fallback(
    pki_vault: PkiVault, monkeypatch: pytest.MonkeyPatch, ca: str
) -> None:
    # The env fallback holds the secret: only an "unavailable" error would reach it.
    monkeypatch.setenv(f"SECUREML_{SECRET_NAME.upper()}", "from-env")
    manager = KeyManager(
        vault_url=pki_vault.tls_url,
        vault_token=pki_vault.token,
        vault_ca_cert=None if ca == "none" else str(pki_vault.pki.other_ca_cert),
        timeout=2,
        retries=0,
    )
    with pytest.raises(VaultError, match="vault_ca_cert") as caught:
        manager.get_secret(SECRET_NAME)
    assert not isinstance(caught.value, VaultUnavailableError)
    _assert_no_token(caught.value, pki_vault.token)


class _KnownTtlTokenAuth:
    """A token whose TTL is known up front, so logging in sends no request.

    With :class:`TokenAuth` the first request is always ``auth/token/lookup-self`` (a
    read); this auth method lets the very first request be the write itself.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    @property
    def method(self) -> str:
        return "known-ttl-token"

    @property
    def can_login_again(self) -> bool:
        return False

    def login(self, client: object) -> Login:
        return Login(token=self._token, ttl=3600.0, renewable=False)


@pytest.mark.parametrize("listener", ["untrusted-ca", "no-client-cert"])
def test_write_that_fails_tls_is_a_tls_error(pki_vault: PkiVault, listener: str) -> None:
    name = f"tls_write_{uuid.uuid4().hex[:8]}"
    if listener == "untrusted-ca":
        url, ca, hint = pki_vault.tls_url, pki_vault.pki.other_ca_cert, "vault_ca_cert"
    else:
        url, ca, hint = pki_vault.mtls_url, pki_vault.pki.ca_cert, "vault_client_cert"
    manager = KeyManager(
        vault_url=url,
        vault_auth=_KnownTtlTokenAuth(pki_vault.token),
        vault_ca_cert=str(ca),
        vault_kv_version=2,
        use_env_fallback=False,
        timeout=2,
        retries=0,
    )
    with pytest.raises(VaultError) as caught:
        manager.set_secret(name, "never-written")
    # Nothing reached the server: the write did not happen, and the error must say why.
    with pytest.raises(subprocess.CalledProcessError):
        pki_vault.server.bao("kv", "get", "-mount=secret", f"secureml/{name}")
    _assert_no_token(caught.value, pki_vault.token)
    assert not isinstance(caught.value, VaultUnavailableError), str(caught.value)
    assert hint in str(caught.value)


# -- verify=False ----------------------------------------------------------------------


def test_verify_false_warns_at_construction_then_reads(pki_vault: PkiVault) -> None:
    with pytest.warns(SecurityWarning, match="verify=False"):
        manager = KeyManager(vault_url=pki_vault.tls_url, vault_token=pki_vault.token, verify=False)
    # Outside the `warns` block: any further warning (e.g. urllib3's
    # InsecureRequestWarning on each request) fails the test (filterwarnings=error).
    assert manager.get_secret(SECRET_NAME) == SECRET_VALUE


def test_verify_false_with_a_ca_bundle_is_refused(pki_vault: PkiVault) -> None:
    with pytest.raises(ConfigurationError, match="vault_ca_cert"):
        KeyManager(
            vault_url=pki_vault.tls_url,
            vault_token=pki_vault.token,
            vault_ca_cert=str(pki_vault.pki.ca_cert),
            verify=False,
        )


# -- mutual TLS ------------------------------------------------------------------------


def test_mtls_with_client_certificate_reads(pki_vault: PkiVault) -> None:
    manager = KeyManager(
        vault_url=pki_vault.mtls_url,
        vault_token=pki_vault.token,
        vault_ca_cert=str(pki_vault.pki.ca_cert),
        vault_client_cert=str(pki_vault.pki.client.cert),
        vault_client_key=str(pki_vault.pki.client.key),
    )
    assert manager.get_secret(SECRET_NAME) == SECRET_VALUE


def test_mtls_without_client_certificate_is_an_error_not_a_fallback(
    pki_vault: PkiVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"SECUREML_{SECRET_NAME.upper()}", "from-env")
    manager = KeyManager(
        vault_url=pki_vault.mtls_url,
        vault_token=pki_vault.token,
        vault_ca_cert=str(pki_vault.pki.ca_cert),
        timeout=2,
        retries=0,
    )
    with pytest.raises(VaultError, match="vault_client_cert") as caught:
        manager.get_secret(SECRET_NAME)
    assert not isinstance(caught.value, VaultUnavailableError)
    _assert_no_token(caught.value, pki_vault.token)


# -- plain http ------------------------------------------------------------------------


def _security_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SecurityWarning)]


def test_plain_http_to_a_remote_host_warns_once_per_address() -> None:
    # A host of its own: the "once" memory is process-wide, other tests must not use it.
    url = f"http://vault-{uuid.uuid4().hex[:8]}.internal.example:8200"
    token = "s.plain-http-test-token"
    # The loopback-only guard (tests/conftest.py) would fail any connection or DNS query.
    with pytest.warns(SecurityWarning, match="plain http") as first:
        KeyManager(vault_url=url, vault_token=token)
    assert len(_security_warnings(first.list)) == 1
    assert token not in _security_warnings(first.list)[0]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        KeyManager(vault_url=url, vault_token=token)
    assert _security_warnings(again) == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200"]
)
def test_plain_http_to_loopback_does_not_warn(url: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KeyManager(vault_url=url, vault_token="s.loopback-test-token")
    assert _security_warnings(caught) == []
