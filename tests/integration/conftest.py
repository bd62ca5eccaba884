"""Everything under tests/integration talks to the real OpenBao server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from secureml._devserver import DevServer
from tests.support.raft import RaftCluster
from tests.support.workers import AuditedServer


@pytest.fixture(scope="module")
def tls_server() -> Iterator[DevServer]:
    """An OpenBao dev server on TLS (its own CA), holding ``secureml/tls_probe``."""
    server = DevServer(tls=True).start()
    try:
        server.bao("kv", "put", "-mount=secret", "secureml/tls_probe", "value=over-tls")
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An address that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def raft() -> Iterator[RaftCluster]:
    """Three OpenBao nodes on Raft, all voters, KV v2 at ``secret/``; one cluster per
    module (its tests kill and restart nodes); stopped by PID."""
    cluster = RaftCluster(3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def audited_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedServer]:
    """An OpenBao dev server with a file audit device, for counting workers' logins;
    one for the session, stopped by PID."""
    server = AuditedServer(tmp_path_factory.mktemp("audited-bao")).start()
    try:
        yield server
    finally:
        server.stop()
