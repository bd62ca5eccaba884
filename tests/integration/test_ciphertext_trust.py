"""A ciphertext header is attacker input: it can make ``decrypt`` open only keys
(issue 12, finding 2). Requests are counted at the fault proxy in front of the real
server: a refused header must never cause a read of a secret's value, nor a Transit
decrypt of a ciphertext that is not a secureml data key."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secureml._devserver import DevServer
from secureml.key_management import (
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    KeyVersionUnavailableError,
    SecretNotFoundError,
)
from secureml.key_management import _envelope as envelope
from secureml.key_management.backends.env import EnvBackend
from tests.support.fault_proxy import FaultProxy

KEY = bytes(range(32))


@dataclass
class World:
    proxy: FaultProxy
    manager: KeyManager
    path: str
    transit_key: str
    ordinary_transit_ciphertext: str

    def data_reads(self) -> list[str]:
        return [h.path for h in self.proxy.hits if "/v1/secret/data/" in h.path]

    def metadata_reads(self) -> list[str]:
        return [h.path for h in self.proxy.hits if "/v1/secret/metadata/" in h.path]

    def transit_decrypts(self) -> list[str]:
        return [h.path for h in self.proxy.hits if "/transit/decrypt/" in h.path]


@pytest.fixture(scope="module")
def world(bao_server: DevServer) -> Iterator[World]:
    with contextlib.suppress(subprocess.CalledProcessError):
        bao_server.bao("secrets", "enable", "transit")
    path = f"trust-{uuid.uuid4().hex[:10]}"
    admin = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=path
    )
    admin.generate_key("managed")
    admin.rotate_key("managed")  # versions 1 and 2
    admin.set_secret("plain", KEY)  # a secret that happens to be 32 bytes: not a key
    admin.set_secret("db_password", "hunter2-hunter2-hunter2")
    transit_key = f"trust-{uuid.uuid4().hex[:8]}"
    admin.transit.ensure_key(transit_key)
    # What any holder of transit/encrypt on the key can make: not a secureml data key.
    ordinary = admin.transit.encrypt(transit_key, b"someone else's secret, 32 bytes!")
    with FaultProxy(bao_server.address) as proxy:
        manager = KeyManager(
            vault_url=proxy.origin,
            vault_token=bao_server.root_token,
            vault_path=path,
            vault_kv_version=2,
        )
        yield World(proxy, manager, path, transit_key, ordinary)


def forged(name: str, version: int, *, mode: int = 1, wrapped: bytes = b"", fmt: int = 2) -> bytes:
    header = envelope.Header(mode, name, version, wrapped_key=wrapped, format_version=fmt)
    return envelope.encrypt_bytes(KEY, header, b"forged", b"")


def test_a_plain_secret_is_refused_before_its_value_is_read(world: World) -> None:
    world.manager.invalidate()
    world.proxy.hits.clear()
    for _ in range(100):  # repeated junk: the label is read once, then remembered
        with pytest.raises(InvalidCiphertextError, match="not a managed key"):
            world.manager.decrypt(forged("plain", 1))
    assert world.data_reads() == []
    assert len(world.metadata_reads()) == 1


def test_an_environment_variable_is_never_read_for_a_header(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREML_DB_TOKEN", "0f" * 32)
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", "s.configuration-token")
    asked: list[str] = []
    real_get = EnvBackend.get
    monkeypatch.setattr(EnvBackend, "get", lambda self, n: asked.append(n) or real_get(self, n))
    world.proxy.hits.clear()
    for name in ("db_token", "vault_token", "VAULT.TOKEN", "vault/token", "master_key"):
        with pytest.raises(InvalidCiphertextError):
            world.manager.decrypt(forged(name, 0))
    assert asked == []
    assert world.proxy.hits == []  # version 0: only a declared name opens, no I/O at all


def test_a_declared_environment_key_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREML_LAPTOP_KEY", "hex:" + KEY.hex())
    declared = KeyManager(declared_keys=["laptop_key"])
    assert declared.decrypt(forged("laptop_key", 0)) == b"forged"
    with pytest.raises(InvalidCiphertextError, match="not a managed key"):
        KeyManager().decrypt(forged("laptop_key", 0))


def test_an_ordinary_transit_ciphertext_cannot_stand_in_for_a_data_key(world: World) -> None:
    wrapped = world.ordinary_transit_ciphertext.encode()
    world.proxy.hits.clear()
    # Format 1 data keys were never bound: refused without asking Transit at all.
    with pytest.raises(InvalidCiphertextError, match="format-1 Transit data key"):
        world.manager.decrypt(forged(world.transit_key, 1, mode=2, wrapped=wrapped, fmt=1))
    assert world.transit_decrypts() == []
    # Format 2: Transit refuses it, as it was not wrapped with the data-key label.
    with pytest.raises(InvalidCiphertextError) as caught:
        world.manager.decrypt(forged(world.transit_key, 1, mode=2, wrapped=wrapped))
    assert str(caught.value) == envelope.OPAQUE
    assert len(world.transit_decrypts()) == 1


def test_format_1_transit_messages_open_under_declared_transit_keys(
    bao_server: DevServer, world: World
) -> None:
    data_key, wrapped = world.manager.transit.generate_data_key(world.transit_key)
    header = envelope.Header(
        2, world.transit_key, 1, wrapped_key=wrapped.encode(), format_version=1
    )
    old = envelope.encrypt_bytes(data_key, header, b"from an older secureml", b"")
    declared = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=world.path,
        declared_transit_keys=[world.transit_key],
    )
    assert declared.decrypt(old) == b"from an older secureml"
    moved = declared.reencrypt(old)
    assert envelope.parse_header(moved)[0].format_version == 2
    assert world.manager.decrypt(moved) == b"from an older secureml"  # bound: opens anywhere


def test_no_version_or_existence_oracle(world: World) -> None:
    world.manager.delete_secret("managed", versions=[1], destroy=True)
    messages = {}
    for version in (1, 7):  # destroyed, never existed
        with pytest.raises(KeyVersionUnavailableError) as caught:
            world.manager.decrypt(forged("managed", version))
        assert isinstance(caught.value, SecretNotFoundError)
        messages[version] = str(caught.value).replace(f"version {version}", "version N")
    assert messages[1] == messages[7]
    assert "latest" not in messages[1]
    assert "destroyed" in messages[1]  # as one of the possibilities, not as the state
    missing_transit = forged(f"nope-{uuid.uuid4().hex[:6]}", 1, mode=2, wrapped=b"vault:v1:AAAA")
    with pytest.raises(InvalidCiphertextError) as caught_transit:
        world.manager.decrypt(missing_transit)
    assert str(caught_transit.value) == envelope.OPAQUE  # not "no such Transit key"
    for name in ("plain", f"never-{uuid.uuid4().hex[:6]}"):  # exists or not: one answer
        with pytest.raises(InvalidCiphertextError) as refused:
            world.manager.decrypt(forged(name, 1))
        assert str(refused.value).replace(name, "X") == (
            "the message names 'X', which this manager does not open with: not a managed "
            "key. Messages open only under managed keys (made by generate_key or "
            "rotate_key) and keys declared with KeyManager(declared_keys=[...]) (Transit "
            "keys: declared_transit_keys=[...])"
        )


NAMES = st.sampled_from(
    [
        "managed",
        "plain",
        "db_password",
        "vault_token",
        "vault/token",
        "SECUREML_VAULT_TOKEN",
        "no-such-key",
        "a" * 300,
        "../escape",
        "x/y/z",
        "TRANSIT",
    ]
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(
    name=NAMES,
    version=st.integers(0, 9),
    mode=st.sampled_from([1, 2]),
    fmt=st.sampled_from([1, 2]),
)
def test_headers_never_cause_a_read_outside_the_allowed_set(
    world: World, name: str, version: int, mode: int, fmt: int
) -> None:
    if name == "TRANSIT":
        name = world.transit_key
    wrapped = world.ordinary_transit_ciphertext.encode() if mode == 2 else b""
    world.proxy.hits.clear()
    with contextlib.suppress(InvalidCiphertextError, SecretNotFoundError):
        world.manager.decrypt(forged(name, version, mode=mode, wrapped=wrapped, fmt=fmt))
    for path in world.data_reads():  # values: only of the managed key
        assert path.endswith(f"/{world.path}/managed") or "/managed?" in path, path
    for path in world.metadata_reads():  # labels: only of names a header may name
        assert f"/{world.path}/" in path, path
    if world.transit_decrypts():  # Transit: only format-2 data keys
        assert (mode, fmt) == (2, 2)


def test_only_versions_secureml_made_are_keys(bao_server: DevServer) -> None:
    """The label belongs to the secret: it records the first version that is a key, and
    set_secret refuses a managed key's name. Versions from before a forced rotation
    (passwords, public blobs), a text version another tool wrote, and values set_secret
    would write must neither seal nor open anything."""
    path = f"versions-{uuid.uuid4().hex[:8]}"
    manager = KeyManager(
        vault_url=bao_server.address, vault_token=bao_server.root_token, vault_path=path
    )
    manager.generate_key("k")
    with pytest.raises(ConfigurationError, match="is a managed key"):
        manager.set_secret("k", b"sixteen-chosen-bytes")  # would become the current key
    manager.set_secret("k", "a text version is never a key")  # allowed: it opens nothing
    with pytest.raises(ConfigurationError, match="is text, not key bytes"):
        manager.encrypt(b"x", "k")
    # Another tool writes a text version (a password) under the key's name:
    bao_server.bao("kv", "put", "-mount=secret", f"{path}/k", "value=CorrectHorseBattery2024x")
    manager.invalidate()
    with pytest.raises(ConfigurationError, match="is text, not key bytes"):
        manager.encrypt(b"x", "k")
    with pytest.raises(InvalidCiphertextError):
        manager.decrypt(forged("k", 2))
    # A plain secret of public bytes, then rotated as a key with force=True:
    manager.set_secret("cert", KEY)
    manager.rotate_key("cert", force=True)  # a key from version 2 on
    with pytest.raises(InvalidCiphertextError, match="not a managed key"):
        manager.decrypt(forged("cert", 1))  # version 1 (public bytes): never a key
    assert manager.decrypt(manager.encrypt(b"sealed", "cert")) == b"sealed"  # version 2
    with pytest.raises(ConfigurationError, match="is a managed key"):
        manager.set_secret("cert", KEY)


def test_declared_kv_and_transit_names_are_apart(bao_server: DevServer, world: World) -> None:
    def manager(**declared: list[str]) -> KeyManager:
        return KeyManager(
            vault_url=bao_server.address,
            vault_token=bao_server.root_token,
            vault_path=world.path,
            **declared,  # type: ignore[arg-type]
        )

    as_transit = manager(declared_transit_keys=["plain"])
    with pytest.raises(InvalidCiphertextError, match="not a managed key"):
        as_transit.decrypt(forged("plain", 1))  # the KV secret 'plain' is still no key
    with pytest.raises(ConfigurationError):
        as_transit.encrypt(b"x", "plain")
    as_kv = manager(declared_keys=[world.transit_key])
    old_style = forged(
        world.transit_key, 1, mode=2, wrapped=world.ordinary_transit_ciphertext.encode(), fmt=1
    )
    world.proxy.hits.clear()
    with pytest.raises(InvalidCiphertextError, match="format-1 Transit data key"):
        as_kv.decrypt(old_style)


def test_what_transit_says_about_a_forged_header_is_opaque(
    bao_server: DevServer, world: World
) -> None:
    derived = f"derived-{uuid.uuid4().hex[:8]}"
    world.manager.transit.ensure_key(derived, derived=True)
    token = bao_server.bao("token", "create", "-policy=default", "-field=token", "-ttl=5m")
    no_transit = KeyManager(
        vault_url=bao_server.address,
        vault_token=token.stdout.decode().strip(),
        vault_path=world.path,
        vault_kv_version=2,
    )
    for manager, name in ((world.manager, derived), (no_transit, world.transit_key)):
        blob = forged(name, 1, mode=2, wrapped=world.ordinary_transit_ciphertext.encode())
        with pytest.raises(InvalidCiphertextError) as caught:
            manager.decrypt(blob)  # derived key / permission denied: no oracle
        assert str(caught.value) == envelope.OPAQUE


def test_a_forged_transit_header_does_not_flush_a_kv_key_of_that_name(world: World) -> None:
    world.manager.transit.ensure_key("managed")  # a Transit key named like the KV key
    good = world.manager.encrypt(b"kept", "managed")
    world.manager.invalidate()
    assert world.manager.decrypt(good) == b"kept"  # cached now: value and label
    before = world.manager.stats().hits
    with pytest.raises(InvalidCiphertextError):
        world.manager.decrypt(forged("managed", 1, mode=2, wrapped=b"vault:v1:AAAA"))
    assert world.manager.decrypt(good) == b"kept"
    assert world.manager.stats().hits > before  # still served from the cache
