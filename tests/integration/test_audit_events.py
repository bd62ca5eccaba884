"""Which audit events every public operation emits, against a real OpenBao server.

``audit_hook=`` receives one :class:`AccessEvent` per public call that touches a key or a
secret; ``reencrypt``/``reencrypt_stream``/``reencrypt_file`` emit two: ``decrypt`` (the
old key and the version in the message's header), then ``encrypt`` (the target key and
the version written). Encryption events carry the key version written into, or read
from, the header (``None`` only for sources without versions, such as environment
variables); a ciphertext that does not authenticate, or is not a ciphertext at all, is a
``decrypt`` event with outcome ``rejected``; an error is outcome ``error`` with the
exception's class name; ``derive_key``, ``status``, ``stats`` and ``invalidate`` emit
nothing.

The rules live in one table, ``CASES``: a set-up (not observed), the call (observed),
and the events it must emit, in order. ``test_every_public_method_is_in_the_table``
fails when a public method of ``KeyManager`` or ``TransitKeys`` has neither a row nor a
place in ``NO_EVENT``, so a new method cannot ship without its audit row.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from secureml._devserver import DevServer
from secureml.key_management import (
    AccessEvent,
    ConfigurationError,
    InvalidCiphertextError,
    KeyManager,
    SecretNotFoundError,
    TransitKeys,
)
from secureml.key_management import _envelope as envelope

PLAIN = b"feature rows"
AAD = b"table=users"
ENV_KEY = "hex:" + "ab" * 32  # SECUREML_ENVKEY: a key from a source without versions
GARBAGE = b"definitely not a secureml message, just bytes"


# -- the expected events --------------------------------------------------------------


class _Any:
    """Equal to anything: a field the rules leave open (or a source not checked)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


@dataclass(frozen=True)
class Ev:
    """One expected event. ``name`` and ``source`` are templates: ``{tk}`` is the test's
    Transit key, ``{kv}`` is ``vault:secret/<vault_path>``, ``{transit}`` is
    ``vault:transit/keys``. ``source`` is a prefix the event's source must start with,
    ``None`` (the event's source must be ``None``) or ``ANY`` (not checked).
    ``version=ANY``: the rules do not fix it (Transit's own calls)."""

    operation: str
    name: str
    version: Any
    outcome: str
    error: str | None = None
    source: Any = ANY


def ok(operation: str, name: str, version: Any = None, source: Any = ANY) -> Ev:
    return Ev(operation, name, version, "ok", source=source)


def cached(operation: str, name: str, version: Any = None, source: Any = ANY) -> Ev:
    return Ev(operation, name, version, "cached", source=source)


def failed(operation: str, name: str, error: str, version: Any = None) -> Ev:
    return Ev(operation, name, version, "error", error)


def rejected(name: str = "", version: Any = None, source: Any = ANY) -> Ev:
    return Ev("decrypt", name, version, "rejected", "InvalidCiphertextError", source)


#: A ciphertext that is not one at all: nothing in it may be trusted, not even a name.
MALFORMED = rejected("", None, source=None)


def transit(method: str, source: str = "{transit}/{tk}") -> Ev:
    return ok(f"transit.{method}", "{tk}", ANY, source)


# -- the manager each case runs on ----------------------------------------------------


@dataclass
class Ctx:
    """A fresh manager on the real server with, already in place: KV v2 keys ``k`` and
    ``k2`` (version 1), text secret ``s``, Transit key ``tk`` (version 1) and
    ``SECUREML_ENVKEY``."""

    km: KeyManager
    events: list[AccessEvent]
    kv: str
    tk: str
    tmp: Path
    saved: dict[str, Any] = field(default_factory=dict)

    def fill(self, template: Any) -> Any:
        if not isinstance(template, str):
            return template
        return template.format(kv=self.kv, tk=self.tk, transit="vault:transit/keys")

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


Step = Callable[[Ctx], object]


@dataclass(frozen=True)
class Case:
    id: str
    covers: tuple[str, ...]  # "KeyManager.encrypt", "TransitKeys.rotate", ...
    run: Step
    expected: tuple[Ev, ...]
    setup: Step | None = None
    raises: type[Exception] | None = None


# set-ups: what a case needs that is not part of what it observes


def blob_v1(c: Ctx) -> None:
    c.saved["blob"] = c.km.encrypt(PLAIN, "k", aad=AAD)


def blob_v1_then_rotated(c: Ctx) -> None:
    blob_v1(c)
    assert c.km.rotate_key("k") == 2


def blob_v1_destroyed(c: Ctx) -> None:
    blob_v1_then_rotated(c)
    c.km.delete_secret("k", versions=[1], destroy=True)


def blob_of_env_key(c: Ctx) -> None:
    # Sealed where no Vault is configured (a Vault manager never seals under env keys).
    c.saved["blob"] = KeyManager(declared_keys=["envkey"]).encrypt(PLAIN, "envkey", aad=AAD)


def blob_of_transit(c: Ctx) -> None:
    c.saved["blob"] = c.km.encrypt(PLAIN, aad=AAD, transit_key=c.tk)


def blob_of_transit_then_rotated(c: Ctx) -> None:
    blob_of_transit(c)
    assert c.km.transit.rotate(c.tk) == 2


def blob_tampered(c: Ctx) -> None:
    blob_v1(c)
    blob = bytearray(c.saved["blob"])
    blob[-1] ^= 0x01  # the last tag: the header still parses, authentication fails
    c.saved["blob"] = bytes(blob)


def blob_file(c: Ctx) -> None:
    c.saved["path"] = c.file("data.sml", c.saved["blob"])


def transit_token(c: Ctx) -> None:
    c.saved["token"] = c.km.transit.encrypt(c.tk, PLAIN)


def chain(*steps: Step) -> Step:
    def run(c: Ctx) -> None:
        for step in steps:
            step(c)

    return run


def malformed(data: bytes) -> Step:
    def setup(c: Ctx) -> None:
        c.saved["blob"] = data

    return setup


def bad_magic(c: Ctx) -> None:
    blob_v1(c)
    c.saved["blob"] = b"XXXX" + c.saved["blob"][len(envelope.MAGIC) :]


def truncated_header(c: Ctx) -> None:
    blob_v1(c)
    c.saved["blob"] = c.saved["blob"][:9]


# calls


def twice(step: Step) -> Step:
    def run(c: Ctx) -> None:
        step(c)
        step(c)

    return run


def decrypt(c: Ctx, aad: bytes = AAD) -> bytes:
    return c.km.decrypt(c.saved["blob"], aad=aad)


def decrypt_stream(c: Ctx) -> int:
    return c.km.decrypt_stream(io.BytesIO(c.saved["blob"]), io.BytesIO(), aad=AAD)


def decrypt_file(c: Ctx) -> int:
    return c.km.decrypt_file(c.saved["path"], c.tmp / "plain.out", aad=AAD)


def encrypt_stream(key: str = "k", **kwargs: Any) -> Step:
    def run(c: Ctx) -> int:
        return c.km.encrypt_stream(io.BytesIO(PLAIN), io.BytesIO(), key, aad=AAD, **kwargs)

    return run


def encrypt_file(c: Ctx) -> int:
    return c.km.encrypt_file(c.file("plain.bin", PLAIN), c.tmp / "plain.sml", "k", aad=AAD)


def encrypt_file_transit(c: Ctx) -> int:
    src = c.file("plain.bin", PLAIN)
    return c.km.encrypt_file(src, c.tmp / "plain.sml", aad=AAD, transit_key=c.tk)


def reencrypt_stream(c: Ctx) -> int:
    return c.km.reencrypt_stream(io.BytesIO(c.saved["blob"]), io.BytesIO(), aad=AAD)


def reencrypt_file(c: Ctx) -> int:
    path = c.saved["path"]
    return c.km.reencrypt_file(path, path, aad=AAD)


def rotate_due(c: Ctx) -> int | None:
    later = datetime.now(timezone.utc) + timedelta(days=2)
    return c.km.rotate_if_older_than("k", timedelta(days=1), now=later)


def cells_v1(c: Ctx) -> None:
    c.saved["cells"] = c.km.column_cipher("k", column="email").encrypt(["a@example.com"])


def cells_v1_then_rotated(c: Ctx) -> None:
    cells_v1(c)
    assert c.km.rotate_key("k") == 2


def cells_tampered(c: Ctx) -> None:
    cells_v1(c)
    c.saved["cells"] = [c.saved["cells"][0][:-1] + b"\x00"]


def column_round_trip(c: Ctx) -> list[Any]:
    cipher = c.km.column_cipher("k", column="email")
    opened: list[Any] = cipher.decrypt(cipher.encrypt(["a@example.com"]))
    return opened


def column_decrypt(c: Ctx) -> list[Any]:
    opened: list[Any] = c.km.column_cipher("k", column="email").decrypt(c.saved["cells"])
    return opened


KV_K = "{kv}/k"
TRANSIT_TK = "{transit}/{tk}"

# fmt: off
CASES: list[Case] = [
    # -- reads and writes of secrets and keys
    Case("get_secret", ("KeyManager.get_secret",),
         lambda c: c.km.get_secret("s"),
         (ok("get_secret", "s", None, "{kv}/s"),)),
    Case("get_secret-twice-is-cached", ("KeyManager.get_secret",),
         twice(lambda c: c.km.get_secret("s")),
         (ok("get_secret", "s", None, "{kv}/s"), cached("get_secret", "s", None, "{kv}/s"))),
    Case("get_secret-version", ("KeyManager.get_secret",),
         lambda c: c.km.get_secret("s", version=1),
         (ok("get_secret", "s", 1, "{kv}/s"),)),
    Case("get_secret-from-env", ("KeyManager.get_secret",),
         lambda c: c.km.get_secret("envkey"),
         (ok("get_secret", "envkey", None, "env:SECUREML_ENVKEY"),)),
    Case("get_secret-from-default", ("KeyManager.get_secret",),
         lambda c: c.km.get_secret("missing", "fallback"),
         (ok("get_secret", "missing", None, "default="),)),
    Case("get_secret-missing", ("KeyManager.get_secret",),
         lambda c: c.km.get_secret("missing"),
         (failed("get_secret", "missing", "SecretNotFoundError"),),
         raises=SecretNotFoundError),
    Case("get_encryption_key", ("KeyManager.get_encryption_key",),
         lambda c: c.km.get_encryption_key("k"),
         (ok("get_encryption_key", "k", None, KV_K),)),
    Case("get_encryption_key-twice-is-cached", ("KeyManager.get_encryption_key",),
         twice(lambda c: c.km.get_encryption_key("k")),
         (ok("get_encryption_key", "k", None, KV_K),
          cached("get_encryption_key", "k", None, KV_K))),
    Case("get_encryption_key-version", ("KeyManager.get_encryption_key",),
         lambda c: c.km.get_encryption_key("k", version=1),
         (ok("get_encryption_key", "k", 1, KV_K),)),
    Case("get_encryption_key-missing", ("KeyManager.get_encryption_key",),
         lambda c: c.km.get_encryption_key("nokey"),
         (failed("get_encryption_key", "nokey", "SecretNotFoundError"),),
         raises=SecretNotFoundError),
    Case("set_secret", ("KeyManager.set_secret",),
         lambda c: c.km.set_secret("new", "value"),
         (ok("set_secret", "new", None, "{kv}/new"),)),
    # -- key lifecycle
    Case("generate_key", ("KeyManager.generate_key",),
         lambda c: c.km.generate_key("g"),
         (ok("generate_key", "g", 1, "{kv}/g"),)),
    Case("generate_key-exists", ("KeyManager.generate_key",),
         lambda c: c.km.generate_key("k"),
         (failed("generate_key", "k", "ConfigurationError"),),
         raises=ConfigurationError),
    Case("rotate_key", ("KeyManager.rotate_key",),
         lambda c: c.km.rotate_key("k"),
         (ok("rotate_key", "k", 2, KV_K),)),
    Case("rotate_key-missing", ("KeyManager.rotate_key",),
         lambda c: c.km.rotate_key("nokey"),
         (failed("rotate_key", "nokey", "SecretNotFoundError"),),
         raises=SecretNotFoundError),
    Case("rotate_if_older_than-due", ("KeyManager.rotate_if_older_than",),
         rotate_due,
         (ok("rotate_if_older_than", "k", 2, KV_K),)),
    Case("rotate_if_older_than-fresh", ("KeyManager.rotate_if_older_than",),
         lambda c: c.km.rotate_if_older_than("k", timedelta(days=90)),
         (Ev("rotate_if_older_than", "k", None, "fresh", source=KV_K),)),
    Case("key_versions", ("KeyManager.key_versions",),
         lambda c: c.km.key_versions("k"),
         (ok("key_versions", "k", None, KV_K),)),
    Case("get_key_ring", ("KeyManager.get_key_ring",),
         lambda c: c.km.get_key_ring("k"),
         (ok("get_key_ring", "k", None, KV_K),),
         setup=lambda c: c.km.rotate_key("k")),
    Case("list_secrets", ("KeyManager.list_secrets",),
         lambda c: c.km.list_secrets(""),
         (ok("list_secrets", "", None, "{kv}"),)),
    Case("list_secrets-prefix", ("KeyManager.list_secrets",),
         lambda c: c.km.list_secrets("k"),
         (ok("list_secrets", "k", None, "{kv}"),)),
    Case("delete_secret", ("KeyManager.delete_secret",),
         lambda c: c.km.delete_secret("s"),
         (ok("delete_secret", "s", None, "{kv}/s"),)),
    Case("undelete_secret", ("KeyManager.undelete_secret",),
         lambda c: c.km.undelete_secret("s"),
         (ok("undelete_secret", "s", None, "{kv}/s"),),
         setup=lambda c: c.km.delete_secret("s")),
    Case("labels", ("KeyManager.labels",),
         lambda c: c.km.labels("k"),
         (ok("labels", "k", None, KV_K),)),
    Case("explain", ("KeyManager.explain",),
         lambda c: c.km.explain("s"),
         (ok("explain", "s", None, "{kv}/s"),)),
    # -- encryption: the version is the one written into the header
    Case("encrypt", ("KeyManager.encrypt",),
         lambda c: c.km.encrypt(PLAIN, "k"),
         (ok("encrypt", "k", 1, KV_K),)),
    Case("encrypt-twice-is-cached", ("KeyManager.encrypt",),
         twice(lambda c: c.km.encrypt(PLAIN, "k")),
         (ok("encrypt", "k", 1, KV_K), cached("encrypt", "k", 1, KV_K))),
    Case("encrypt-after-rotation", ("KeyManager.encrypt",),
         lambda c: c.km.encrypt(PLAIN, "k"),
         (ok("encrypt", "k", 2, KV_K),),
         setup=lambda c: c.km.rotate_key("k")),
    Case("encrypt-env-key-refused-while-vault-is-configured", ("KeyManager.encrypt",),
         lambda c: c.km.encrypt(PLAIN, "envkey"),
         (failed("encrypt", "envkey", "SecretNotFoundError"),),
         raises=SecretNotFoundError),
    Case("encrypt-transit-is-one-event", ("KeyManager.encrypt",),
         lambda c: c.km.encrypt(PLAIN, transit_key=c.tk),
         (ok("encrypt", "{tk}", 1, TRANSIT_TK),)),
    Case("encrypt-missing-key", ("KeyManager.encrypt",),
         lambda c: c.km.encrypt(PLAIN, "nokey"),
         (failed("encrypt", "nokey", "SecretNotFoundError"),),
         raises=SecretNotFoundError),
    Case("encrypt_stream", ("KeyManager.encrypt_stream",),
         encrypt_stream(),
         (ok("encrypt", "k", 1, KV_K),)),
    Case("encrypt_stream-transit", ("KeyManager.encrypt_stream",),
         lambda c: encrypt_stream(transit_key=c.tk)(c),
         (ok("encrypt", "{tk}", 1, TRANSIT_TK),)),
    Case("encrypt_file", ("KeyManager.encrypt_file",),
         encrypt_file,
         (ok("encrypt", "k", 1, KV_K),)),
    Case("encrypt_file-transit", ("KeyManager.encrypt_file",),
         encrypt_file_transit,
         (ok("encrypt", "{tk}", 1, TRANSIT_TK),)),
    # -- decryption: the name and version are the header's
    Case("decrypt", ("KeyManager.decrypt",),
         decrypt,
         (ok("decrypt", "k", 1, KV_K),),
         setup=blob_v1),
    Case("open_encrypting", ("KeyManager.open_encrypting",),
         lambda c: c.km.open_encrypting(c.tmp / "w.sml", "k", aad=AAD).close(),
         (ok("encrypt", "k", 1, KV_K),)),
    Case("open_encrypted", ("KeyManager.open_encrypted",),
         lambda c: c.km.open_encrypted(io.BytesIO(c.saved["blob"]), aad=AAD).close(),
         (ok("decrypt", "k", 1, KV_K),),
         setup=blob_v1),
    Case("decrypt-twice-is-cached", ("KeyManager.decrypt",),
         twice(decrypt),
         (ok("decrypt", "k", 1, KV_K), cached("decrypt", "k", 1, KV_K)),
         setup=blob_v1),
    Case("decrypt-old-version", ("KeyManager.decrypt",),
         decrypt,
         (ok("decrypt", "k", 1, KV_K),),
         setup=blob_v1_then_rotated),
    Case("decrypt-env-key-has-no-version", ("KeyManager.decrypt",),
         decrypt,
         (ok("decrypt", "envkey", None, "env:SECUREML_ENVKEY"),),
         setup=blob_of_env_key),
    Case("decrypt-transit-is-one-event", ("KeyManager.decrypt",),
         decrypt,
         (ok("decrypt", "{tk}", 1, TRANSIT_TK),),
         setup=blob_of_transit),
    Case("decrypt-destroyed-version", ("KeyManager.decrypt",),
         decrypt,
         (Ev("decrypt", "k", 1, "rejected", "KeyVersionUnavailableError", ANY),),
         setup=blob_v1_destroyed, raises=SecretNotFoundError),
    Case("decrypt-tampered", ("KeyManager.decrypt",),
         decrypt,
         (rejected("k", 1),),
         setup=blob_tampered, raises=InvalidCiphertextError),
    Case("decrypt-wrong-aad", ("KeyManager.decrypt",),
         lambda c: decrypt(c, aad=b"table=other"),
         (rejected("k", 1),),
         setup=blob_v1, raises=InvalidCiphertextError),
    Case("decrypt-garbage", ("KeyManager.decrypt",),
         decrypt,
         (MALFORMED,),
         setup=malformed(GARBAGE), raises=InvalidCiphertextError),
    Case("decrypt-bad-magic", ("KeyManager.decrypt",),
         decrypt,
         (MALFORMED,),
         setup=bad_magic, raises=InvalidCiphertextError),
    Case("decrypt-truncated-header", ("KeyManager.decrypt",),
         decrypt,
         (MALFORMED,),
         setup=truncated_header, raises=InvalidCiphertextError),
    Case("decrypt_stream", ("KeyManager.decrypt_stream",),
         decrypt_stream,
         (ok("decrypt", "k", 1, KV_K),),
         setup=blob_v1),
    Case("decrypt_stream-tampered", ("KeyManager.decrypt_stream",),
         decrypt_stream,
         (rejected("k", 1),),
         setup=blob_tampered, raises=InvalidCiphertextError),
    Case("decrypt_stream-garbage", ("KeyManager.decrypt_stream",),
         decrypt_stream,
         (MALFORMED,),
         setup=malformed(GARBAGE), raises=InvalidCiphertextError),
    Case("decrypt_file", ("KeyManager.decrypt_file",),
         decrypt_file,
         (ok("decrypt", "k", 1, KV_K),),
         setup=chain(blob_v1, blob_file)),
    Case("decrypt_file-tampered", ("KeyManager.decrypt_file",),
         decrypt_file,
         (rejected("k", 1),),
         setup=chain(blob_tampered, blob_file), raises=InvalidCiphertextError),
    Case("decrypt_file-garbage", ("KeyManager.decrypt_file",),
         decrypt_file,
         (MALFORMED,),
         setup=chain(malformed(GARBAGE), blob_file), raises=InvalidCiphertextError),
    # -- re-encryption: decrypt (old key, header version), then encrypt (new version)
    Case("reencrypt", ("KeyManager.reencrypt",),
         lambda c: c.km.reencrypt(c.saved["blob"], aad=AAD),
         (ok("decrypt", "k", 1, KV_K), ok("encrypt", "k", 2, KV_K)),
         setup=blob_v1_then_rotated),
    Case("reencrypt-to-another-key", ("KeyManager.reencrypt",),
         lambda c: c.km.reencrypt(c.saved["blob"], "k2", aad=AAD),
         (ok("decrypt", "k", 1, KV_K), ok("encrypt", "k2", 1, "{kv}/k2")),
         setup=blob_v1),
    Case("reencrypt-transit", ("KeyManager.reencrypt",),
         lambda c: c.km.reencrypt(c.saved["blob"], aad=AAD),
         (ok("decrypt", "{tk}", 1, TRANSIT_TK), ok("encrypt", "{tk}", 2, TRANSIT_TK)),
         setup=blob_of_transit_then_rotated),
    Case("reencrypt-garbage", ("KeyManager.reencrypt",),
         lambda c: c.km.reencrypt(c.saved["blob"], aad=AAD),
         (MALFORMED,),
         setup=malformed(GARBAGE), raises=InvalidCiphertextError),
    Case("reencrypt_stream", ("KeyManager.reencrypt_stream",),
         reencrypt_stream,
         (ok("decrypt", "k", 1, KV_K), ok("encrypt", "k", 2, KV_K)),
         setup=blob_v1_then_rotated),
    Case("reencrypt_stream-garbage", ("KeyManager.reencrypt_stream",),
         reencrypt_stream,
         (MALFORMED,),
         setup=malformed(GARBAGE), raises=InvalidCiphertextError),
    Case("reencrypt_file", ("KeyManager.reencrypt_file",),
         reencrypt_file,
         (ok("decrypt", "k", 1, KV_K), ok("encrypt", "k", 2, KV_K)),
         setup=chain(blob_v1_then_rotated, blob_file)),
    # -- columns: a key version resolved once per cipher, then one event per call
    Case("column_cipher", ("KeyManager.column_cipher",),
         lambda c: c.km.column_cipher("k", column="email"),
         (ok("column_cipher", "k", 1, KV_K),)),
    Case("column_cipher-encrypt-decrypt", ("KeyManager.column_cipher",),
         column_round_trip,
         (ok("column_cipher", "k", 1, KV_K), ok("column_encrypt", "k", 1, KV_K),
          ok("column_decrypt", "k", None, None))),
    Case("column_cipher-cells-of-an-older-version", ("KeyManager.column_cipher",),
         column_decrypt,
         (ok("column_cipher", "k", 2, KV_K), ok("column_cipher", "k", 1, KV_K),
          ok("column_decrypt", "k", None, None)),
         setup=cells_v1_then_rotated),
    Case("column_cipher-tampered", ("KeyManager.column_cipher",),
         column_decrypt,
         (ok("column_cipher", "k", 1, KV_K),
          Ev("column_decrypt", "k", None, "rejected", "InvalidCellError", None)),
         setup=cells_tampered, raises=InvalidCiphertextError),
    Case("column_cipher-plain-secret", ("KeyManager.column_cipher",),
         lambda c: c.km.column_cipher("s", column="email"),
         (failed("column_cipher", "s", "ConfigurationError"),),
         raises=ConfigurationError),
    # -- Transit: one "transit.<method>" event per call
    Case("transit.ensure_key", ("TransitKeys.ensure_key",),
         lambda c: c.km.transit.ensure_key(f"{c.tk}-new"),
         (ok("transit.ensure_key", "{tk}-new", ANY, "{transit}/{tk}-new"),)),
    Case("transit.key_info", ("TransitKeys.key_info",),
         lambda c: c.km.transit.key_info(c.tk),
         (transit("key_info"),)),
    Case("transit.key_info-missing", ("TransitKeys.key_info",),
         lambda c: c.km.transit.key_info("no-such-transit-key"),
         (failed("transit.key_info", "no-such-transit-key", "SecretNotFoundError", ANY),),
         raises=SecretNotFoundError),
    Case("transit.rotate", ("TransitKeys.rotate",),
         lambda c: c.km.transit.rotate(c.tk),
         (transit("rotate"),)),
    Case("transit.set_min_decryption_version", ("TransitKeys.set_min_decryption_version",),
         lambda c: c.km.transit.set_min_decryption_version(c.tk, 1),
         (transit("set_min_decryption_version"),)),
    Case("transit.encrypt", ("TransitKeys.encrypt",),
         lambda c: c.km.transit.encrypt(c.tk, PLAIN),
         (transit("encrypt"),)),
    Case("transit.decrypt", ("TransitKeys.decrypt",),
         lambda c: c.km.transit.decrypt(c.tk, c.saved["token"]),
         (transit("decrypt"),),
         setup=transit_token),
    Case("transit.rewrap", ("TransitKeys.rewrap",),
         lambda c: c.km.transit.rewrap(c.tk, c.saved["token"]),
         (transit("rewrap"),),
         setup=transit_token),
    Case("transit.generate_data_key", ("TransitKeys.generate_data_key",),
         lambda c: c.km.transit.generate_data_key(c.tk),
         (transit("generate_data_key"),)),
    Case("transit.encrypt_batch", ("TransitKeys.encrypt_batch",),
         lambda c: c.km.transit.encrypt_batch(c.tk, [b"a", b"b", b"c"]),
         (transit("encrypt_batch"),)),
    Case("transit.decrypt_batch", ("TransitKeys.decrypt_batch",),
         lambda c: c.km.transit.decrypt_batch(c.tk, [c.saved["token"]] * 3),
         (transit("decrypt_batch"),),
         setup=transit_token),
]
# fmt: on

#: Public members that touch no key or secret: calling them emits nothing.
NO_EVENT: dict[str, Step] = {
    "KeyManager.derive_key": lambda c: c.km.derive_key(b"k" * 32, "purpose", salt=b"s"),
    "KeyManager.status": lambda c: c.km.status(),
    "KeyManager.stats": lambda c: c.km.stats(),
    "KeyManager.invalidate": lambda c: (c.km.invalidate("k"), c.km.invalidate()),
    "KeyManager.transit": lambda c: c.km.transit,  # a property
    # Settings only: no secret is read (the token is referred to, never looked up).
    "KeyManager.spec": lambda c: c.km.spec(credential_env="WORKER_VAULT_TOKEN"),
    "TransitKeys.mount": lambda c: c.km.transit.mount,  # a property
}


# -- running the table ----------------------------------------------------------------


@pytest.fixture(scope="module")
def transit_mount(bao_server: DevServer) -> str:
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    return "transit"  # encrypt(transit_key=) uses the manager's default Transit mount


@pytest.fixture
def ctx(
    bao_server: DevServer,
    vault_path: str,
    transit_mount: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Ctx:
    monkeypatch.setenv("SECUREML_ENVKEY", ENV_KEY)
    events: list[AccessEvent] = []
    km = KeyManager(
        vault_url=bao_server.address,
        vault_token=bao_server.root_token,
        vault_path=vault_path,
        vault_kv_version=2,
        audit_hook=events.append,
        declared_keys=["envkey"],  # a key from the environment may open its messages
    )
    km.generate_key("k")
    km.generate_key("k2")
    km.set_secret("s", "text")
    tk = f"audit-{uuid.uuid4().hex[:10]}"
    TransitKeys(km, mount=transit_mount).ensure_key(tk)
    return Ctx(km, events, f"vault:secret/{vault_path}", tk, tmp_path)


def _observe(c: Ctx, case: Case) -> None:
    if case.setup is not None:
        case.setup(c)
    c.km.invalidate()  # every case starts cold: its first read is "ok", not "cached"
    c.events.clear()
    if case.raises is None:
        case.run(c)
    else:
        with pytest.raises(case.raises):
            case.run(c)


def _check(c: Ctx, expected: tuple[Ev, ...]) -> None:
    got = [(e.operation, e.name, e.version, e.outcome, e.error) for e in c.events]
    want = [(e.operation, c.fill(e.name), e.version, e.outcome, e.error) for e in expected]
    assert got == want, "\n".join(
        ["events (operation, name, version, outcome, error):", *map(repr, c.events)]
    )
    for event, wanted in zip(c.events, expected, strict=True):
        assert isinstance(event.duration, float)
        assert event.duration >= 0
        if wanted.source is None:
            assert event.source is None, event
        elif wanted.source is not ANY:
            prefix = c.fill(wanted.source)
            assert event.source is not None, event
            assert event.source.startswith(prefix), (event.source, prefix)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_audit_events(ctx: Ctx, case: Case) -> None:
    _observe(ctx, case)
    _check(ctx, case.expected)


@pytest.mark.parametrize("member", list(NO_EVENT))
def test_no_event(ctx: Ctx, member: str) -> None:
    ctx.events.clear()
    NO_EVENT[member](ctx)
    assert ctx.events == []


def _public_members(cls: type) -> set[str]:
    return {f"{cls.__name__}.{name}" for name in dir(cls) if not name.startswith("_")}


def test_every_public_method_is_in_the_table() -> None:
    covered = {member for case in CASES for member in case.covers}
    public = _public_members(KeyManager) | _public_members(TransitKeys)
    missing = sorted(public - covered - set(NO_EVENT))
    assert not missing, f"public members with no audit row and not in NO_EVENT: {missing}"
    stale = sorted((covered | set(NO_EVENT)) - public)
    assert not stale, f"rows for members that no longer exist: {stale}"
    overlap = sorted(covered & set(NO_EVENT))
    assert not overlap, f"members both in the table and in NO_EVENT: {overlap}"
