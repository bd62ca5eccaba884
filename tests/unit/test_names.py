"""Secret names and their environment variables."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureml.key_management import KeyManager
from secureml.key_management._memo import LONGEST_REMEMBERED, NameMemo
from secureml.key_management._names import env_var_name
from secureml.key_management._validate import validate_name, validate_secret_name
from secureml.key_management.backends._vault_kv import _escaped, _escapes

SEGMENT = st.from_regex(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,11}", fullmatch=True).filter(
    lambda s: ".." not in s and s != "."
)
VALID_NAMES = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)


@pytest.mark.parametrize(
    "name", ["api_key", "master-key", "v1.2", "team/db/password", "A", "x.y-z_0/q"]
)
def test_valid(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/lead",
        "trail/",
        "dou//ble",
        "../etc",
        "a/../b",
        "a..b",
        ".",
        "a/./b",
        "sp ace",
        "tab\t",
        "ünï",
        "semi;colon",
        "new\nline",
        "q?x",
        "hash#",
    ],
)
def test_invalid_is_a_value_error_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name)) if name else "empty"):
        validate_name(name)


@pytest.mark.parametrize("name", [None, 1, b"bytes", ["x"]])
def test_non_str_is_a_type_error(name: object) -> None:
    with pytest.raises(TypeError, match="str"):
        validate_name(name)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get_secret("../x"),
        lambda m: m.set_secret("a//b", "v"),
        lambda m: m.get_encryption_key("bad name"),
    ],
)
def test_manager_validates_before_any_lookup(call: object) -> None:
    manager = KeyManager(use_default_fallback=True)
    with pytest.raises(ValueError, match="name"):
        call(manager)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("api_key", "SECUREML_API_KEY"),
        ("db/password", "SECUREML_DB_PASSWORD"),
        ("api-key.v2", "SECUREML_API_KEY_V2"),
        ("MiXeD", "SECUREML_MIXED"),
    ],
)
def test_env_var_name(name: str, env: str) -> None:
    assert env_var_name(name) == env


@given(VALID_NAMES)
def test_every_valid_name_maps_to_a_portable_variable(name: str) -> None:
    assert validate_name(name) == name
    env = env_var_name(name)
    assert re.fullmatch(r"SECUREML_[A-Z0-9_]+", env)
    assert len(env) == len("SECUREML_") + len(name)
    assert env_var_name(name) == env


@given(st.text(max_size=20))
def test_validation_accepts_exactly_the_rules(text: str) -> None:
    segments = text.split("/")
    ok = (
        bool(text)
        and ".." not in text
        and all(re.fullmatch(r"[A-Za-z0-9_.\-]+", s) and s != "." for s in segments)
    )
    if ok:
        assert validate_name(text) == text
    else:
        with pytest.raises(ValueError, match="name"):
            validate_name(text)


# -- the names a hot read remembers (_memo.NameMemo) --------------------------------------


class _Posing(str):
    """A str whose hash and equality claim to be another, valid, name's."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash("good")

    def __eq__(self, other: object) -> bool:
        return True


def test_a_remembered_valid_name_never_vouches_for_a_str_posing_as_it() -> None:
    assert validate_secret_name("good") == "good"  # remembered now
    with pytest.raises(ValueError, match=r"must not contain '\.\.'"):
        validate_secret_name(_Posing("../etc/passwd"))


def test_a_path_escape_is_never_answered_for_a_str_posing_as_its_path() -> None:
    assert _escaped("good") == "good"
    assert _escaped(_Posing("a b")) == "a%20b"


def test_a_full_memo_starts_again_instead_of_growing() -> None:
    memo: NameMemo[int] = NameMemo(most=3)
    for i in range(10):
        memo.put(f"n{i}", i)
        assert len(memo._found) <= 3
    assert memo.get("n9") == 9
    assert memo.get("n0") is None


def test_a_path_longer_than_any_name_is_escaped_but_never_remembered() -> None:
    # The backends take paths from callers unchecked: none may keep megabytes alive.
    long = "é" * (LONGEST_REMEMBERED + 1)
    assert _escaped(long) == "%C3%A9" * (LONGEST_REMEMBERED + 1)
    assert _escapes.get(long) is None
    assert _escaped("é" * LONGEST_REMEMBERED) == "%C3%A9" * LONGEST_REMEMBERED
    assert _escapes.get("é" * LONGEST_REMEMBERED) is not None


def test_invalid_names_are_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="reserved"):
            validate_secret_name("vault/token")
