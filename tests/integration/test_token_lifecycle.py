"""Token lifecycle against the real server: renewal, max TTL, re-login, revocation, expiry,
batch tokens, and single-flight logins under 32 threads.

TTLs are seconds long, so these tests take real time (about 40 s in all); that is the
price of not faking the clock of a real server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    AuthenticationError,
    KeyManager,
    PermissionDeniedError,
)
from secureml.key_management.backends import VaultBackend
from secureml.key_management.backends._vault_session import TokenSession


@dataclass(frozen=True)
class Role:
    mount: str
    name: str
    role_id: str
    secret_id: str

    def auth(self) -> AppRoleAuth:
        return AppRoleAuth(self.role_id, self.secret_id, mount=self.mount)


def bao_json(server: DevServer, *args: str) -> dict[str, object]:
    result = json.loads(server.bao(*args, "-format=json").stdout)
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def approle_mount(bao_server: DevServer) -> str:
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    bao_server.bao("auth", "enable", f"-path={mount}", "approle")
    policy = """
        path "secret/data/*" { capabilities = ["create", "read", "update"] }
        path "sys/internal/ui/mounts/*" { capabilities = ["read"] }
    """
    bao_server.bao("policy", "write", "lifecycle", "-", input=policy.encode())
    return mount


@pytest.fixture
def make_role(bao_server: DevServer, approle_mount: str) -> Callable[..., Role]:
    def make(*, secret_id_uses: int = 0, **settings: str) -> Role:
        name = f"r{uuid.uuid4().hex[:8]}"
        fields = {"token_policies": "lifecycle", **settings}
        bao_server.bao(
            "write", f"auth/{approle_mount}/role/{name}", *(f"{k}={v}" for k, v in fields.items())
        )
        role_id = bao_json(bao_server, "read", f"auth/{approle_mount}/role/{name}/role-id")
        secret = bao_json(
            bao_server,
            "write",
            "-f",
            f"auth/{approle_mount}/role/{name}/secret-id",
            f"num_uses={secret_id_uses}",
        )
        return Role(
            approle_mount,
            name,
            str(role_id["data"]["role_id"]),  # type: ignore[index]
            str(secret["data"]["secret_id"]),  # type: ignore[index]
        )

    return make


def logins_seen_by_server(server: DevServer, role: Role, issued: int) -> int:
    """Logins Vault counted: the secret ID was issued for ``issued`` uses."""
    found = bao_json(
        server,
        "write",
        f"auth/{role.mount}/role/{role.name}/secret-id/lookup",
        f"secret_id={role.secret_id}",
    )
    return issued - int(found["data"]["secret_id_num_uses"])  # type: ignore[index]


def session_of(manager: KeyManager) -> TokenSession:
    backend = manager._core.primary
    assert isinstance(backend, VaultBackend)
    return backend.session


def current_token(manager: KeyManager) -> str:
    state = session_of(manager)._state
    assert state is not None
    return state.login.token


def manager_for(server: DevServer, vault_path: str, **kwargs: object) -> KeyManager:
    return KeyManager(
        vault_url=server.address,
        vault_path=vault_path,
        use_env_fallback=False,
        cache_ttl=0,  # every read reaches the server: these tests are about tokens
        **kwargs,  # type: ignore[arg-type]
    )


def read_for(manager: KeyManager, seconds: float, threads: int = 1) -> list[BaseException]:
    """Read ``x`` in a loop from ``threads`` threads; return every error raised."""
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds
    start = threading.Barrier(threads)

    def loop() -> None:
        start.wait()
        while time.monotonic() < deadline:
            try:
                assert manager.get_secret("x") == "v"
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.02)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


@pytest.fixture
def seeded(bao_server: DevServer, vault_path: str) -> str:
    bao_server.bao("kv", "put", "-mount=secret", f"{vault_path}/x", "value=v")
    return vault_path


def test_short_lived_tokens_renew_then_log_in_again_without_a_failed_read(
    bao_server: DevServer, seeded: str, make_role: Callable[..., Role]
) -> None:
    role = make_role(token_ttl="3s", token_max_ttl="8s", secret_id_uses=100)
    manager = manager_for(bao_server, seeded, vault_auth=role.auth())
    assert read_for(manager, 20) == []
    session = session_of(manager)
    # Each token lives 8 s at most, renewed about every 2 s: 3 or 4 logins in 20 s.
    assert 3 <= session.logins <= 5, session.logins
    assert session.renewals >= 3
    assert logins_seen_by_server(bao_server, role, 100) == session.logins


def test_a_revoked_token_is_replaced_by_logging_in_again(
    bao_server: DevServer, seeded: str, make_role: Callable[..., Role]
) -> None:
    manager = manager_for(bao_server, seeded, vault_auth=make_role(token_ttl="60s").auth())
    assert manager.get_secret("x") == "v"
    bao_server.bao("token", "revoke", current_token(manager))
    assert manager.get_secret("x") == "v"
    assert session_of(manager).logins == 2


def test_batch_tokens_are_never_renewed(
    bao_server: DevServer, seeded: str, make_role: Callable[..., Role]
) -> None:
    role = make_role(token_type="batch", token_ttl="3s")
    manager = manager_for(bao_server, seeded, vault_auth=role.auth())
    assert read_for(manager, 5) == []
    session = session_of(manager)
    assert session.renewals == 0
    assert session.logins >= 2


def test_a_renewable_plain_token_is_renewed(bao_server: DevServer, seeded: str) -> None:
    token = bao_json(bao_server, "token", "create", "-ttl=3s", "-explicit-max-ttl=60s")
    manager = manager_for(
        bao_server,
        seeded,
        vault_token=str(token["auth"]["client_token"]),  # type: ignore[index]
    )
    # 5 s of reads on a 3 s token: it only lived through them by being renewed.
    assert read_for(manager, 5) == []
    assert session_of(manager).renewals >= 1
    assert manager.status().token_ttl is not None


def test_a_plain_token_that_expires_says_so(bao_server: DevServer, seeded: str) -> None:
    token = bao_json(bao_server, "token", "create", "-ttl=2s", "-renewable=false")
    secret = str(token["auth"]["client_token"])  # type: ignore[index]
    manager = manager_for(bao_server, seeded, vault_token=secret)
    assert manager.get_secret("x") == "v"
    time.sleep(2.2)
    with pytest.raises(AuthenticationError, match="expired") as caught:
        manager.get_secret("x")
    assert "cannot log in again" in str(caught.value)
    assert secret not in str(caught.value)


def test_a_revoked_plain_token_says_it_cannot_log_in_again(
    bao_server: DevServer, seeded: str
) -> None:
    token = bao_json(bao_server, "token", "create", "-ttl=60s")
    secret = str(token["auth"]["client_token"])  # type: ignore[index]
    manager = manager_for(bao_server, seeded, vault_token=secret)
    assert manager.get_secret("x") == "v"
    bao_server.bao("token", "revoke", secret)
    with pytest.raises(AuthenticationError, match="cannot log in again") as caught:
        manager.get_secret("x")
    assert secret not in str(caught.value)


def test_32_threads_log_in_once_per_token_generation(
    bao_server: DevServer, seeded: str, make_role: Callable[..., Role]
) -> None:
    role = make_role(token_ttl="2s", token_max_ttl="4s", secret_id_uses=200)
    manager = manager_for(bao_server, seeded, vault_auth=role.auth())
    assert read_for(manager, 9, threads=32) == []
    session = session_of(manager)
    # The first stampede (32 threads at once) logged in once; then one login per 4 s
    # token: 3 or 4 generations in 9 s, never one per thread.
    assert 2 <= session.logins <= 5, session.logins
    assert session._generation == session.logins
    assert logins_seen_by_server(bao_server, role, 200) == session.logins


def test_a_failed_early_login_keeps_the_current_token_until_it_expires(
    bao_server: DevServer,
    seeded: str,
    make_role: Callable[..., Role],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A secret ID good for one login: the early re-login (at ~2/3 of 4 s) is refused.
    role = make_role(token_type="batch", token_ttl="4s", secret_id_uses=1)
    manager = manager_for(bao_server, seeded, vault_auth=role.auth())
    assert manager.get_secret("x") == "v"
    state = session_of(manager)._state
    assert state is not None
    assert state.expires_at is not None
    expires_at = state.expires_at
    with caplog.at_level("WARNING", logger="secureml.key_management"):
        # Reads until shortly before expiry: the early re-login fails, the reads do not.
        assert read_for(manager, expires_at - time.monotonic() - 0.3) == []
    assert "stays in use until it expires" in caplog.text
    assert role.secret_id not in caplog.text
    time.sleep(max(0.0, expires_at - time.monotonic() + 0.2))
    with pytest.raises(AuthenticationError, match="log in with approle"):
        manager.get_secret("x")


def test_tokens_without_the_default_policy(
    bao_server: DevServer, seeded: str, make_role: Callable[..., Role]
) -> None:
    """Such tokens may not renew or look themselves up: secureml logs in again instead
    of renewing, and a denied path is still a PermissionDeniedError."""
    role = make_role(token_ttl="3s", token_no_default_policy="true")
    manager = manager_for(bao_server, seeded, vault_auth=role.auth())
    assert read_for(manager, 5) == []
    session = session_of(manager)
    assert session.renewals == 0
    assert session.logins >= 2
    denied_mount = f"denied-{uuid.uuid4().hex[:8]}"
    bao_server.bao("secrets", "enable", f"-path={denied_mount}", "kv-v2")
    elsewhere = manager_for(bao_server, seeded, vault_auth=role.auth(), vault_mount=denied_mount)
    with pytest.raises(PermissionDeniedError):
        elsewhere.get_secret("x")
