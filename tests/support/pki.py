"""A throwaway PKI for TLS tests: a CA, a server and a client certificate, and a stranger CA.

Everything is EC P-256 (fast to generate) and standard X.509 v3, so the same files work
for Python's ``ssl`` (OpenSSL 3, strict chain checks) and for Go TLS servers such as OpenBao.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CLIENT_COMMON_NAME", "Pem", "Pki", "make_pki"]

CLIENT_COMMON_NAME = "secureml-test-client"
"""The common name of the client certificate made by :func:`make_pki`."""

_KEY_FILE_MODE = 0o600


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The files written by :func:`make_pki`."""

    ca_cert: Path
    """The CA certificate that signed ``server`` and ``client``."""
    server: Pem
    """Server certificate for ``localhost`` and ``127.0.0.1`` (serverAuth)."""
    client: Pem
    """Client certificate, CN and DNS SAN ``secureml-test-client`` (clientAuth)."""
    other_ca_cert: Path
    """An unrelated self-signed CA certificate, for "wrong CA" tests."""


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secureml tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: _Issuer
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(common_name: str) -> tuple[_Issuer, x509.Certificate]:
    key = _new_key()
    issuer = _Issuer(_name(common_name), key)
    cert = (
        _builder(issuer.name, key, issuer)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return issuer, cert


def _make_leaf(
    issuer: _Issuer,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    builder = (
        _builder(_name(common_name), key, issuer)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(issuer.key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _KEY_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, _KEY_FILE_MODE)  # the file may have existed with a looser mode
    return path


def _write_pair(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Pem:
    return Pem(
        cert=_write_cert(directory / f"{stem}.pem", cert),
        key=_write_key(directory / f"{stem}-key.pem", key),
    )


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, server and client certificates and a stranger CA into ``directory``.

    Files: ``ca.pem``, ``server.pem``, ``server-key.pem``, ``client.pem``,
    ``client-key.pem`` and ``other-ca.pem``. Keys are unencrypted PKCS#8 PEM, mode 0600.
    Certificates are valid from an hour ago until a day from now.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert = _make_ca("secureml test CA")
    _, other_ca_cert = _make_ca("secureml unrelated test CA")
    server_key, server_cert = _make_leaf(
        ca,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = _make_leaf(
        ca, CLIENT_COMMON_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(CLIENT_COMMON_NAME)]
    )
    return Pki(
        ca_cert=_write_cert(directory / "ca.pem", ca_cert),
        server=_write_pair(directory, "server", server_key, server_cert),
        client=_write_pair(directory, "client", client_key, client_cert),
        other_ca_cert=_write_cert(directory / "other-ca.pem", other_ca_cert),
    )
