"""A spec made in one process behaves the same in another (issue 14), on a real server.

The parent builds an AppRole manager (secret id passed as a value), takes
``km.spec(credential_env=...)`` and sends it to ``spawn`` children: a fresh
interpreter that shares nothing with the parent but the pickle and the environment it
inherits. There the spec's manager reads the same secrets from the same path and mount,
uses (or not) the environment fallback as the spec says, serves from its cache for
``cache_ttl``, and, without its credential, fails with one error naming the variable.
"""

from __future__ import annotations

import multiprocessing
import pickle
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import cloudpickle
import pytest

from secureml._devserver import DevServer
from secureml.key_management import AppRoleAuth, ConfigurationError, KeyManager, KeyManagerSpec
from tests.integration.test_auth_methods import enable_auth, make_approle

SECRET_ID_VAR = "SPEC_TEST_SECRET_ID"
MISSING_VAR = "SPEC_TEST_NOT_SET"


# -- what runs in the spawned child (module level: spawn imports it by name) ------------


def _outcome(call: Any) -> str:
    try:
        return f"ok {call()}"
    except Exception as exc:  # reported to the parent, which judges it
        return f"{type(exc).__name__}: {exc}"


def child_reads(spec: KeyManagerSpec, names: list[str]) -> dict[str, str]:
    """Each name's value (or error) through this process's manager for ``spec``."""
    km = spec.manager()
    found = {name: _outcome(lambda name=name: km.get_secret(name)) for name in names}
    found["same-manager"] = str(spec.manager() is km)
    return found


def child_cache(spec: KeyManagerSpec, name: str, new_value: str) -> tuple[Any, Any, str]:
    """Read ``name``, overwrite it through another manager, read it again: the second
    read is the cache's for as long as the spec's ``cache_ttl`` says."""
    km = spec.manager()
    before = km.get_secret(name)
    writer = spec.new_manager()
    writer.set_secret(name, new_value)
    after = km.get_secret(name)
    return before, after, str(km._core.settings.cache_ttl)


# -- the parent --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def approle(bao_server: DevServer) -> tuple[str, str, str, str]:
    """An AppRole on a mount of its own, allowed the module's folder:
    (folder, mount, role id, secret id)."""
    folder = f"spec-{uuid.uuid4().hex[:10]}"
    policy = f"spec-{uuid.uuid4().hex[:10]}"
    rules = (
        f'path "secret/data/{folder}/*" {{ capabilities = ["read", "create", "update"] }}\n'
        f'path "secret/metadata/{folder}/*" {{ capabilities = ["read"] }}\n'
        'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n'
    )
    bao_server.bao("policy", "write", policy, "-", input=rules.encode())
    mount = enable_auth(bao_server, "approle")
    role_id, secret_id = make_approle(bao_server, mount, policy)
    return folder, mount, role_id, secret_id


@pytest.fixture
def pool(
    approle: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProcessPoolExecutor]:
    """One spawned worker, whose environment holds the secret id (by the variable the
    spec names) and an environment fallback for ``env_only``."""
    monkeypatch.setenv(SECRET_ID_VAR, approle[3])
    monkeypatch.setenv("SECUREML_ENV_ONLY", "from-the-worker-env")
    monkeypatch.delenv(MISSING_VAR, raising=False)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        executor.submit(int).result(timeout=60)  # started, with this environment
        yield executor


def parent_manager(
    server: DevServer, approle: tuple[str, str, str, str], **kwargs: Any
) -> KeyManager:
    folder, mount, role_id, secret_id = approle
    return KeyManager(
        vault_url=server.address,
        vault_auth=AppRoleAuth(role_id, secret_id, mount=mount),
        vault_path=folder,
        **kwargs,
    )


def test_spawned_child_reads_what_the_parent_reads(
    bao_server: DevServer, approle: tuple[str, str, str, str], pool: ProcessPoolExecutor
) -> None:
    secret_id = approle[3]
    km = parent_manager(bao_server, approle, use_env_fallback=True)
    value = "v-" + uuid.uuid4().hex
    km.set_secret("db_password", value)
    spec = km.spec(credential_env=SECRET_ID_VAR)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert secret_id.encode() not in dumps(spec)

    # The parent's environment has SECUREML_ENV_ONLY too: both sides see the same.
    names = ["db_password", "env_only", "absent"]
    here = {name: _outcome(lambda name=name: km.get_secret(name)) for name in names}
    there = pool.submit(child_reads, spec, names).result(timeout=60)
    assert there["db_password"] == f"ok {value}" == here["db_password"]
    assert there["env_only"] == "ok from-the-worker-env" == here["env_only"]
    assert there["absent"].startswith("SecretNotFoundError")
    assert here["absent"].startswith("SecretNotFoundError")
    assert there["same-manager"] == "True"

    # use_env_fallback=False crosses as well: the child's variable is then not read.
    strict = km.spec(credential_env=SECRET_ID_VAR).replace(use_env_fallback=False)
    there = pool.submit(child_reads, strict, ["db_password", "env_only"]).result(timeout=60)
    assert there["db_password"] == f"ok {value}"
    assert there["env_only"].startswith("SecretNotFoundError"), there["env_only"]
    for text in there.values():
        assert secret_id not in text


@pytest.mark.parametrize(("ttl", "cached"), [(30.0, True), (0.0, False)])
def test_cache_ttl_crosses(
    bao_server: DevServer,
    approle: tuple[str, str, str, str],
    pool: ProcessPoolExecutor,
    ttl: float,
    cached: bool,
) -> None:
    km = parent_manager(bao_server, approle, cache_ttl=ttl)
    name = f"cached_{uuid.uuid4().hex[:8]}"
    km.set_secret(name, "first")
    spec = km.spec(credential_env=SECRET_ID_VAR)
    before, after, child_ttl = pool.submit(child_cache, spec, name, "second").result(timeout=60)
    assert (before, child_ttl) == ("first", str(ttl))
    assert after == ("first" if cached else "second")


def test_child_without_the_credential_names_the_variable(
    bao_server: DevServer, approle: tuple[str, str, str, str], pool: ProcessPoolExecutor
) -> None:
    km = parent_manager(bao_server, approle)
    # The variable is set here (holding the same secret id), not in the child.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MISSING_VAR, approle[3])
        spec = km.spec(credential_env=MISSING_VAR)
    there = pool.submit(child_reads, spec, ["db_password"])
    with pytest.raises(ConfigurationError, match=MISSING_VAR) as info:
        there.result(timeout=60)
    message = str(info.value)
    assert "\n" not in message
    assert approle[3] not in message
