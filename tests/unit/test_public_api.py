"""The public surface: names, docs, and a light, silent import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import secureml
import secureml.key_management as km
from secureml.key_management import backends


@pytest.mark.parametrize("module", [km, backends, secureml, km.errors])
def test_all_is_sorted_resolves_and_is_documented(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_spec_signatures() -> None:
    init = inspect.signature(km.KeyManager)
    spec = [
        ("vault_url", None),
        ("vault_token", None),
        ("vault_path", "secureml"),
        ("use_env_fallback", True),
        ("use_default_fallback", False),
    ]
    params = list(init.parameters.values())
    assert [(p.name, p.default) for p in params[:5]] == spec
    assert all(p.kind is p.KEYWORD_ONLY for p in params[5:])
    assert init.parameters["vault_mount"].default == "secret"

    def defaults(func: object) -> dict[str, object]:
        """The spec's parameters: later additions are keyword-only."""
        sig = inspect.signature(func)  # type: ignore[arg-type]
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self" and p.kind is not p.KEYWORD_ONLY
        }

    # The original SecureML's parameter names: code passes secret_name= by keyword.
    assert defaults(km.KeyManager.get_secret) == {
        "secret_name": inspect.Parameter.empty,
        "default": None,
    }
    assert defaults(km.KeyManager.set_secret) == {
        "secret_name": inspect.Parameter.empty,
        "value": inspect.Parameter.empty,
    }
    expected_key = {"key_name": "master_key", "key_bytes": 32, "encoding": "bytes"}
    assert defaults(km.KeyManager.get_encryption_key) == expected_key
    assert defaults(km.get_encryption_key) == expected_key
    derive = inspect.signature(km.KeyManager.derive_key).parameters
    assert derive["key_bytes"].default == 32
    assert derive["salt"].kind is inspect.Parameter.KEYWORD_ONLY


def test_key_lifecycle_signatures() -> None:
    """Issue 5's names and defaults, as written there."""

    def params(obj: object) -> list[tuple[str, object, str]]:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
        return [(n, p.default, p.kind.name) for n, p in sig.parameters.items() if n != "self"]

    empty = inspect.Parameter.empty
    pos, kw = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
    manager = km.KeyManager
    assert params(manager.generate_key) == [
        ("key_name", empty, pos),
        ("key_bytes", 32, pos),
        ("overwrite", False, kw),
        ("metadata", None, kw),
    ]
    assert params(manager.rotate_key) == [("key_name", empty, pos), ("force", False, kw)]
    assert params(manager.rotate_if_older_than)[:2] == [
        ("key_name", empty, pos),
        ("max_age", empty, pos),
    ]
    assert params(manager.key_versions) == [("key_name", empty, pos)]
    assert params(manager.get_key_ring) == [("key_name", empty, pos)]
    assert params(manager.list_secrets) == [("prefix", "", pos)]
    assert params(manager.delete_secret)[:2] == [("name", empty, pos), ("destroy", False, kw)]
    assert ("version", None, kw) in params(manager.get_secret)
    assert ("version", None, kw) in params(manager.get_encryption_key)
    transit = km.TransitKeys
    assert params(transit)[1] == ("mount", "transit", kw)
    assert params(transit.ensure_key)[:2] == [
        ("name", empty, pos),
        ("key_type", "aes256-gcm96", pos),
    ]
    assert params(transit.encrypt) == [
        ("name", empty, pos),
        ("plaintext", empty, pos),
        ("context", None, kw),
        ("associated_data", None, kw),
    ]
    assert params(transit.decrypt)[:2] == [("name", empty, pos), ("ciphertext", empty, pos)]
    assert params(transit.generate_data_key)[:2] == [("name", empty, pos), ("key_bytes", 32, pos)]
    for method in (
        "rotate",
        "rewrap",
        "set_min_decryption_version",
        "encrypt_batch",
        "decrypt_batch",
    ):
        assert callable(getattr(transit, method))


def test_encryption_signatures() -> None:
    """Issue 6's names and defaults, as written there."""
    empty = inspect.Parameter.empty

    def params(obj: object) -> list[tuple[str, object]]:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
        return [(n, p.default) for n, p in sig.parameters.items() if n != "self"]

    manager = km.KeyManager
    assert params(manager.encrypt)[:3] == [
        ("data", empty),
        ("key_name", "master_key"),
        ("aad", b""),
    ]
    assert ("transit_key", None) in params(manager.encrypt)
    assert params(manager.decrypt) == [("blob", empty), ("aad", b"")]
    assert params(manager.encrypt_file)[:5] == [
        ("src", empty),
        ("dst", empty),
        ("key_name", "master_key"),
        ("aad", b""),
        ("progress", None),
    ]
    assert params(manager.decrypt_file) == [
        ("src", empty),
        ("dst", empty),
        ("aad", b""),
        ("progress", None),
        ("durable", False),
    ]
    assert params(manager.encrypt_stream)[:3] == [
        ("reader", empty),
        ("writer", empty),
        ("key_name", "master_key"),
    ]
    assert params(manager.reencrypt)[:2] == [("blob", empty), ("key_name", None)]
    for name in ("decrypt_stream", "reencrypt_file", "reencrypt_stream"):
        assert callable(getattr(manager, name))


def test_production_vault_signatures() -> None:
    """Issue 3's names and defaults, as written there."""

    def params(obj: object) -> list[tuple[str, object]]:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
        return [(n, p.default) for n, p in sig.parameters.items()]

    empty = inspect.Parameter.empty
    assert params(km.TokenAuth) == [("token", empty)]
    assert params(km.AppRoleAuth) == [
        ("role_id", empty),
        ("secret_id", empty),
        ("mount", "approle"),
    ]
    assert params(km.UserpassAuth) == [
        ("username", empty),
        ("password", empty),
        ("mount", "userpass"),
    ]
    assert params(km.JWTAuth) == [
        ("role", empty),
        ("jwt", None),
        ("jwt_path", None),
        ("mount", "jwt"),
    ]
    assert params(km.KubernetesAuth) == [
        ("role", empty),
        ("jwt_path", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ("mount", "kubernetes"),
    ]
    init = inspect.signature(km.KeyManager).parameters
    for name, default in [
        ("vault_auth", None),
        ("vault_namespace", None),
        ("vault_ca_cert", None),
        ("vault_client_cert", None),
        ("vault_client_key", None),
        ("verify", True),
        ("timeout", None),
        ("retries", None),
    ]:
        assert init[name].default == default, name
        assert init[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(km.configure_default_key_manager) == inspect.signature(km.KeyManager)
    assert callable(km.KeyManager.status)


def test_public_objects_show_the_public_module() -> None:
    assert km.KeyManager.__module__ == "secureml.key_management"
    assert km.get_encryption_key.__module__ == "secureml.key_management"


def test_top_level_reexports() -> None:
    from secureml import KeyManager, configure_default_key_manager, get_encryption_key

    assert KeyManager is km.KeyManager
    assert configure_default_key_manager is km.configure_default_key_manager
    assert get_encryption_key is km.get_encryption_key


IMPORT_PROBE = """
import sys, warnings
warnings.simplefilter("error")
{prelude}
import secureml.key_management
from secureml import KeyManager, configure_default_key_manager, get_encryption_key
heavy = [m for m in ("hvac", "requests", "urllib3", "cryptography") if sys.modules.get(m)]
import threading
print("heavy:", heavy, "threads:", threading.active_count(),
      "default:", secureml.key_management._default._slot.manager)
"""


@pytest.mark.parametrize("prelude", ["", "sys.modules['hvac'] = None"], ids=["hvac", "no-hvac"])
def test_import_is_light_and_silent(prelude: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Even with Vault configured in the environment, importing must not act on it.
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("VAULT_TOKEN", "t")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORT_PROBE.format(prelude=prelude)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stderr == ""
    assert done.stdout.strip() == "heavy: [] threads: 1 default: None"


def test_original_keyword_names_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_API_KEY", "abc")
    manager = km.KeyManager()
    assert manager.get_secret(secret_name="api_key") == "abc"
    assert manager.get_secret(secret_name="missing", default="d") == "d"
    with pytest.raises(km.ConfigurationError, match="no Vault"):
        manager.set_secret(secret_name="api_key", value="x")


def test_the_manager_is_one_class_over_collaborators() -> None:
    """A facade, not a stack of mixins sharing private state."""
    assert km.KeyManager.__mro__ == (km.KeyManager, object)


def test_exported_objects_show_the_public_module() -> None:
    for name in km.__all__:
        obj = getattr(km, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ in (km.__name__, km.errors.__name__), name
