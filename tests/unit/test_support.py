"""The test-support package itself: the throwaway PKI and the loopback stub server."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification

from tests.support.http_stub import Seen, StubServer, json_response
from tests.support.pki import CLIENT_COMMON_NAME, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _opener(cafile: Path | None = None) -> urllib.request.OpenerDirector:
    """No proxies (the environment may set some) and, for HTTPS, trust only ``cafile``."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        context = ssl.create_default_context(cafile=cafile)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _echo(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    return json_response(201, {"method": seen.method, "path": seen.path}, {"X-Stub": "yes"})


def test_files_and_key_modes(pki: Pki) -> None:
    names = {path.name for path in pki.ca_cert.parent.iterdir()}
    assert names == {
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
        "other-ca.pem",
    }
    for key in (pki.server.key, pki.client.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_certificates_pass_a_strict_x509_verifier(pki: Pki) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    client = x509.load_pem_x509_certificate(pki.client.cert.read_bytes())
    store = verification.Store([ca])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = verification.PolicyBuilder().store(store).time(now)

    ip = ipaddress.ip_address("127.0.0.1")
    builder.build_server_verifier(x509.IPAddress(ip)).verify(server, [])
    builder.build_server_verifier(x509.DNSName("localhost")).verify(server, [])
    verified = builder.build_client_verifier().verify(client, [])
    assert verified.chain[-1] == ca
    common_names = client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [attr.value for attr in common_names] == [CLIENT_COMMON_NAME]

    other = x509.load_pem_x509_certificate(pki.other_ca_cert.read_bytes())
    stranger = verification.PolicyBuilder().store(verification.Store([other])).time(now)
    with pytest.raises(verification.VerificationError):
        stranger.build_server_verifier(x509.IPAddress(ip)).verify(server, [])


def test_https_stub_is_trusted_with_the_ca(pki: Pki) -> None:
    with StubServer(_echo, tls=pki.server) as server:
        assert server.origin == f"https://127.0.0.1:{server.port}"
        with _opener(pki.ca_cert).open(server.url("/v1/sys/health?x=1"), timeout=5) as resp:
            assert resp.status == 201
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["X-Stub"] == "yes"
            assert resp.read() == b'{"method": "GET", "path": "/v1/sys/health?x=1"}'
    assert [seen.path for seen in server.requests] == ["/v1/sys/health?x=1"]


def test_https_stub_is_rejected_with_another_ca(pki: Pki) -> None:
    with StubServer(_echo, tls=pki.server) as server:
        with pytest.raises(urllib.error.URLError) as caught:
            _opener(pki.other_ca_cert).open(server.origin, timeout=5)
        assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)
        # The server survives a failed handshake and keeps serving.
        with _opener(pki.ca_cert).open(server.origin, timeout=5) as resp:
            assert resp.status == 201
    assert len(server.requests) == 1


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "LIST"])
def test_requests_and_headers_are_recorded(method: str) -> None:
    body = b'{"value": 1}' if method in {"POST", "PUT", "PATCH"} else None
    request = urllib.request.Request(
        "http://127.0.0.1/placeholder", data=body, method=method, headers={"X-Vault-Token": "t0k"}
    )
    with StubServer(_echo) as server:
        assert server.origin == f"http://127.0.0.1:{server.port}"
        request.full_url = server.url("secret/data/app")
        with _opener().open(request, timeout=5) as resp:
            assert resp.status == 201
            assert resp.headers["Content-Length"] == str(len(resp.read()))
    [seen] = server.requests
    assert seen.method == method
    assert seen.path == "/secret/data/app"
    assert seen.body == (body or b"")
    assert seen.header("x-vault-token") == "t0k"
    assert seen.header("Host") == f"127.0.0.1:{server.port}"
    assert "X-Vault-Token" in seen.headers  # names are kept as they came over the wire


def test_head_and_a_failing_handler() -> None:
    def handler(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if seen.method == "HEAD":
            return 200, {}, b"twelve bytes"
        raise RuntimeError("boom")

    with StubServer(handler) as server:
        head = urllib.request.Request(server.origin, method="HEAD")  # noqa: S310 - http only
        with _opener().open(head, timeout=5) as resp:
            assert resp.headers["Content-Length"] == "12"
            assert resp.read() == b""
        with pytest.raises(urllib.error.HTTPError) as caught:
            _opener().open(server.url("/x"), timeout=5)
        assert caught.value.code == 500
        caught.value.close()
    assert [seen.method for seen in server.requests] == ["HEAD", "GET"]
    assert [str(error) for error in server.errors] == ["boom"]
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):  # the port is remembered, and closed
        _opener().open(server.origin, timeout=5)


def test_client_certificate_loads(pki: Pki) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(pki.client.cert, pki.client.key)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(pki.server.cert, pki.server.key)


def test_make_pki_tightens_an_existing_key_file(tmp_path: Path) -> None:
    (tmp_path / "server-key.pem").write_text("stale")
    (tmp_path / "server-key.pem").chmod(0o644)
    pki = make_pki(tmp_path)
    assert stat.S_IMODE(pki.server.key.stat().st_mode) == 0o600
