"""Shared fixtures: a clean environment, a loopback-only network, a real OpenBao server."""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

# Every variable the library reads: tests must never depend on the developer's shell.
_OWN_PREFIXES = ("SECUREML_", "VAULT_", "BAO_")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_OWN_PREFIXES):
            monkeypatch.delenv(name)


def _is_loopback(host: Any) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> Iterator[None]:
    """Fail any test that would send traffic (or a DNS query) beyond this machine."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"test tried to reach {address[0]!r}: only loopback is allowed")
        return real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            raise socket.gaierror(f"test tried to resolve {host!r}: only loopback is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="session")
def bao_server() -> Iterator[DevServer]:
    """One OpenBao dev server for the session, on a free port, stopped by PID."""
    server = DevServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vault_path() -> str:
    """A folder of its own under the KV mount, so tests never see each other's secrets."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def vault_manager(bao_server: DevServer, vault_path: str) -> KeyManager:
    """A manager on the dev server's ``secret/`` mount, in a fresh folder, env fallback on."""
    return KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=vault_path
    )
