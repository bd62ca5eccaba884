"""KeyManagerSpec and AuthSpec without a server: credentials by reference only.

Building a manager does no I/O, so every manager here points at a fake address
(``http://127.0.0.1:1``). For every auth method: ``km.spec()`` works, its pickle
(standard and cloudpickle) and its repr hold no credential, and it round-trips equal and
hashable. Then the errors (each one line, naming the fix and never a value, without
credential-holding frame locals), ``from_env``, and ``spec.manager()``'s one manager per
process and spec (threads, fork).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest

import secureml.key_management._spec as spec_module
from secureml.key_management import (
    AppRoleAuth,
    AuthenticationError,
    AuthSpec,
    ConfigurationError,
    JWTAuth,
    KeyManager,
    KeyManagerSpec,
    KubernetesAuth,
    SecurityWarning,
    TokenAuth,
    UserpassAuth,
)
from secureml.key_management._auth import Login
from secureml.key_management.backends._vault_session import TokenSession
from secureml.key_management.backends.vault import VaultBackend
from tests.support.frames import rendered_locals
from tests.support.memory_backend import MemoryVersions

URL = "http://127.0.0.1:1"
ROLE_VAR, SECRET_VAR = "SECUREML_VAULT_ROLE_ID", "SECUREML_VAULT_SECRET_ID"


def secret(prefix: str) -> str:
    """A credential no other test and no variable name could contain by chance."""
    return f"{prefix}-{uuid.uuid4().hex}"


def loads(blob: bytes) -> Any:
    """Unpickle what this test pickled itself."""
    return pickle.loads(blob)  # noqa: S301 - the test's own bytes


def assert_carries_none(spec: KeyManagerSpec, *secrets: str) -> None:
    """Neither pickle of ``spec`` nor its repr holds any of ``secrets``."""
    blobs = {"pickle": pickle.dumps(spec), "cloudpickle": cloudpickle.dumps(spec)}
    blobs.update({f"pickle-{p}": pickle.dumps(spec, protocol=p) for p in (0, 2)})
    for label, blob in blobs.items():
        for each in secrets:
            assert each.encode() not in blob, f"{label} carries a credential"
            assert each.encode("utf-16-le") not in blob, f"{label} carries a credential"
    for text in (repr(spec), str(spec), repr(spec.auth)):
        for each in secrets:
            assert each not in text


def assert_clean_error(error: BaseException, *secrets: str) -> None:
    """One line, no secret in text, repr or frame locals, no chained cause."""
    text = str(error)
    assert "\n" not in text
    for each in secrets:
        assert each not in text
        assert each not in repr(error)
        assert all(each not in value for _, _, value in rendered_locals(error))
    assert error.__cause__ is None


@pytest.fixture(autouse=True)
def _fresh_managers() -> Iterator[None]:
    spec_module._managers.clear()
    yield
    spec_module._managers.clear()


# -- every auth method: spec() works, and carries no credential --------------------------


@dataclasses.dataclass
class Case:
    km: KeyManager
    secrets: tuple[str, ...]
    expected: AuthSpec
    worker_env: dict[str, str]
    spec_kwargs: dict[str, str] = dataclasses.field(default_factory=dict)


def _token_env(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    tok = secret("hvs.tok")
    mp.setenv("SECUREML_VAULT_TOKEN", tok)
    return Case(
        KeyManager(vault_url=URL),
        (tok,),
        AuthSpec.token(env="SECUREML_VAULT_TOKEN"),
        {"SECUREML_VAULT_TOKEN": tok},
    )


def _token_value_named(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    tok = secret("hvs.tok")
    return Case(
        KeyManager(vault_url=URL, vault_token=tok),
        (tok,),
        AuthSpec.token(env="WORKER_TOKEN"),
        {"WORKER_TOKEN": tok},
        {"credential_env": "WORKER_TOKEN"},
    )


def _token_matched_vault_token(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    tok = secret("hvs.tok")
    mp.setenv("VAULT_TOKEN", tok)
    mp.setenv("BAO_TOKEN", secret("hvs.other"))  # checked first, but not the same token
    return Case(
        KeyManager(vault_url=URL, vault_token=tok),
        (tok,),
        AuthSpec.token(env="VAULT_TOKEN"),
        {"VAULT_TOKEN": tok},
    )


def _token_file(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    tok = secret("hvs.tok")
    path = tmp / "agent-sink"
    path.write_text(tok + "\n")
    return Case(
        KeyManager(vault_url=URL, vault_auth=AuthSpec.token(file=str(path)).build()),
        (tok,),
        AuthSpec.token(file=str(path)),
        {},
    )


def _token_read_from_file_by_caller(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    tok = secret("hvs.tok")
    path = tmp / "token"
    path.write_text(tok + "\n")
    return Case(
        KeyManager(vault_url=URL, vault_token=path.read_text().strip()),
        (tok,),
        AuthSpec.token(file=str(path)),
        {},
        {"credential_file": str(path)},
    )


def _approle_env(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    sid = secret("sid")
    mp.setenv(ROLE_VAR, "role-1234")
    mp.setenv(SECRET_VAR, sid)
    mp.setenv("VAULT_TOKEN", secret("hvs.ignored"))  # AppRole wins, as in _config
    return Case(
        KeyManager(vault_url=URL),
        (sid, os.environ["VAULT_TOKEN"]),
        AuthSpec.approle(role_id_env=ROLE_VAR, secret_id_env=SECRET_VAR),
        {ROLE_VAR: "role-1234", SECRET_VAR: sid},
    )


def _approle_value_named(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    sid = secret("sid")
    return Case(
        KeyManager(vault_url=URL, vault_auth=AppRoleAuth("role-1234", sid, mount="ar")),
        (sid,),
        AuthSpec.approle("role-1234", secret_id_env="WORKER_SID", mount="ar"),
        {"WORKER_SID": sid},
        {"credential_env": "WORKER_SID"},
    )


def _userpass_named(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    pw = secret("pw")
    return Case(
        KeyManager(vault_url=URL, vault_auth=UserpassAuth("etl-bot", pw, mount="up")),
        (pw,),
        AuthSpec.userpass("etl-bot", password_env="ETL_PASSWORD", mount="up"),
        {"ETL_PASSWORD": pw},
        {"credential_env": "ETL_PASSWORD"},
    )


def _jwt_path(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    jwt = secret("eyJ.jwt")
    path = tmp / "jwt"
    path.write_text(jwt)
    return Case(
        KeyManager(vault_url=URL, vault_auth=JWTAuth("trainer", jwt_path=str(path), mount="oidc")),
        (jwt,),
        AuthSpec.jwt("trainer", jwt_path=str(path), mount="oidc"),
        {},
    )


def _jwt_value_env(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    jwt = secret("eyJ.jwt")
    return Case(
        KeyManager(vault_url=URL, vault_auth=JWTAuth("trainer", jwt=jwt)),
        (jwt,),
        AuthSpec.jwt("trainer", jwt_env="CI_JWT"),
        {"CI_JWT": jwt},
        {"credential_env": "CI_JWT"},
    )


def _jwt_value_file(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    jwt = secret("eyJ.jwt")
    path = tmp / "ci-jwt"
    path.write_text(jwt + "\n")
    return Case(
        KeyManager(vault_url=URL, vault_auth=JWTAuth("trainer", jwt=jwt)),
        (jwt,),
        AuthSpec.jwt("trainer", jwt_path=str(path)),
        {},
        {"credential_file": str(path)},
    )


def _kubernetes(mp: pytest.MonkeyPatch, tmp: Path) -> Case:
    jwt = secret("eyJ.sa")
    path = tmp / "sa-token"
    path.write_text(jwt)
    return Case(
        KeyManager(vault_url=URL, vault_auth=KubernetesAuth("pipeline", jwt_path=str(path))),
        (jwt,),
        AuthSpec.kubernetes("pipeline", jwt_path=str(path)),
        {},
    )


CASES: dict[str, Callable[[pytest.MonkeyPatch, Path], Case]] = {
    "token-env": _token_env,
    "token-value+credential_env": _token_value_named,
    "token-matches-VAULT_TOKEN": _token_matched_vault_token,
    "token-file": _token_file,
    "token-read-from-file+credential_file": _token_read_from_file_by_caller,
    "approle-env": _approle_env,
    "approle-value+credential_env": _approle_value_named,
    "userpass+credential_env": _userpass_named,
    "jwt-path": _jwt_path,
    "jwt-value+credential_env": _jwt_value_env,
    "jwt-value+credential_file": _jwt_value_file,
    "kubernetes": _kubernetes,
}

AUTH_TYPES = {
    "token": TokenAuth,
    "approle": AppRoleAuth,
    "userpass": UserpassAuth,
    "jwt": JWTAuth,
    "kubernetes": KubernetesAuth,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Case:
    return CASES[request.param](monkeypatch, tmp_path)


def test_spec_refers_to_the_credential(case: Case) -> None:
    spec = case.km.spec(**case.spec_kwargs)  # type: ignore[arg-type]
    assert spec.auth == case.expected
    assert spec.vault_url == (URL,)


def test_spec_carries_no_credential(case: Case) -> None:
    spec = case.km.spec(**case.spec_kwargs)  # type: ignore[arg-type]
    assert_carries_none(spec, *case.secrets)
    for auth in (case.km._core.settings.vault.auth,):  # type: ignore[union-attr]
        for each in case.secrets:
            assert each not in repr(auth)


def test_spec_round_trips_equal_and_hashable(case: Case) -> None:
    spec = case.km.spec(**case.spec_kwargs)  # type: ignore[arg-type]
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = loads(dumps(spec))
        assert back == spec
        assert hash(back) == hash(spec)
        assert {spec: 1}[back] == 1


def test_spec_builds_the_same_auth_in_a_worker(case: Case) -> None:
    spec = loads(pickle.dumps(case.km.spec(**case.spec_kwargs)))  # type: ignore[arg-type]
    assert spec.auth is not None
    auth = spec.auth.build(case.worker_env)
    assert isinstance(auth, AUTH_TYPES[spec.auth.method])
    original = case.km._core.settings.vault.auth  # type: ignore[union-attr]
    assert isinstance(auth, type(original))  # a token file: one that reads it again
    for name in ("_token", "_role_id", "_secret_id", "_username", "_password", "_role"):
        assert getattr(auth, name, None) == getattr(original, name, None)
    assert getattr(auth, "_mount", None) == getattr(original, "_mount", None)
    # A manager built from the spec gives the same reference again.
    again = KeyManager(vault_url=URL, vault_auth=auth).spec()
    assert again.auth == spec.auth


# -- spec() errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        TokenAuth,
        lambda s: AppRoleAuth("role-1234", s),
        lambda s: UserpassAuth("bob", s),
        lambda s: JWTAuth("trainer", jwt=s),
    ],
    ids=["token", "approle", "userpass", "jwt"],
)
def test_credential_passed_as_value_needs_a_reference(make: Callable[[str], Any]) -> None:
    value = secret("cred")
    km = KeyManager(vault_url=URL, vault_auth=make(value))
    with pytest.raises(ConfigurationError, match="credential_env=") as info:
        km.spec()
    assert_clean_error(info.value, value)


def test_credential_env_holding_another_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    mine, other = secret("hvs.mine"), secret("hvs.other")
    monkeypatch.setenv("WORKER_TOKEN", other)
    km = KeyManager(vault_url=URL, vault_token=mine)
    with pytest.raises(ConfigurationError, match="WORKER_TOKEN holds a different") as info:
        km.spec(credential_env="WORKER_TOKEN")
    assert_clean_error(info.value, mine, other)
    # Unset here: the worker's business, accepted.
    monkeypatch.delenv("WORKER_TOKEN")
    assert km.spec(credential_env="WORKER_TOKEN").auth == AuthSpec.token(env="WORKER_TOKEN")


def test_credential_file_holding_another_credential(tmp_path: Path) -> None:
    mine, other = secret("sid.mine"), secret("sid.other")
    path = tmp_path / "jwt"
    path.write_text(other)
    km = KeyManager(vault_url=URL, vault_auth=JWTAuth("r", jwt=mine))
    with pytest.raises(ConfigurationError, match="holds a different credential") as info:
        km.spec(credential_file=str(path))
    assert_clean_error(info.value, mine, other)


@pytest.mark.parametrize("where", ["credential_env", "credential_file"])
def test_the_credential_itself_given_as_its_reference(where: str) -> None:
    # km.spec(credential_env=os.environ["VAULT_TOKEN"]): a mistake that would put the
    # token in the spec (as a "file") or in the error message (as a bad name).
    for tok in (secret("hvs.tok"), "root", "a" * 40):
        km = KeyManager(vault_url=URL, vault_token=tok)
        with pytest.raises(ConfigurationError, match="never the credential itself") as info:
            km.spec(**{where: tok})  # type: ignore[arg-type]
        assert_clean_error(info.value, tok)


def test_credential_env_that_is_no_variable_name_is_not_quoted() -> None:
    km = KeyManager(vault_url=URL, vault_token=secret("hvs.tok"))
    for name in ("MY-VAR", "A=B", "A\x00B", "1ABC", "", "x y" * 10_000):
        with pytest.raises(ValueError, match="not an environment variable name") as info:
            km.spec(credential_env=name)
        if name:
            assert name not in str(info.value)
    with pytest.raises(TypeError):
        km.spec(credential_env=b"VAULT_TOKEN")  # type: ignore[arg-type]


def test_credential_file_must_be_a_text_path() -> None:
    km = KeyManager(vault_url=URL, vault_token=secret("hvs.tok"))
    for path in ("", "a\x00b"):
        with pytest.raises(ValueError, match="non-empty text path"):
            km.spec(credential_file=path)


def test_both_references_refused() -> None:
    km = KeyManager(vault_url=URL, vault_token=secret("hvs.tok"))
    with pytest.raises(ConfigurationError, match="not both"):
        km.spec(credential_env="A", credential_file="/b")


def test_a_file_login_takes_no_reference(tmp_path: Path) -> None:
    path = tmp_path / "jwt"
    path.write_text("x")
    for auth in (JWTAuth("r", jwt_path=str(path)), KubernetesAuth("r", jwt_path=str(path))):
        km = KeyManager(vault_url=URL, vault_auth=auth)
        with pytest.raises(ConfigurationError, match="already reads its token from a file"):
            km.spec(credential_env="X")


def test_approle_and_userpass_refer_by_variable_only() -> None:
    for auth in (AppRoleAuth("r", secret("sid")), UserpassAuth("u", secret("pw"))):
        km = KeyManager(vault_url=URL, vault_auth=auth)
        with pytest.raises(ConfigurationError, match="use credential_env="):
            km.spec(credential_file="/run/secret")


def test_approle_role_id_found_in_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROLE_VAR, "role-1234")
    km = KeyManager(vault_url=URL, vault_auth=AppRoleAuth("role-1234", secret("sid")))
    spec = km.spec(credential_env="WORKER_SID")
    assert spec.auth == AuthSpec.approle(role_id_env=ROLE_VAR, secret_id_env="WORKER_SID")
    assert spec.auth is not None
    assert spec.auth.role_id is None


def test_custom_backend_has_no_spec() -> None:
    km = KeyManager(backend=MemoryVersions())
    with pytest.raises(ConfigurationError, match="custom backend=") as info:
        km.spec()
    assert "\n" not in str(info.value)


def test_custom_auth_method_has_no_spec() -> None:
    class Custom:
        method = "custom"
        can_login_again = True

        def login(self, client: Any) -> Login:
            return Login(token="t", ttl=None, renewable=False)

    km = KeyManager(vault_url=URL, vault_auth=Custom())
    with pytest.raises(TypeError, match="custom auth method \\(Custom\\)"):
        km.spec()


def test_manager_without_vault() -> None:
    km = KeyManager(vault_path="ml", cache_ttl=5)
    spec = km.spec()
    assert spec.vault_url is None
    assert spec.auth is None
    assert (spec.vault_path, spec.cache_ttl) == ("ml", 5.0)
    with pytest.raises(ConfigurationError, match="no Vault"):
        km.spec(credential_env="VAULT_TOKEN")


def test_keymanager_pickling_points_to_spec() -> None:
    km = KeyManager(vault_url=URL, vault_token=secret("hvs.tok"))
    for dumps in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(TypeError, match=r"km\.spec\(\)"):
            dumps(km)


# -- AuthSpec.build errors ---------------------------------------------------------------


def test_build_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    other = secret("hvs.other")
    monkeypatch.setenv("SOME_OTHER_TOKEN", other)
    cases = [
        (AuthSpec.token(env="WORKER_TOKEN"), "WORKER_TOKEN"),
        (AuthSpec.approle("r", secret_id_env="WORKER_SID"), "WORKER_SID"),
        (AuthSpec.approle(role_id_env="WORKER_ROLE"), "WORKER_ROLE"),
        (AuthSpec.userpass("u", password_env="WORKER_PW"), "WORKER_PW"),
        (AuthSpec.jwt("r", jwt_env="WORKER_JWT"), "WORKER_JWT"),
    ]
    for auth, name in cases:
        for env in ({}, {name: "  "}):
            with pytest.raises(ConfigurationError, match=f"environment variable {name} ") as info:
                auth.build(env)
            assert_clean_error(info.value, other)
        with pytest.raises(ConfigurationError, match=name) as info:
            auth.build()  # os.environ: holds SOME_OTHER_TOKEN, which must not show
        assert_clean_error(info.value, other)


def test_build_names_the_missing_or_empty_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    for auth in (
        AuthSpec.token(file=missing),
        AuthSpec.jwt("r", jwt_path=missing),
        AuthSpec.kubernetes("r", jwt_path=missing),
    ):
        with pytest.raises(ConfigurationError, match="credential file") as info:
            auth.build({})
        assert missing in str(info.value)
        assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty") as info:
        AuthSpec.token(file=str(empty)).build({})
    assert str(empty) in str(info.value)
    with pytest.raises(ConfigurationError, match="credential file"):
        AuthSpec.token(file=str(tmp_path)).build({})  # a directory is no file
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigurationError, match="credential file"):
        AuthSpec.token(file=str(fifo)).build({})  # would block: never opened
    big = tmp_path / "big"
    big.write_bytes(b"x" * (70 * 1024))
    with pytest.raises(ConfigurationError, match="larger than any credential"):
        AuthSpec.token(file=str(big)).build({})
    assert AuthSpec.token(file="relative/sink").file == os.path.abspath("relative/sink")


def test_an_unreadable_token_file_at_a_later_login_is_an_authentication_error(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "sink"
    sink.write_text("hvs.first\n")
    auth = AuthSpec.token(file=str(sink)).build()
    sink.write_text("")  # being rewritten: the session keeps its token while valid
    with pytest.raises(AuthenticationError, match="cannot log in again"):
        auth.login(SimpleNamespace())  # type: ignore[arg-type]


def test_a_spec_of_a_manager_without_tls_verification_warns() -> None:
    with pytest.warns(SecurityWarning):
        km = KeyManager(vault_url="https://127.0.0.1:1", vault_token="hvs.t", verify=False)
    with pytest.warns(SecurityWarning, match="verify=False to every worker"):
        spec = km.spec(credential_env="WORKER_TOKEN")
    assert spec.verify is False


def test_build_error_frames_hold_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    # The secret id is here, the role id is not: the error must not carry os.environ
    # (with the secret id) in a frame's locals.
    sid = secret("sid")
    monkeypatch.setenv(SECRET_VAR, sid)
    auth = AuthSpec.approle(role_id_env=ROLE_VAR)
    with pytest.raises(ConfigurationError, match=ROLE_VAR) as info:
        auth.build()
    assert_clean_error(info.value, sid)
    spec = KeyManagerSpec(vault_url=URL, auth=auth)
    for call in (spec.manager, spec.new_manager):
        with pytest.raises(ConfigurationError, match=ROLE_VAR) as info:
            call()
        assert_clean_error(info.value, sid)


def test_spec_error_frames_hold_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    mine, other = secret("hvs.mine"), secret("hvs.other")
    monkeypatch.setenv("WORKER_TOKEN", other)
    km = KeyManager(vault_url=URL, vault_token=mine)
    for kwargs in ({"credential_env": "WORKER_TOKEN"}, {}, {"credential_env": mine}):
        with pytest.raises(ConfigurationError) as info:
            km.spec(**kwargs)
        assert_clean_error(info.value, mine, other)


def test_build_marks_its_reference() -> None:
    auth = AuthSpec.token(env="T")
    built = auth.build({"T": "hvs.x"})
    assert built._reference == auth


# -- AuthSpec validation -----------------------------------------------------------------


def test_authspec_validation() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of env= or file="):
        AuthSpec.token()
    with pytest.raises(ConfigurationError, match="exactly one of env= or file="):
        AuthSpec.token(env="A", file="/b")
    with pytest.raises(ValueError, match="auth method must be one of"):
        AuthSpec("ldap", env="X")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="exactly one of role_id or role_id_env"):
        AuthSpec.approle("r", role_id_env="R")
    with pytest.raises(ConfigurationError, match="exactly one of role_id or role_id_env"):
        AuthSpec.approle()
    with pytest.raises(ValueError, match="auth mount"):
        AuthSpec.approle("r", mount="../x")
    with pytest.raises(TypeError, match="role"):
        AuthSpec.jwt("  ", jwt_env="J")
    with pytest.raises(ValueError, match="non-empty text path"):
        AuthSpec.token(file="a\x00b")


def test_authspec_direct_construction_needs_what_build_needs() -> None:
    # Not built into JWTAuth(role="None") or UserpassAuth("None", ...).
    with pytest.raises(TypeError, match="role"):
        AuthSpec("jwt", file="/j")
    with pytest.raises(TypeError, match="role"):
        AuthSpec("kubernetes", file="/j")
    with pytest.raises(ConfigurationError, match="file="):
        AuthSpec("kubernetes", role="r", env="J")
    with pytest.raises(TypeError, match="username"):
        AuthSpec("userpass", env="P")
    with pytest.raises(ConfigurationError, match="role_id"):
        AuthSpec("approle", env="S")
    with pytest.raises(ValueError, match="role_id_env"):
        AuthSpec("approle", role_id_env="A-B", env="S")


@pytest.mark.parametrize("field", ["env", "password_env"])
def test_authspec_bad_variable_name_is_not_quoted(field: str) -> None:
    pw = "p@ss-" + uuid.uuid4().hex  # a password passed where its variable belongs
    make = (
        (lambda: AuthSpec.token(env=pw))
        if field == "env"
        else (lambda: AuthSpec.userpass("u", password_env=pw))
    )
    with pytest.raises(ValueError, match="not an environment variable name") as info:
        make()
    assert_clean_error(info.value, pw)


def test_authspec_repr_hides_the_role_id() -> None:
    auth = AuthSpec.approle("role-1234", secret_id_env="S")
    assert "role-1234" not in repr(auth)
    assert "secret_id" not in repr(auth) or "S" in repr(auth)


# -- KeyManagerSpec validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vault_url": "ftp://vault:8200"}, ConfigurationError, "http"),
        ({"vault_url": ""}, ConfigurationError, "empty"),
        ({"vault_url": 8200}, TypeError, "vault_url"),
        ({"vault_mount": "../kv"}, ValueError, "vault_mount"),
        ({"vault_mount": ""}, ValueError, "vault_mount"),
        ({"vault_path": "a//b"}, ValueError, "vault_path"),
        ({"auth": "VAULT_TOKEN"}, TypeError, "AuthSpec"),
        ({"auth": TokenAuth("hvs.tok")}, TypeError, "never carries a credential"),
        ({"login_jitter": -1}, ValueError, "login_jitter"),
        ({"login_jitter": True}, TypeError, "login_jitter"),
        ({"login_jitter": "1"}, TypeError, "login_jitter"),
        ({"login_jitter": float("nan")}, ValueError, "login_jitter"),
        ({"login_jitter": float("inf")}, ValueError, "login_jitter"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"retries": 99}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"vault_kv_version": 3}, ValueError, "vault_kv_version"),
        ({"audit_hook": "log"}, TypeError, "audit_hook"),
        ({"declared_keys": "master_key"}, TypeError, "declared_keys"),
        ({"cache_size": 0}, ValueError, "cache_size"),
        ({"verify": "yes"}, TypeError, "verify"),
        ({"vault_namespace": 1}, TypeError, "vault_namespace"),
    ],
)
def test_spec_validation(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        KeyManagerSpec(**kwargs)
    with pytest.raises(error, match=match):
        KeyManagerSpec().replace(**kwargs)


def test_url_with_credentials_is_refused_unquoted() -> None:
    with pytest.raises(ConfigurationError) as info:
        KeyManagerSpec(vault_url="https://user:hunter2pw@vault:8200")
    assert "hunter2pw" not in str(info.value)


def test_spec_normalises_and_freezes() -> None:
    spec = KeyManagerSpec(
        vault_url=f"{URL}/, http://127.0.0.1:2",
        declared_keys=["a", "b", "a"],
        cache_ttl=5,
        timeout=3,
    )
    assert spec.vault_url == (URL, "http://127.0.0.1:2")
    assert spec.declared_keys == frozenset({"a", "b"})
    assert isinstance(spec.cache_ttl, float)
    assert isinstance(spec.timeout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cache_ttl = 1  # type: ignore[misc]
    assert hash(spec) == hash(loads(pickle.dumps(spec)))


def test_replace_checks_and_copies() -> None:
    spec = KeyManagerSpec(vault_url=URL, auth=AuthSpec.token(env="T"))
    longer = spec.replace(cache_ttl=300)
    assert (longer.cache_ttl, spec.cache_ttl) == (300.0, 60.0)
    assert longer.auth == spec.auth
    assert longer != spec
    with pytest.raises(TypeError):
        spec.replace(no_such_setting=1)


# -- from_env ----------------------------------------------------------------------------


def test_from_env_prefers_approle() -> None:
    env = {
        "VAULT_ADDR": URL,
        "VAULT_TOKEN": "hvs.t",
        ROLE_VAR: "r",
        SECRET_VAR: "s",
    }
    spec = KeyManagerSpec.from_env(env)
    assert spec.auth == AuthSpec.approle(role_id_env=ROLE_VAR, secret_id_env=SECRET_VAR)
    with pytest.raises(ConfigurationError, match="only one is set"):
        KeyManagerSpec.from_env({"VAULT_ADDR": URL, ROLE_VAR: "r"})


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (("SECUREML_VAULT_TOKEN", "BAO_TOKEN", "VAULT_TOKEN"), "SECUREML_VAULT_TOKEN"),
        (("BAO_TOKEN", "VAULT_TOKEN"), "BAO_TOKEN"),
        (("VAULT_TOKEN",), "VAULT_TOKEN"),
    ],
)
def test_from_env_first_token_variable(present: tuple[str, ...], chosen: str) -> None:
    env = {"VAULT_ADDR": URL, **{name: f"hvs.{name}" for name in present}}
    env["SECUREML_VAULT_TOKEN"] = env.get("SECUREML_VAULT_TOKEN", " ")  # blank: skipped
    spec = KeyManagerSpec.from_env(env)
    assert spec.auth == AuthSpec.token(env=chosen)
    assert_carries_none(spec, *(f"hvs.{name}" for name in present))


def test_from_env_reads_connection_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "BAO_ADDR": f"{URL},http://127.0.0.1:2",
        "VAULT_TOKEN": "hvs.t",
        "VAULT_NAMESPACE": "team",
        "VAULT_CACERT": str(ca),
        "VAULT_CLIENT_TIMEOUT": "500ms",
        "BAO_MAX_RETRIES": "4",
    }
    spec = KeyManagerSpec.from_env(env, vault_path="ml")
    assert spec.vault_url == (URL, "http://127.0.0.1:2")
    assert (spec.vault_namespace, spec.vault_ca_cert) == ("team", str(ca))
    assert (spec.timeout, spec.retries, spec.vault_path) == (0.5, 4, "ml")
    with pytest.raises(ConfigurationError, match="VAULT_CLIENT_TIMEOUT"):
        KeyManagerSpec.from_env({**env, "VAULT_CLIENT_TIMEOUT": "soon"})
    with pytest.raises(TypeError, match="no setting 'vault_pth'"):
        KeyManagerSpec.from_env(env, vault_pth="ml")


def test_from_env_errors_on_url_without_credential() -> None:
    with pytest.raises(ConfigurationError, match="no credential variable") as info:
        KeyManagerSpec.from_env({"VAULT_ADDR": URL, "VAULT_TOKEN": "  "})
    assert "\n" not in str(info.value)


def test_from_env_given_auth_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = AuthSpec.userpass("u", password_env="PW")
    spec = KeyManagerSpec.from_env({"VAULT_ADDR": URL}, auth=auth)
    assert spec.auth == auth
    assert spec.vault_url == (URL,)


def test_from_env_without_url_leaves_it_to_the_worker() -> None:
    spec = KeyManagerSpec.from_env({"VAULT_TOKEN": "hvs.t"})
    assert spec.vault_url is None
    assert spec.auth is None
    assert spec == KeyManagerSpec()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_VAULT_URL", URL)
    monkeypatch.setenv("BAO_TOKEN", "hvs.t")
    assert KeyManagerSpec.from_env().auth == AuthSpec.token(env="BAO_TOKEN")


def test_from_env_matches_what_keymanager_would_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    for name, value in {
        "VAULT_ADDR": URL,
        "BAO_TOKEN": "hvs.t",
        "VAULT_NAMESPACE": "team",
        "VAULT_CACERT": str(ca),
        "VAULT_CLIENT_TIMEOUT": "7",
        "VAULT_MAX_RETRIES": "3",
    }.items():
        monkeypatch.setenv(name, value)
    from_env = KeyManagerSpec.from_env()
    from_manager = KeyManager().spec()
    assert from_env == from_manager
    # Built in a worker with the same environment: the same settings.
    assert from_env.new_manager().spec() == from_manager


# -- login_jitter ------------------------------------------------------------------------


def test_login_jitter_reaches_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T", "hvs.t")
    spec = KeyManagerSpec(vault_url=URL, auth=AuthSpec.token(env="T"), login_jitter=2)
    backend = spec.new_manager()._core.primary
    assert isinstance(backend, VaultBackend)
    assert backend.session._first_login_delay == 2.0
    km = KeyManager(vault_url=URL, vault_token="hvs.t")
    assert km.spec(credential_env="T").login_jitter == 0.5  # a spec's default
    km = KeyManager(vault_url=URL, vault_token="hvs.t", login_jitter=3)
    assert km.spec(credential_env="T").login_jitter == 3.0
    km = KeyManager(vault_url=URL, vault_token="hvs.t", login_jitter=0)
    assert km.spec(credential_env="T").login_jitter == 0.0  # an explicit 0 stays 0
    with pytest.raises(ValueError, match="finite"):
        KeyManager(vault_url=URL, vault_token="hvs.t", login_jitter=float("inf"))


def test_login_jitter_never_passes_the_call_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    session = TokenSession(TokenAuth("hvs.t"), url=URL, first_login_delay=1000.0)
    client = SimpleNamespace(adapter=SimpleNamespace(call_deadline=time.monotonic() + 0.4))
    for _ in range(20):
        session._spread_first_login(client)  # type: ignore[arg-type]
    assert slept
    assert max(slept) <= 0.2
    slept.clear()
    session = TokenSession(TokenAuth("hvs.t"), url=URL, first_login_delay=0.01)
    session._spread_first_login(SimpleNamespace(adapter=SimpleNamespace()))  # type: ignore[arg-type]
    assert 0 <= slept[0] <= 0.01


# -- the worker's manager: one per process and spec --------------------------------------


@pytest.fixture
def worker_spec(monkeypatch: pytest.MonkeyPatch) -> KeyManagerSpec:
    monkeypatch.setenv("WORKER_TOKEN", "hvs.worker")
    return KeyManagerSpec(vault_url=URL, auth=AuthSpec.token(env="WORKER_TOKEN"))


def test_manager_is_one_per_spec(worker_spec: KeyManagerSpec) -> None:
    first = worker_spec.manager()
    assert worker_spec.manager() is first
    assert loads(pickle.dumps(worker_spec)).manager() is first  # an equal spec
    assert loads(cloudpickle.dumps(worker_spec)).manager() is first
    other = worker_spec.replace(cache_ttl=1)
    assert other.manager() is not first
    assert other.manager() is other.manager()
    assert worker_spec.new_manager() is not first
    assert worker_spec.manager() is first


def test_manager_built_once_for_many_threads(
    worker_spec: KeyManagerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[KeyManager] = []
    real = KeyManagerSpec.new_manager

    def slow(self: KeyManagerSpec) -> KeyManager:
        time.sleep(0.05)  # widen the window in which threads would race
        built.append(real(self))
        return built[-1]

    monkeypatch.setattr(KeyManagerSpec, "new_manager", slow)
    barrier = threading.Barrier(24)
    got: list[KeyManager] = []

    def work() -> None:
        barrier.wait()
        got.append(loads(pickle.dumps(worker_spec)).manager())

    threads = [threading.Thread(target=work) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len(got) == 24
    assert all(m is built[0] for m in got)


def test_failed_build_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = KeyManagerSpec(vault_url=URL, auth=AuthSpec.token(env="LATER_TOKEN"))
    with pytest.raises(ConfigurationError, match="LATER_TOKEN"):
        spec.manager()
    monkeypatch.setenv("LATER_TOKEN", "hvs.t")
    assert spec.manager() is spec.manager()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_builds_its_own_manager(worker_spec: KeyManagerSpec) -> None:
    parent = worker_spec.manager()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running pytest's teardown
        try:
            mine = worker_spec.manager()
            answer = b"own" if mine is not parent and worker_spec.manager() is mine else b"same"
        except BaseException:  # reported to the parent
            answer = b"error"
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert answer == b"own"
    assert worker_spec.manager() is parent


def test_a_fork_without_python_hooks_is_caught_by_pid(worker_spec: KeyManagerSpec) -> None:
    parent = worker_spec.manager()
    spec_module._managers._pid = -1  # as if os.getpid() had changed under us
    assert worker_spec.manager() is not parent


def test_spec_manager_has_the_original_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    hooked: list[object] = []
    km = KeyManager(
        vault_url=[URL, "http://127.0.0.1:2"],
        vault_token="hvs.original",
        vault_path="ml/features",
        use_env_fallback=False,
        vault_mount="kv-ml",
        vault_namespace="team/a",
        vault_ca_cert=str(ca),
        vault_client_cert=str(cert),
        vault_client_key=str(key),
        vault_kv_version=1,
        timeout=2.5,
        retries=4,
        cache_ttl=7,
        cache_size=11,
        max_stale=13,
        audit_hook=hooked.append,
        declared_keys=["legacy/key"],
        declared_transit_keys=["transit-old"],
        require_commitment=True,
        login_jitter=1.5,
    )
    spec = loads(cloudpickle.dumps(km.spec(credential_env="WORKER_TOKEN")))
    # A worker's environment says otherwise; the spec's settings win.
    monkeypatch.setenv("WORKER_TOKEN", "hvs.original")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("VAULT_NAMESPACE", "elsewhere")
    monkeypatch.setenv("VAULT_CLIENT_TIMEOUT", "30")
    monkeypatch.setenv("VAULT_MAX_RETRIES", "0")
    worker = spec.manager()
    mine, theirs = km._core.settings, worker._core.settings
    for f in dataclasses.fields(mine):
        if f.name not in ("vault", "backend", "audit_hook"):
            assert getattr(theirs, f.name) == getattr(mine, f.name), f.name
    assert mine.vault is not None
    assert theirs.vault is not None
    for f in dataclasses.fields(mine.vault):
        if f.name != "auth":
            assert getattr(theirs.vault, f.name) == getattr(mine.vault, f.name), f.name
    assert theirs.vault.auth._token == "hvs.original"  # type: ignore[attr-defined]
    assert theirs.audit_hook is not None
    assert theirs.backend is None
    assert worker.spec() == spec


def _module_hook(event: object) -> None:
    """An audit hook pickled by reference."""


def test_module_level_audit_hook_shares_the_manager(worker_spec: KeyManagerSpec) -> None:
    spec = worker_spec.replace(audit_hook=_module_hook)
    assert loads(pickle.dumps(spec)).manager() is spec.manager()
    assert "_module_hook" not in repr(spec)


def test_lambda_audit_hook_shares_the_manager(worker_spec: KeyManagerSpec) -> None:
    spec = worker_spec.replace(audit_hook=lambda event: None)
    blob = cloudpickle.dumps(spec)
    assert loads(blob).manager() is loads(blob).manager()


def test_unhashable_audit_hook(worker_spec: KeyManagerSpec) -> None:
    @dataclasses.dataclass
    class Hook:
        seen: list[object] = dataclasses.field(default_factory=list)

        def __call__(self, event: object) -> None:
            self.seen.append(event)

    spec = worker_spec.replace(audit_hook=Hook())
    assert spec.manager() is spec.manager()


def test_module_has_no_unexpected_exports() -> None:
    assert spec_module.__all__ == ["KeyManagerSpec"]
    assert "secureml.key_management._spec" in sys.modules


def test_different_hook_functions_get_different_managers(worker_spec: KeyManagerSpec) -> None:
    def first_hook(event: object) -> None: ...

    def second_hook(event: object) -> None: ...

    one = worker_spec.replace(audit_hook=first_hook)
    two = worker_spec.replace(audit_hook=second_hook)
    assert one.manager() is not two.manager()
    blob = cloudpickle.dumps(one)  # what each task of a job unpickles
    assert loads(blob).manager() is loads(blob).manager()


def test_a_token_file_is_read_again_at_each_login(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    sink.write_text("hvs.first\n")
    auth = AuthSpec.token(file=str(sink)).build()
    assert auth.can_login_again
    client = SimpleNamespace()
    assert auth.login(client).token == "hvs.first"  # type: ignore[arg-type]
    sink.write_text("hvs.second\n")  # Vault Agent rotated it
    assert auth.login(client).token == "hvs.second"  # type: ignore[arg-type]
    assert "hvs" not in repr(auth)


def test_a_malformed_credential_names_where_it_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_TOKEN", "hvs.with space")
    with pytest.raises(ConfigurationError, match="WORKER_TOKEN") as caught:
        AuthSpec.token(env="WORKER_TOKEN").build()
    assert "with space" not in str(caught.value)


def test_hooks_bound_to_different_objects_get_different_managers(
    worker_spec: KeyManagerSpec,
) -> None:
    import logging

    a = worker_spec.replace(audit_hook=logging.getLogger("tenant_a.audit").info)
    b = worker_spec.replace(audit_hook=logging.getLogger("tenant_b.audit").info)
    assert a.manager() is not b.manager()
    assert a.manager() is loads(pickle.dumps(a)).manager()

    def make(sink: list[object]) -> Any:
        return lambda event: sink.append(event)  # noqa: PLW0108 - a closure, on purpose

    one, two = worker_spec.replace(audit_hook=make([1])), worker_spec.replace(audit_hook=make([2]))
    assert one.manager() is not two.manager()


def test_copies_of_a_hook_with_nested_code_share_a_manager(worker_spec: KeyManagerSpec) -> None:
    def hook(event: Any) -> None:
        if any(k in event.name for k in ("pii",)):
            print(event)

    spec = worker_spec.replace(audit_hook=hook)
    blob = cloudpickle.dumps(spec)
    assert len({id(loads(blob).manager()) for _ in range(5)}) == 1


def test_a_process_keeps_a_bounded_number_of_managers(
    worker_spec: KeyManagerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    warned: list[str] = []
    # Recorded at the logger itself: other tests may change how records propagate.
    monkeypatch.setattr(spec_module.logger, "warning", lambda msg, *a: warned.append(msg % a))
    registry = spec_module._PerProcess()
    specs = [worker_spec.replace(cache_size=n + 1) for n in range(spec_module.MAX_MANAGERS + 3)]
    for each in specs:
        registry.get(each)
    assert len(registry._managers) == spec_module.MAX_MANAGERS
    assert len(warned) == 1
    assert "managers in this process" in warned[0]


def test_a_jwt_login_file_is_bounded_as_a_spec_credential_is(tmp_path: Path) -> None:
    from secureml.key_management._auth import _read_jwt

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigurationError, match="is not a regular file"):
        _read_jwt(str(fifo), "kubernetes")  # never blocks waiting for a writer
    big = tmp_path / "big"
    big.write_bytes(b"x" * (70 * 1024))
    with pytest.raises(ConfigurationError, match="larger than any credential"):
        _read_jwt(str(big), "jwt")
