"""Raised errors carry nothing of the server's answer or the request: no chained hvac or
requests exception (hvac keeps the response body on its exceptions; requests keeps the
request, with its X-Vault-Token header), and no token in any message or repr.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from secureml._devserver import DevServer, free_loopback_port
from secureml.key_management import (
    AppRoleAuth,
    AuthenticationError,
    KeyManagementError,
    KeyManager,
    PermissionDeniedError,
    VaultUnavailableError,
    WriteOutcomeUnknownError,
)
from tests.support.fault_proxy import Fault, FaultProxy


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def assert_clean(error: BaseException, *secrets: str) -> None:
    for link in chain(error):
        assert isinstance(link, KeyManagementError), f"{type(link)} is chained"
        for attribute in ("request", "response", "text", "json"):
            assert getattr(link, attribute, None) is None, attribute
        for secret in secrets:
            assert secret not in str(link)
            assert secret not in repr(link)
            assert all(secret not in str(arg) for arg in link.args)


@pytest.fixture
def limited_token(bao_server: DevServer) -> str:
    """A valid token with only the default policy: every secret read is denied."""
    out = bao_server.bao("token", "create", "-policy=default", "-field=token", "-ttl=5m")
    return out.stdout.decode().strip()


def failing_calls(
    bao_server: DevServer, limited_token: str
) -> dict[str, tuple[Callable[[], object], type[Exception], str]]:
    address = bao_server.address
    return {
        "denied": (
            lambda: KeyManager(
                vault_url=address, vault_token=limited_token, vault_kv_version=2
            ).get_secret("x"),
            PermissionDeniedError,
            limited_token,
        ),
        "bad-token": (
            lambda: KeyManager(vault_url=address, vault_token="s.bad-token-value").get_secret("x"),
            AuthenticationError,
            "s.bad-token-value",
        ),
        "bad-approle": (
            lambda: KeyManager(
                vault_url=address, vault_auth=AppRoleAuth("no-such-role", "s3cret-id-value")
            ).get_secret("x"),
            AuthenticationError,
            "s3cret-id-value",
        ),
        "unreachable": (
            lambda: KeyManager(
                vault_url=f"http://127.0.0.1:{free_loopback_port()}",
                vault_token="s.unreachable-token",
                retries=0,
            ).get_secret("x"),
            VaultUnavailableError,
            "s.unreachable-token",
        ),
    }


@pytest.mark.parametrize("case", ["denied", "bad-token", "bad-approle", "unreachable"])
def test_failures_chain_nothing_foreign(
    bao_server: DevServer, limited_token: str, case: str
) -> None:
    if case == "bad-approle":
        with contextlib.suppress(subprocess.CalledProcessError):  # enabled by another test
            bao_server.bao("auth", "enable", "approle")
    call, expected, secret = failing_calls(bao_server, limited_token)[case]
    with pytest.raises(expected) as caught:
        call()
    assert_clean(caught.value, secret, bao_server.root_token)


def test_an_unknown_write_chains_nothing_foreign(bao_server: DevServer) -> None:
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=f"chains-{uuid.uuid4().hex[:8]}",
            vault_kv_version=2,
        )
        manager.set_secret("x", "1")
        proxy.inject(Fault.drop())
        with pytest.raises(WriteOutcomeUnknownError) as caught:
            manager.set_secret("x", "2")
    assert_clean(caught.value, bao_server.root_token)
