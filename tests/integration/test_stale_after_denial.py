"""Stale-if-error serves a cached value after an OUTAGE only, never after a DENIAL.

The rule (README, "Stale-if-error"): while Vault is unreachable, sealed or answering 5xx,
a cached value up to ``max_stale`` old may be served. A permission error (403,
``PermissionDeniedError``) or a rejected token (``AuthenticationError``) means this
identity may no longer read the value: from then on it must not be served from the
cache, not even when Vault goes down right after.

Every read path is checked, since each reaches the cache its own way: ``get_secret`` and
``get_encryption_key`` (latest and ``version=1``), ``encrypt`` (which reads the key's
current version) and ``decrypt`` of a blob made before (which reads the version its
header names). Each test: a least-privilege token through the fault proxy, one read to
fill the cache, the permission revoked on the real server (policy rewritten, or token
revoked), ``cache_ttl`` left to pass, a read that must be refused, then an outage (every
request answered 503, or every connection dropped) and a read that must still be
refused. The control cases run the same steps without the revocation and must serve the
stale value, so the regression cases cannot pass merely because stale serving never
happens.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AuthenticationError,
    KeyManagementError,
    KeyManager,
    PermissionDeniedError,
    VaultUnavailableError,
)
from secureml.key_management import _envelope as envelope
from tests.support.fault_proxy import Fault, FaultProxy

CACHE_TTL = 0.3
KEY = "stale/key"
PAYLOAD = b"rows encrypted before the revocation"

# name -> what one read returns (the value, a key, a fresh ciphertext or a plaintext)
Read = Callable[[KeyManager, bytes], object]
READS: dict[str, Read] = {
    "get_secret": lambda km, _blob: km.get_secret(KEY),
    "get_encryption_key": lambda km, _blob: km.get_encryption_key(KEY),
    "encrypt": lambda km, _blob: km.encrypt(PAYLOAD, KEY),
    "get_secret-version-1": lambda km, _blob: km.get_secret(KEY, version=1),
    "get_encryption_key-version-1": lambda km, _blob: km.get_encryption_key(KEY, version=1),
    "decrypt-v1-blob": lambda km, blob: km.decrypt(blob),
}

# how the permission is taken away -> the error the next read must raise
REVOCATIONS: dict[str, type[KeyManagementError]] = {
    "403-policy-rewritten": PermissionDeniedError,
    "401-token-revoked": AuthenticationError,
}

# 503: every request answered "service unavailable"; dropped: every connection closed
# without an answer (what a dead node behind a load balancer looks like).
OUTAGES = ["503", "dropped"]


NO_ACCESS = {"policy": 'path "nothing/*" { capabilities = [] }'}


def _vault_api(server: DevServer, method: str, path: str, body: object) -> dict[str, Any]:
    """One request to the real server's HTTP API with the root token (what ``bao policy
    write`` / ``bao token create`` / ``bao token revoke`` send, without a process each)."""
    parts = urlsplit(server.address)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        connection.request(
            method,
            f"/v1/{path}",
            body=json.dumps(body),
            headers={"X-Vault-Token": server.root_token, "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status in (200, 204), (method, path, response.status, payload[:200])
    return json.loads(payload) if payload else {}


@dataclass
class Scenario:
    server: DevServer
    admin: KeyManager  # root token, direct: checks what the manager under test returns
    proxy: FaultProxy
    manager: KeyManager  # least-privilege token, through the proxy
    policy: str
    token: str
    blob: bytes  # made before the revocation, with version 1 of KEY

    def revoke(self, how: str) -> None:
        if how.startswith("403"):
            _vault_api(self.server, "PUT", f"sys/policies/acl/{self.policy}", NO_ACCESS)
        else:
            _vault_api(self.server, "POST", "auth/token/revoke", {"token": self.token})

    def outage(self, kind: str) -> None:
        # Far more faults than one read can use (lookups, renewals, retries): from now
        # on no request reaches Vault. (Stopping the proxy would not do: connections
        # the client keeps alive would go on being served.)
        fault = Fault.status(503) if kind == "503" else Fault.drop()
        self.proxy.inject(*[fault] * 200)

    def assert_is_the_first_answer(self, path: str, first: object, later: object) -> None:
        """``later`` is what a read answered from the (stale) cache: the same value."""
        if path == "encrypt":
            assert isinstance(later, bytes)
            assert envelope.parse_header(later)[0].key_version == 1
            assert self.admin.decrypt(later) == PAYLOAD  # made with the cached key
        else:
            assert later == first


@pytest.fixture
def scenario(bao_server: DevServer, vault_path: str) -> Iterator[Scenario]:
    admin = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        vault_kv_version=2,
    )
    assert admin.generate_key(KEY) == 1
    blob = admin.encrypt(PAYLOAD, KEY)
    policy = f"stale-{uuid.uuid4().hex[:12]}"
    rules = (
        f'path "secret/data/{vault_path}/*" {{ capabilities = ["read"] }}\n'
        f'path "secret/metadata/{vault_path}/*" {{ capabilities = ["read"] }}'  # the key label
    )
    _vault_api(bao_server, "PUT", f"sys/policies/acl/{policy}", {"policy": rules})
    created = _vault_api(
        bao_server, "POST", "auth/token/create", {"policies": [policy], "ttl": "10m"}
    )
    token = created["auth"]["client_token"]
    proxy = FaultProxy(bao_server.address).start()
    manager = KeyManager(
        vault_url=proxy.origin,
        vault_token=token,
        vault_path=vault_path,
        vault_kv_version=2,
        cache_ttl=CACHE_TTL,
        max_stale=600,
        timeout=2,
        retries=0,
    )
    try:
        yield Scenario(bao_server, admin, proxy, manager, policy, token, blob)
    finally:
        proxy.stop()


def _expire_cache() -> None:
    time.sleep(CACHE_TTL + 0.1)


@pytest.mark.parametrize("outage", OUTAGES)
@pytest.mark.parametrize("revocation", list(REVOCATIONS))
@pytest.mark.parametrize("path", list(READS))
def test_no_stale_value_after_a_denial(
    scenario: Scenario, path: str, revocation: str, outage: str
) -> None:
    read = READS[path]
    km = scenario.manager
    first = read(km, scenario.blob)  # cached now
    scenario.revoke(revocation)
    _expire_cache()
    with pytest.raises(REVOCATIONS[revocation]):
        read(km, scenario.blob)
    scenario.outage(outage)
    try:
        later = read(km, scenario.blob)
    except (VaultUnavailableError, PermissionDeniedError, AuthenticationError):
        pass  # refused: the outage, or the denial remembered
    else:
        same = later == first or (
            path == "encrypt"
            and isinstance(later, bytes)
            and scenario.admin.decrypt(later) == PAYLOAD
        )
        pytest.fail(
            f"{path} answered during an outage that followed "
            f"{REVOCATIONS[revocation].__name__} ({revocation}), instead of raising: "
            + (
                "it served the value cached before the revocation"
                if same
                else f"it returned {type(later).__name__}"
            )
        )


@pytest.mark.parametrize("outage", OUTAGES)
@pytest.mark.parametrize("path", list(READS))
def test_control_an_outage_alone_serves_the_stale_value(
    scenario: Scenario, path: str, outage: str
) -> None:
    """Without a denial first, the same steps do serve stale: the rule's other half, and
    proof that the cases above exercise the stale path."""
    read = READS[path]
    km = scenario.manager
    first = read(km, scenario.blob)
    _expire_cache()
    scenario.outage(outage)
    later = read(km, scenario.blob)
    scenario.assert_is_the_first_answer(path, first, later)
    # encrypt and decrypt also check the key's managed-key label: served stale with it.
    assert km.stats().stale_serves == (2 if path.startswith(("encrypt", "decrypt")) else 1)
