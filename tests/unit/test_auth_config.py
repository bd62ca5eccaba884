"""Auth objects and the production settings (TLS, timeouts, retries) from arguments and env.

Nothing here talks to a server: construction never touches the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from secureml.key_management import (
    AppRoleAuth,
    ConfigurationError,
    JWTAuth,
    KeyManager,
    KubernetesAuth,
    SecurityWarning,
    TokenAuth,
    UserpassAuth,
    VaultAuth,
)
from secureml.key_management._config import VaultSettings, resolve_vault_settings

SECRET = "s3cr3t-credential-value"
URL = "https://vault.example.com:8200"


def resolve(**env: str) -> VaultSettings:
    settings = resolve_vault_settings(url=URL, token=None, environ={"VAULT_TOKEN": "t", **env})
    assert settings is not None
    return settings


# -- auth objects ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        TokenAuth(SECRET),
        AppRoleAuth("role-" + SECRET, SECRET),
        UserpassAuth("etl", SECRET),
        JWTAuth("trainer", jwt=SECRET),
        JWTAuth("trainer", jwt_path="/var/run/secrets/tokens/vault"),
        KubernetesAuth("trainer"),
    ],
)
def test_auth_objects_hide_credentials_and_follow_the_protocol(auth: VaultAuth) -> None:
    assert isinstance(auth, VaultAuth)
    assert SECRET not in repr(auth)
    assert auth.method in {"token", "approle", "userpass", "jwt", "kubernetes"}
    assert auth.can_login_again is (auth.method != "token")


def test_auth_defaults() -> None:
    assert "mount='approle'" in repr(AppRoleAuth("r", "s"))
    assert "mount='userpass'" in repr(UserpassAuth("u", "p"))
    assert "mount='jwt'" in repr(JWTAuth("r", jwt="x"))
    k8s = repr(KubernetesAuth("r"))
    assert "/var/run/secrets/kubernetes.io/serviceaccount/token" in k8s
    assert "mount='kubernetes'" in k8s


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: AppRoleAuth("", "s"), ConfigurationError),
        (lambda: AppRoleAuth("r", 5), TypeError),
        (lambda: UserpassAuth("u", "p", mount="../x"), ValueError),
        (lambda: JWTAuth("r"), ConfigurationError),
        (lambda: JWTAuth("r", jwt="a", jwt_path="/b"), ConfigurationError),
        (lambda: TokenAuth("two words"), ConfigurationError),
    ],
)
def test_bad_auth_arguments(build: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()  # type: ignore[operator]


def test_vault_token_and_vault_auth_are_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        KeyManager(vault_url=URL, vault_token="t", vault_auth=AppRoleAuth("r", "s"))


def test_vault_auth_must_be_an_auth_method() -> None:
    with pytest.raises(TypeError, match="auth method"):
        KeyManager(vault_url=URL, vault_auth="s.token")  # type: ignore[arg-type]


def test_vault_auth_without_url() -> None:
    with pytest.raises(ConfigurationError, match="no Vault URL"):
        KeyManager(vault_auth=AppRoleAuth("r", "s"))


# -- AppRole from the environment ---------------------------------------------------


def test_approle_from_env_wins_over_an_env_token() -> None:
    settings = resolve(SECUREML_VAULT_ROLE_ID="role", SECUREML_VAULT_SECRET_ID=SECRET)
    assert isinstance(settings.auth, AppRoleAuth)
    assert SECRET not in repr(settings)


def test_an_explicit_token_wins_over_approle_env() -> None:
    settings = resolve_vault_settings(
        url=URL,
        token="explicit",
        environ={"SECUREML_VAULT_ROLE_ID": "r", "SECUREML_VAULT_SECRET_ID": "s"},
    )
    assert settings is not None
    assert isinstance(settings.auth, TokenAuth)


@pytest.mark.parametrize("present", ["SECUREML_VAULT_ROLE_ID", "SECUREML_VAULT_SECRET_ID"])
def test_half_an_approle_is_an_error(present: str) -> None:
    with pytest.raises(ConfigurationError, match="both"):
        resolve(**{present: "x"})


# -- timeouts and retries ---------------------------------------------------------------


def test_defaults() -> None:
    settings = resolve()
    assert (settings.timeout, settings.retries, settings.verify) == (5.0, 2, True)


@pytest.mark.parametrize(
    ("value", "seconds"), [("10", 10.0), ("2.5", 2.5), ("30s", 30.0), ("500ms", 0.5), ("1m", 60)]
)
def test_timeout_from_vault_client_timeout(value: str, seconds: float) -> None:
    assert resolve(VAULT_CLIENT_TIMEOUT=value).timeout == seconds


def test_bao_variables_win_over_vault_ones() -> None:
    settings = resolve(
        VAULT_CLIENT_TIMEOUT="9",
        BAO_CLIENT_TIMEOUT="3",
        VAULT_MAX_RETRIES="5",
        BAO_MAX_RETRIES="1",
        VAULT_NAMESPACE="vault-ns",
        BAO_NAMESPACE="bao-ns",
    )
    assert (settings.timeout, settings.retries, settings.namespace) == (3.0, 1, "bao-ns")


def test_arguments_win_over_the_environment() -> None:
    settings = resolve_vault_settings(
        url=URL,
        token="t",
        timeout=1.5,
        retries=0,
        environ={"VAULT_CLIENT_TIMEOUT": "9", "VAULT_MAX_RETRIES": "5"},
    )
    assert settings is not None
    assert (settings.timeout, settings.retries) == (1.5, 0)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"VAULT_CLIENT_TIMEOUT": "soon"}, "VAULT_CLIENT_TIMEOUT"),
        ({"VAULT_CLIENT_TIMEOUT": "0"}, "VAULT_CLIENT_TIMEOUT"),
        ({"VAULT_MAX_RETRIES": "-1"}, "VAULT_MAX_RETRIES"),
        ({"VAULT_MAX_RETRIES": "99"}, "VAULT_MAX_RETRIES"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve(**env)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, TypeError),
        ({"verify": "no"}, TypeError),
        ({"vault_namespace": "team\nX-Evil: 1"}, ConfigurationError),
        ({"vault_namespace": "two words"}, ConfigurationError),
        ({"vault_namespace": 7}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        KeyManager(vault_url=URL, vault_token="t", **kwargs)  # type: ignore[arg-type]


# -- TLS ---------------------------------------------------------------------------------


def test_ca_from_capath_when_no_cacert(tmp_path: Path) -> None:
    capath = tmp_path / "cas"
    capath.mkdir()
    assert resolve(VAULT_CAPATH=str(capath)).ca_cert == str(capath)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert resolve(VAULT_CAPATH=str(capath), VAULT_CACERT=str(bundle)).ca_cert == str(bundle)


def test_client_certificate_settings(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    settings = resolve(VAULT_CLIENT_CERT=str(cert), VAULT_CLIENT_KEY=str(key))
    assert (settings.client_cert, settings.client_key) == (str(cert), str(key))
    with pytest.raises(ConfigurationError, match="needs vault_client_cert"):
        KeyManager(vault_url=URL, vault_token="t", vault_client_key=str(key))
    with pytest.raises(ConfigurationError, match="does not exist"):
        KeyManager(vault_url=URL, vault_token="t", vault_client_cert=str(tmp_path / "no"))


def test_vault_skip_verify_is_ignored() -> None:
    assert resolve(VAULT_SKIP_VERIFY="true", BAO_SKIP_VERIFY="1").verify is True


def test_verify_false_warns_every_time_it_is_asked_for() -> None:
    for _ in range(2):
        with pytest.warns(SecurityWarning, match="verify=False"):
            KeyManager(vault_url=URL, vault_token="t", verify=False)


def test_plain_http_beyond_loopback_warns_once() -> None:
    url = "http://vault.plain-http-warning.example:8200"
    with pytest.warns(SecurityWarning, match="plain http"):
        KeyManager(vault_url=url, vault_token="t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KeyManager(vault_url=url, vault_token="t")
        KeyManager(vault_url="http://127.0.0.1:8200", vault_token="t")
        KeyManager(vault_url="http://localhost:8200", vault_token="t")
        KeyManager(vault_url="http://[::1]:8200", vault_token="t")


# -- which requests may be replayed ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "replayable"),
    [
        ("GET", "/v1/secret/data/x", None, True),
        ("LIST", "/v1/secret/metadata/", None, True),
        ("POST", "/v1/auth/approle/login", {"role_id": "r"}, False),
        ("POST", "/v1/auth/jwt/login", {"role": "r"}, False),
        ("POST", "/v1/auth/token/lookup-self", {}, True),
        ("POST", "/v1/auth/token/renew-self", {}, True),
        ("POST", "/v1/secret/data/x", {"data": {"value": "v"}, "options": {"cas": 3}}, True),
        ("POST", "/v1/secret/data/x", {"data": {"value": "v"}}, False),
        ("PUT", "/v1/secret/x", {"value": "v"}, False),
        ("DELETE", "/v1/secret/data/x", None, False),
        ("POST", "/v1/secret/data/login", {"data": {}}, False),
    ],
)
def test_only_harmless_requests_are_replayed(
    method: str, url: str, body: object, replayable: bool
) -> None:
    from secureml.key_management.backends._vault_transport import _replayable

    kwargs = {} if body is None else {"json": body}
    assert _replayable(method, url, kwargs) is replayable
