"""Development defaults: deterministic, the right length, loud, refused in production."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from secureml.key_management import (
    ConfigurationError,
    KeyManager,
    SecretNotFoundError,
    SecurityWarning,
)


def quietly(call):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return call()


def test_deterministic_across_managers_and_processes() -> None:
    key = quietly(lambda: KeyManager(use_default_fallback=True).get_encryption_key("k"))
    again = quietly(lambda: KeyManager(use_default_fallback=True).get_encryption_key("k"))
    assert key == again
    code = (
        "import warnings; warnings.simplefilter('ignore');"
        "from secureml.key_management import KeyManager;"
        "print(KeyManager(use_default_fallback=True).get_encryption_key('k', encoding='hex'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={}
    ).stdout.strip()
    assert out == key.hex()


def test_names_and_lengths_differ() -> None:
    km = KeyManager(use_default_fallback=True)
    a = quietly(lambda: km.get_encryption_key("a"))
    b = quietly(lambda: km.get_encryption_key("b"))
    long = quietly(lambda: km.get_encryption_key("a", 64))
    assert a != b
    assert len(long) == 64
    assert long[:32] != a


def test_secret_default_is_marked_insecure() -> None:
    value = quietly(lambda: KeyManager(use_default_fallback=True).get_secret("api_key"))
    assert isinstance(value, str)
    assert value.startswith("insecure-dev-")


def test_warns_once_per_name() -> None:
    km = KeyManager(use_default_fallback=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            km.get_encryption_key("one")
            km.get_secret("two")
    messages = [str(w.message) for w in caught if w.category is SecurityWarning]
    assert len(messages) == 2
    assert "'one'" in messages[0]
    assert "'two'" in messages[1]


def test_warning_points_at_the_callers_line() -> None:
    km = KeyManager(use_default_fallback=True)
    with pytest.warns(SecurityWarning) as record:
        km.get_encryption_key("where")
    assert record[0].filename == __file__


def test_callers_default_comes_before_dev_default() -> None:
    km = KeyManager(use_default_fallback=True)
    assert km.get_secret("x", default="mine") == "mine"


def test_off_by_default() -> None:
    with pytest.raises(SecretNotFoundError):
        KeyManager().get_encryption_key("k")


@pytest.mark.parametrize(
    "env", ["production", "prod", " PROD ", "Production", "prd", "live", "staging", "prdo"]
)
def test_refused_outside_development(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """An allow-list: every name that is not a development environment refuses."""
    monkeypatch.setenv("SECUREML_ENV", env)
    with pytest.raises(ConfigurationError, match="SECUREML_ENV"):
        KeyManager(use_default_fallback=True)
    KeyManager()  # without dev defaults it is fine


@pytest.mark.parametrize("env", ["development", "dev", " Test ", "local", "", "  "])
def test_allowed_in_development(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("SECUREML_ENV", env)
    KeyManager(use_default_fallback=True)
