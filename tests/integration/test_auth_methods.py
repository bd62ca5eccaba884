"""Every auth method against the real OpenBao dev server, namespaces included.

AppRole, userpass, JWT and Kubernetes logins are configured with the real ``bao`` CLI;
Kubernetes' TokenReview API is faked by a loopback TLS stub that OpenBao calls. Each test
uses its own auth mount, role, policy, namespace and KV folder (uuid suffixes), since
all of them share one server.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    AuthenticationError,
    ConfigurationError,
    JWTAuth,
    KeyManager,
    KubernetesAuth,
    PermissionDeniedError,
    SecretNotFoundError,
    UserpassAuth,
    VaultAuth,
)
from secureml.key_management.backends.vault import VaultBackend
from tests.support.http_stub import Reply, Seen, StubServer, json_response
from tests.support.pki import Pem, make_pki

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
AUDIENCE = "secureml"

# -- helpers ---------------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A name no other test on the shared server uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ns_env(namespace: str | None) -> dict[str, str]:
    """Extra environment that points the ``bao`` CLI into ``namespace``."""
    return {} if namespace is None else {"BAO_NAMESPACE": namespace}


def bao_json(server: DevServer, *args: str, namespace: str | None = None) -> dict[str, Any]:
    """Run ``bao <args[0]> -format=json <args[1:]>`` and return the ``data`` it printed."""
    out = server.bao(args[0], "-format=json", *args[1:], extra_env=ns_env(namespace)).stdout
    data: dict[str, Any] = json.loads(out)["data"]
    return data


def bao_write_json(server: DevServer, path: str, body: dict[str, Any]) -> None:
    """``bao write <path> -`` with a JSON body on stdin (for lists and multi-line PEMs)."""
    server.bao("write", path, "-", input=json.dumps(body).encode())


def write_policy(
    server: DevServer, vault_path: str, *, namespace: str | None = None, data_path: str = ""
) -> str:
    """A policy that may read and write secrets under ``vault_path`` and detect the KV version.

    ``data_path`` overrides the folder the policy grants (to build an identity that may
    not read ``vault_path``).
    """
    name = unique("policy")
    rules = f"""
    path "secret/data/{data_path or vault_path}/*" {{
      capabilities = ["read", "create", "update"]
    }}
    path "sys/internal/ui/mounts/*" {{
      capabilities = ["read"]
    }}
    """
    server.bao("policy", "write", name, "-", input=rules.encode(), extra_env=ns_env(namespace))
    return name


def enable_auth(server: DevServer, method: str, *, namespace: str | None = None) -> str:
    """Enable ``method`` at a fresh mount; return the mount path."""
    mount = unique(method)
    server.bao("auth", "enable", f"-path={mount}", method, extra_env=ns_env(namespace))
    return mount


def make_approle(server: DevServer, mount: str, policy: str) -> tuple[str, str]:
    """A role with ``policy`` and a 60 s token TTL; return its role ID and a new secret ID."""
    role = unique("role")
    server.bao("write", f"auth/{mount}/role/{role}", f"token_policies={policy}", "token_ttl=60s")
    role_id = bao_json(server, "read", f"auth/{mount}/role/{role}/role-id")["role_id"]
    secret_id = bao_json(server, "write", "-f", f"auth/{mount}/role/{role}/secret-id")["secret_id"]
    return str(role_id), str(secret_id)


def make_user(
    server: DevServer, mount: str, policy: str, *, namespace: str | None = None
) -> tuple[str, str]:
    """A userpass user with ``policy``; return its name and password."""
    username, password = unique("user"), "pw-" + uuid.uuid4().hex
    server.bao(
        "write",
        f"auth/{mount}/users/{username}",
        f"password={password}",
        f"token_policies={policy}",
        "token_ttl=60s",
        extra_env=ns_env(namespace),
    )
    return username, password


def manager_with(server: DevServer, vault_path: str, auth: VaultAuth, **kwargs: Any) -> KeyManager:
    """A manager logging in with ``auth`` on the dev server's ``secret/`` mount, no cache
    (these tests are about what reaches the server)."""
    kwargs.setdefault("cache_ttl", 0)
    return KeyManager(vault_url=server.address, vault_path=vault_path, vault_auth=auth, **kwargs)


def root_manager(server: DevServer, vault_path: str, **kwargs: Any) -> KeyManager:
    """A root-token manager, to seed secrets and to look from outside a namespace."""
    return KeyManager(
        vault_url=server.address,
        vault_token=server.root_token,
        vault_path=vault_path,
        use_env_fallback=False,
        **kwargs,
    )


def assert_reads_and_writes(manager: KeyManager) -> None:
    """The manager writes a secret and reads it back."""
    value = "v-" + uuid.uuid4().hex
    assert manager.set_secret("probe", value) is True
    assert manager.get_secret("probe") == value


def current_token(manager: KeyManager) -> str:
    """The Vault token the manager's session holds right now (test-only peek)."""
    backend = manager._core.primary
    assert isinstance(backend, VaultBackend)
    state = backend.session._state
    assert state is not None
    return state.login.token


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: rsa.RSAPrivateKey, *, lifetime: int = 300, **claims: Any) -> str:
    """An RS256 JWT for ``AUDIENCE``, issued now and valid ``lifetime`` s (negative: expired)."""
    now = int(time.time())
    payload = {"sub": "trainer", "aud": AUDIENCE, "iat": now - 10, "exp": now + lifetime}
    payload.update(claims)
    return pyjwt.encode(payload, key, algorithm="RS256")


def assert_hidden(exc: BaseException, *secrets: str) -> None:
    """None of ``secrets`` shows in the exception's text or repr, or rides along as a cause."""
    text = f"{exc}\n{exc!r}"
    for secret in secrets:
        assert secret not in text
    assert exc.__cause__ is None


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_approle(bao_server: DevServer) -> str:
    """AppRole at its default path ``approle`` (another module may have enabled it)."""
    try:
        bao_server.bao("auth", "enable", "approle")
    except subprocess.CalledProcessError as exc:
        if b"path is already in use" not in exc.stderr:
            raise
    return "approle"


@pytest.fixture(scope="module")
def trusted_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@dataclass(frozen=True)
class JwtSetup:
    mount: str
    role: str


@pytest.fixture
def jwt_setup(bao_server: DevServer, vault_path: str, trusted_key: rsa.RSAPrivateKey) -> JwtSetup:
    """A JWT mount that trusts ``trusted_key`` and a role bound to the ``secureml`` audience."""
    mount = enable_auth(bao_server, "jwt")
    policy = write_policy(bao_server, vault_path)
    bao_write_json(
        bao_server, f"auth/{mount}/config", {"jwt_validation_pubkeys": [public_pem(trusted_key)]}
    )
    role = unique("trainer")
    bao_write_json(
        bao_server,
        f"auth/{mount}/role/{role}",
        {
            "role_type": "jwt",
            "bound_audiences": [AUDIENCE],
            "user_claim": "sub",
            "token_policies": [policy],
            "token_ttl": "60s",
        },
    )
    return JwtSetup(mount, role)


class FakeKubernetes:
    """A TokenReview API over HTTPS that approves every token and remembers which it saw."""

    def __init__(self, tls: Pem) -> None:
        self.reviewed: list[str] = []
        self.server = StubServer(self._review, tls=tls)

    def _review(self, seen: Seen) -> Reply:
        if seen.method != "POST" or seen.path != TOKEN_REVIEW_PATH:
            return json_response(404, {"kind": "Status", "code": 404})
        self.reviewed.append(json.loads(seen.body)["spec"]["token"])
        return json_response(
            201,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "status": {
                    "authenticated": True,
                    "user": {"username": "system:serviceaccount:ml:trainer", "uid": "1234"},
                },
            },
        )


@pytest.fixture
def fake_kubernetes(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    """The fake API, and the CA file OpenBao must trust to reach it."""
    pki = make_pki(tmp_path / "pki")
    fake = FakeKubernetes(pki.server)
    with fake.server:
        yield fake, pki.ca_cert


def service_account_jwt(key: rsa.RSAPrivateKey) -> str:
    """A well-formed service-account token for ``ml/trainer`` (the fake API vouches for it)."""
    return pyjwt.encode(
        {
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "ml",
            "kubernetes.io/serviceaccount/service-account.name": "trainer",
            "kubernetes.io/serviceaccount/service-account.uid": "1234",
            "sub": "system:serviceaccount:ml:trainer",
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="RS256",
    )


@pytest.fixture
def namespace(bao_server: DevServer) -> str:
    """A fresh namespace with its own KV v2 engine at ``secret/``."""
    name = unique("ns")
    bao_server.bao("namespace", "create", name)
    bao_server.bao("secrets", "enable", "-path=secret", "kv-v2", extra_env=ns_env(name))
    return name


# -- AppRole ---------------------------------------------------------------------------


def test_approle_reads_writes_and_reports(bao_server: DevServer, vault_path: str) -> None:
    mount = enable_auth(bao_server, "approle")
    role_id, secret_id = make_approle(bao_server, mount, write_policy(bao_server, vault_path))
    manager = manager_with(bao_server, vault_path, AppRoleAuth(role_id, secret_id, mount=mount))

    assert_reads_and_writes(manager)

    status = manager.status()
    assert status.error is None
    assert status.reachable
    assert status.auth_method == "approle"
    assert status.logins == 1
    assert status.renewable is True
    assert status.token_ttl is not None
    assert 30 < status.token_ttl <= 60


def test_approle_wrong_secret_id_is_an_authentication_error(
    bao_server: DevServer, vault_path: str
) -> None:
    mount = enable_auth(bao_server, "approle")
    role_id, _ = make_approle(bao_server, mount, write_policy(bao_server, vault_path))
    wrong = str(uuid.uuid4())
    auth = AppRoleAuth(role_id, wrong, mount=mount)
    manager = manager_with(bao_server, vault_path, auth, use_env_fallback=False)

    with pytest.raises(AuthenticationError) as caught:
        manager.get_secret("probe")

    assert_hidden(caught.value, wrong)
    assert wrong not in repr(auth)
    assert manager.status().logins == 0


def test_approle_from_environment_only(
    bao_server: DevServer, vault_path: str, default_approle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role_id, secret_id = make_approle(
        bao_server, default_approle, write_policy(bao_server, vault_path)
    )
    monkeypatch.setenv("SECUREML_VAULT_URL", bao_server.address)
    monkeypatch.setenv("SECUREML_VAULT_ROLE_ID", role_id)
    monkeypatch.setenv("SECUREML_VAULT_SECRET_ID", secret_id)
    manager = KeyManager(vault_path=vault_path)

    assert_reads_and_writes(manager)

    status = manager.status()
    assert status.auth_method == "approle"
    assert status.logins == 1


@pytest.mark.parametrize(
    ("present", "absent"),
    [
        ("SECUREML_VAULT_ROLE_ID", "SECUREML_VAULT_SECRET_ID"),
        ("SECUREML_VAULT_SECRET_ID", "SECUREML_VAULT_ROLE_ID"),
    ],
)
def test_approle_half_configured_in_environment(
    bao_server: DevServer, monkeypatch: pytest.MonkeyPatch, present: str, absent: str
) -> None:
    value = str(uuid.uuid4())
    monkeypatch.setenv("SECUREML_VAULT_URL", bao_server.address)
    monkeypatch.setenv(present, value)
    # A token alongside must not paper over the half-configured AppRole.
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", bao_server.root_token)

    with pytest.raises(ConfigurationError, match=absent) as caught:
        KeyManager()

    assert_hidden(caught.value, value, bao_server.root_token)


# -- userpass --------------------------------------------------------------------------


def test_userpass_logs_in(bao_server: DevServer, vault_path: str) -> None:
    mount = enable_auth(bao_server, "userpass")
    username, password = make_user(bao_server, mount, write_policy(bao_server, vault_path))
    auth = UserpassAuth(username, password, mount=mount)
    manager = manager_with(bao_server, vault_path, auth)

    assert_reads_and_writes(manager)

    assert manager.status().auth_method == "userpass"
    assert password not in repr(auth)


def test_userpass_wrong_password(bao_server: DevServer, vault_path: str) -> None:
    mount = enable_auth(bao_server, "userpass")
    username, password = make_user(bao_server, mount, write_policy(bao_server, vault_path))
    wrong = password + "-wrong"
    auth = UserpassAuth(username, wrong, mount=mount)
    manager = manager_with(bao_server, vault_path, auth, use_env_fallback=False)

    with pytest.raises(AuthenticationError) as caught:
        manager.get_secret("probe")

    assert_hidden(caught.value, wrong, password)
    assert wrong not in repr(auth)


# -- JWT -------------------------------------------------------------------------------


def test_jwt_inline(
    bao_server: DevServer, vault_path: str, jwt_setup: JwtSetup, trusted_key: rsa.RSAPrivateKey
) -> None:
    token = sign(trusted_key)
    auth = JWTAuth(jwt_setup.role, jwt=token, mount=jwt_setup.mount)
    manager = manager_with(bao_server, vault_path, auth)

    assert_reads_and_writes(manager)

    status = manager.status()
    assert status.auth_method == "jwt"
    assert status.logins == 1
    assert token not in repr(auth)


def test_jwt_from_file(
    bao_server: DevServer,
    vault_path: str,
    jwt_setup: JwtSetup,
    trusted_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "jwt"
    token_file.write_text(sign(trusted_key) + "\n")
    manager = manager_with(
        bao_server,
        vault_path,
        JWTAuth(jwt_setup.role, jwt_path=str(token_file), mount=jwt_setup.mount),
    )

    assert_reads_and_writes(manager)


def test_jwt_file_is_read_again_at_each_login(
    bao_server: DevServer,
    vault_path: str,
    jwt_setup: JwtSetup,
    trusted_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "jwt"
    untrusted = sign(new_rsa_key())
    token_file.write_text(untrusted)
    auth = JWTAuth(jwt_setup.role, jwt_path=str(token_file), mount=jwt_setup.mount)
    manager = manager_with(bao_server, vault_path, auth, use_env_fallback=False)

    with pytest.raises(AuthenticationError) as caught:
        manager.get_secret("probe")
    assert_hidden(caught.value, untrusted)

    token_file.write_text(sign(trusted_key))  # the rotated, valid token
    assert_reads_and_writes(manager)
    assert manager.status().logins == 1
    # The same auth object serves a second manager just as well.
    assert_reads_and_writes(manager_with(bao_server, vault_path, auth))


def test_jwt_expired(
    bao_server: DevServer, vault_path: str, jwt_setup: JwtSetup, trusted_key: rsa.RSAPrivateKey
) -> None:
    expired = sign(trusted_key, lifetime=-3600, iat=int(time.time()) - 7200)
    auth = JWTAuth(jwt_setup.role, jwt=expired, mount=jwt_setup.mount)
    manager = manager_with(bao_server, vault_path, auth, use_env_fallback=False)

    with pytest.raises(AuthenticationError) as caught:
        manager.get_secret("probe")

    assert_hidden(caught.value, expired)


# -- Kubernetes ------------------------------------------------------------------------


def test_kubernetes_login_and_relogin_rereads_the_token_file(
    bao_server: DevServer,
    vault_path: str,
    fake_kubernetes: tuple[FakeKubernetes, Path],
    tmp_path: Path,
) -> None:
    fake, ca_cert = fake_kubernetes
    mount = enable_auth(bao_server, "kubernetes")
    bao_server.bao(
        "write",
        f"auth/{mount}/config",
        f"kubernetes_host={fake.server.origin}",
        f"kubernetes_ca_cert=@{ca_cert}",
        "disable_local_ca_jwt=true",
        "token_reviewer_jwt=reviewer-jwt",
    )
    role = unique("trainer")
    bao_server.bao(
        "write",
        f"auth/{mount}/role/{role}",
        "bound_service_account_names=trainer",
        "bound_service_account_namespaces=ml",
        f"token_policies={write_policy(bao_server, vault_path)}",
        "token_ttl=60s",
    )
    root_manager(bao_server, vault_path).set_secret("model_key", "k-1")
    signer = new_rsa_key()
    first, second = service_account_jwt(signer), service_account_jwt(signer)
    token_file = tmp_path / "sa-token"
    token_file.write_text(first)
    manager = manager_with(
        bao_server, vault_path, KubernetesAuth(role, jwt_path=str(token_file), mount=mount)
    )

    assert manager.get_secret("model_key") == "k-1"
    assert fake.reviewed == [first]
    assert manager.status().auth_method == "kubernetes"

    # Kubernetes rotated the service-account token, and Vault revoked ours.
    token_file.write_text(second)
    bao_server.bao("token", "revoke", current_token(manager))

    assert manager.get_secret("model_key") == "k-1"
    assert fake.reviewed == [first, second]
    assert manager.status().logins == 2
    assert not fake.server.errors


# -- namespaces ------------------------------------------------------------------------


def test_namespace_isolates_secrets(bao_server: DevServer, vault_path: str, namespace: str) -> None:
    inside = root_manager(bao_server, vault_path, vault_namespace=namespace)
    outside = root_manager(bao_server, vault_path)

    inside.set_secret("inner", "in")
    outside.set_secret("outer", "out")

    assert inside.get_secret("inner") == "in"
    assert outside.get_secret("outer") == "out"
    with pytest.raises(SecretNotFoundError):
        outside.get_secret("inner")
    with pytest.raises(SecretNotFoundError):
        inside.get_secret("outer")
    assert inside.status().namespace == namespace
    assert outside.status().namespace is None


def test_namespace_from_vault_namespace_variable(
    bao_server: DevServer, vault_path: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_manager(bao_server, vault_path, vault_namespace=namespace).set_secret("inner", "in")
    monkeypatch.setenv("VAULT_NAMESPACE", namespace)

    manager = root_manager(bao_server, vault_path)

    assert manager.get_secret("inner") == "in"
    assert manager.status().namespace == namespace


def test_login_goes_to_the_namespace(
    bao_server: DevServer, vault_path: str, namespace: str
) -> None:
    mount = enable_auth(bao_server, "userpass", namespace=namespace)
    policy = write_policy(bao_server, vault_path, namespace=namespace)
    username, password = make_user(bao_server, mount, policy, namespace=namespace)
    auth = UserpassAuth(username, password, mount=mount)

    inside = manager_with(bao_server, vault_path, auth, vault_namespace=namespace)
    assert_reads_and_writes(inside)
    status = inside.status()
    assert status.namespace == namespace
    assert status.auth_method == "userpass"
    assert status.logins == 1

    outside = manager_with(bao_server, vault_path, auth, use_env_fallback=False)
    with pytest.raises(AuthenticationError) as caught:
        outside.get_secret("probe")
    assert_hidden(caught.value, password)


# -- permission denied -----------------------------------------------------------------


@pytest.mark.parametrize("grants", ["another folder", "nothing"])
def test_permission_denied_is_not_hidden_by_env_fallback(
    bao_server: DevServer, vault_path: str, monkeypatch: pytest.MonkeyPatch, grants: str
) -> None:
    if grants == "nothing":
        policy = "default"  # may not even detect the KV version
    else:
        policy = write_policy(bao_server, vault_path, data_path=unique("elsewhere"))
    mount = enable_auth(bao_server, "approle")
    role_id, secret_id = make_approle(bao_server, mount, policy)
    root_manager(bao_server, vault_path).set_secret("api_key", "from-vault")
    env_value = "env-" + uuid.uuid4().hex
    monkeypatch.setenv("SECUREML_API_KEY", env_value)
    manager = manager_with(bao_server, vault_path, AppRoleAuth(role_id, secret_id, mount=mount))

    with pytest.raises(PermissionDeniedError) as caught:
        manager.get_secret("api_key")
    assert_hidden(caught.value, env_value, "from-vault", secret_id)

    with pytest.raises(PermissionDeniedError):
        manager.set_secret("api_key", "overwrite")
    assert root_manager(bao_server, vault_path).get_secret("api_key") == "from-vault"
