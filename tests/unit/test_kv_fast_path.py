"""The KV reads secureml builds itself (backends/_vault_kv.py) address what hvac's KV
methods would, and read Vault's answers as they do."""

from __future__ import annotations

from typing import Any

import hvac.exceptions
import pytest
from hvac import utils

from secureml.key_management.backends._vault_kv import Engine


class _Recorder:
    """A requester that records what it is asked and answers as told."""

    def __init__(self, answer: Any = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._answer = answer
        self._error = error

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append((method, url, kwargs))
        if self._error is not None:
            raise self._error
        return self._answer


@pytest.mark.parametrize(
    "path", ["secureml/x", "secureml/a b/ü", "secureml/%2F?#", "x", "deep/er/name.v1-2_3"]
)
@pytest.mark.parametrize("mount", ["secret", "kv/team a", "ü"])
def test_paths_are_hvacs(mount: str, path: str) -> None:
    v2, v1 = Engine(mount, 2), Engine(mount, 1)
    assert v2.data_path(path) == utils.format_url(
        "/v1/{mount_point}/data/{path}", mount_point=mount, path=path
    )
    assert v2.metadata_path(path) == utils.format_url(
        "/v1/{mount_point}/metadata/{path}", mount_point=mount, path=path
    )
    assert v1.data_path(path) == utils.format_url(
        "/v1/{mount_point}/{path}", mount_point=mount, path=path
    )


def test_a_read_is_one_get_with_the_version_as_a_parameter() -> None:
    answer = {"data": {"data": {"value": "v"}, "metadata": {"version": 3}}}
    through = _Recorder(answer)
    assert Engine("secret", 2).read(through, "secureml/x", 3) == answer["data"]
    assert Engine("secret", 2).read(through, "secureml/x") == answer["data"]
    assert through.calls == [
        ("GET", "/v1/secret/data/secureml/x", {"params": {"version": 3}}),
        ("GET", "/v1/secret/data/secureml/x", {}),
    ]


def test_a_missing_secret_is_none_and_other_refusals_go_on() -> None:
    missing = _Recorder(error=hvac.exceptions.InvalidPath("nope"))
    assert Engine("secret", 2).read(missing, "secureml/x") is None
    assert Engine("secret", 2).read_metadata(missing, "secureml/x") is None
    denied = _Recorder(error=hvac.exceptions.Forbidden("no"))
    with pytest.raises(hvac.exceptions.Forbidden):  # the backend's _call decides
        Engine("secret", 1).read(denied, "secureml/x")


def test_only_kv_versions_1_and_2() -> None:
    with pytest.raises(ValueError, match="1 or 2"):
        Engine("secret", 3)


def test_a_version_on_a_pinned_kv_v1_mount_is_refused_without_asking_vault() -> None:
    """Nothing listens there: the refusal needs no token, no login and no request."""
    import socket

    from secureml.key_management import KeyManager, UnsupportedOperationError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing will answer
    km = KeyManager(
        vault_url=f"http://127.0.0.1:{port}",
        vault_token="s.unused",
        vault_kv_version=1,
        use_env_fallback=False,
        timeout=1,
    )
    with pytest.raises(UnsupportedOperationError, match="KV v1"):
        km.get_secret("a", version=1)
