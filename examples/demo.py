"""`make demo`: a tour of secureml against a local OpenBao server it starts and stops.

Runs the spec's own examples, then sets and reads secrets, fetches a key in every
encoding, derives purpose keys, rotates a key, encrypts a file across a rotation, uses
Vault Transit, and shows the
fallbacks and errors. Key material is only
ever shown as a short preview.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_spec import SPEC_EXAMPLES, run_example, seed_secrets

from secureml._devserver import DevServer
from secureml.key_management import (
    AppRoleAuth,
    KeyManagementError,
    KeyManager,
    SecurityWarning,
)


def preview(value: object) -> str:
    """A short, safe glimpse of a secret: never the whole thing."""
    if isinstance(value, bytes):
        return f"{value[:3].hex()}... ({len(value)} bytes)"
    text = str(value)
    return f"{text[:6]}... ({len(text)} chars)"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def seed(server: DevServer, manager: KeyManager) -> None:
    step("Seed: the bao CLI writes one secret, secureml writes two random keys")
    api_key = f"value=demo-{secrets.token_hex(8)}"
    server.bao("kv", "put", "-mount=secret", "secureml/api_key", api_key)
    seed_secrets(manager)
    print("   bao kv put -mount=secret secureml/api_key value=...  -> stored")
    print("   set_secret('master_key' / 'data_encryption_key', 32 random bytes) -> True")


def spec_examples(server: DevServer) -> None:
    step("The spec's examples, verbatim (placeholder URL and token swapped for this server)")
    for example in SPEC_EXAMPLES:
        names = run_example(example, vault_url=server.address, vault_token=server.root_token)
        shown = ", ".join(
            f"{name}={preview(names[name])}"
            for name in ("api_key", "encryption_key", "key", "hmac_key")
            if name in names
        )
        print(f"   {example}: ok  {shown}")


def set_and_get(server: DevServer, manager: KeyManager) -> None:
    step("Set a secret, read it back, and read it with the bao CLI")
    ok = manager.set_secret("feature-store/password", secrets.token_urlsafe(16))
    print(f"   set_secret('feature-store/password', ...) -> {ok}")
    value = manager.get_secret("feature-store/password")
    print(f"   get_secret('feature-store/password')      -> {preview(value)}")
    cli = server.bao(
        "kv", "get", "-mount=secret", "-field=value", "secureml/feature-store/password"
    )
    print(f"   bao kv get secureml/feature-store/password -> {preview(cli.stdout.decode())}")


def keys(manager: KeyManager) -> None:
    step("One key, every encoding")
    for encoding in ("bytes", "hex", "base64", "base64url"):
        key = manager.get_encryption_key("master_key", 32, encoding)
        print(f"   get_encryption_key('master_key', encoding={encoding!r}) -> {preview(key)}")

    step("Purpose-separated keys (HKDF-SHA256)")
    master = manager.get_encryption_key("master_key")
    enc = manager.derive_key(master, purpose="data_encryption")
    mac = manager.derive_key(master, purpose="data_integrity")
    print(f"   derive_key(master, 'data_encryption') -> {preview(enc)}")
    print(f"   derive_key(master, 'data_integrity')  -> {preview(mac)}")
    print(f"   independent keys: {enc != mac}")


def rotation(server: DevServer, manager: KeyManager) -> None:
    step("Key rotation: generate, rotate twice, old versions stay readable, retire one")
    print(f"   generate_key('datasets/key') -> version {manager.generate_key('datasets/key')}")
    for _ in range(2):
        print(f"   rotate_key('datasets/key')   -> version {manager.rotate_key('datasets/key')}")
    ring = manager.get_key_ring("datasets/key")
    distinct = len(set(ring.values())) == len(ring)
    print(f"   get_key_ring(...) -> versions {sorted(ring)}, all different: {distinct}")
    old = manager.get_encryption_key("datasets/key", version=1)
    print(f"   get_encryption_key(..., version=1) -> {preview(old)}")
    manager.delete_secret("datasets/key", versions=[1], destroy=True)
    states = [
        f"v{v.version}:{'destroyed' if v.destroyed else 'current' if v.is_current else 'live'}"
        for v in manager.key_versions("datasets/key")
    ]
    print(f"   delete_secret(..., versions=[1], destroy=True); key_versions -> {' '.join(states)}")

    step("Encrypt a file, rotate the key, decrypt it anyway")
    with tempfile.TemporaryDirectory() as folder:
        plain, sealed = Path(folder) / "train.csv", Path(folder) / "train.csv.sml"
        plain.write_bytes(os.urandom(3 * (1 << 20)))
        manager.encrypt_file(plain, sealed, "datasets/key")
        header_version = manager.key_versions("datasets/key")[-1].version
        print(f"   encrypt_file(train.csv, 3 MiB) with datasets/key v{header_version}")
        print(f"   rotate_key('datasets/key') -> version {manager.rotate_key('datasets/key')}")
        manager.decrypt_file(sealed, Path(folder) / "back.csv")
        same = (Path(folder) / "back.csv").read_bytes() == plain.read_bytes()
        print(f"   decrypt_file(...) after the rotation -> identical: {same}")
        sealed.write_bytes(sealed.read_bytes()[:-1])
        try:
            manager.decrypt_file(sealed, Path(folder) / "cut.csv")
        except KeyManagementError as exc:
            print(f"   a truncated copy -> {type(exc).__name__}: {exc}")

    step("Vault Transit: the key never leaves Vault")
    server.bao("secrets", "enable", "transit")
    transit = manager.transit
    transit.ensure_key("features")
    token = transit.encrypt("features", b"row 42")
    print(f"   transit.encrypt('features', b'row 42') -> {token[:12]}...")
    transit.rotate("features")
    rewrapped = transit.rewrap("features", token)
    plaintext = transit.decrypt("features", rewrapped)
    print(f"   rotate, then rewrap -> {rewrapped[:12]}...; decrypts to {plaintext!r}")


def command_line(server: DevServer) -> None:
    step("The secureml command line, against the same server")
    cli = str(Path(sys.executable).with_name("secureml"))
    env = {**os.environ, "VAULT_ADDR": server.address, "VAULT_TOKEN": server.root_token}

    def run(*args: str, data: bytes | None = None) -> bytes:
        done = subprocess.run([cli, *args], input=data, env=env, capture_output=True, check=True)
        return done.stdout

    for args in (("keys", "generate", "cli/key"), ("keys", "rotate", "cli/key")):
        print(f"   $ secureml {' '.join(args)}\n     {run(*args).decode().strip()}")
    print("   $ secureml keys versions cli/key")
    for line in run("keys", "versions", "cli/key").decode().splitlines():
        print(f"     {line}")
    sealed = run("encrypt", "-", "-", "--key", "cli/key", data=b"rows from a pipe")
    print(
        f"   $ echo 'rows from a pipe' | secureml encrypt - - --key cli/key  -> {len(sealed)} bytes"
    )
    opened = run("decrypt", "-", "-", data=sealed)
    print(f"   $ ... | secureml decrypt - -  -> {opened.decode()!r}")


def fallbacks(server: DevServer, manager: KeyManager) -> None:
    step("Fallback: a secret Vault does not have comes from SECUREML_<NAME>")
    os.environ["SECUREML_WANDB_API_KEY"] = "wandb-" + secrets.token_hex(8)
    try:
        print(f"   get_secret('wandb_api_key') -> {preview(manager.get_secret('wandb_api_key'))}")
    finally:
        del os.environ["SECUREML_WANDB_API_KEY"]

    step("Least privilege: a read-only token reads, cannot write, and says so")
    policy = b'path "secret/data/secureml/*" { capabilities = ["read"] }'
    server.bao("policy", "write", "demo-read-only", "-", input=policy)
    token = server.bao("token", "create", "-policy=demo-read-only", "-field=token").stdout
    reader = KeyManager(vault_url=server.address, vault_token=token.decode())
    print(f"   reader.get_secret('api_key') -> {preview(reader.get_secret('api_key'))}")
    try:
        reader.set_secret("api_key", "overwritten")
    except KeyManagementError as exc:
        print(f"   reader.set_secret('api_key', ...) -> {type(exc).__name__}: {exc}")

    step("No Vault at all: development defaults, loud on purpose")
    laptop = KeyManager(use_default_fallback=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = laptop.get_encryption_key("scratch_key")
    print(f"   get_encryption_key('scratch_key') -> {preview(key)}")
    for warning in caught:
        if issubclass(warning.category, SecurityWarning):
            print(f"   SecurityWarning: {warning.message}")


def production(server: DevServer) -> None:
    step("Production style: AppRole login, a 30 s token renewed for you, status()")
    server.bao("auth", "enable", "approle")
    server.bao("write", "auth/approle/role/demo", "token_policies=demo-read-only", "token_ttl=30s")
    role_id = server.bao("read", "-field=role_id", "auth/approle/role/demo/role-id").stdout
    secret_id = server.bao(
        "write", "-f", "-field=secret_id", "auth/approle/role/demo/secret-id"
    ).stdout
    service = KeyManager(
        vault_url=server.address,
        vault_auth=AppRoleAuth(role_id.decode().strip(), secret_id.decode().strip()),
        vault_kv_version=2,  # the read-only policy may not read sys/internal/ui/mounts
    )
    print(f"   service.get_secret('api_key') -> {preview(service.get_secret('api_key'))}")
    status = service.status()
    print(
        f"   status(): reachable={status.reachable} sealed={status.sealed} "
        f"version={status.server_version} auth={status.auth_method} "
        f"token_ttl={status.token_ttl:.0f}s renewable={status.renewable} "
        f"kv={status.kv_mount} v{status.kv_version} logins={status.logins}"
    )


def main() -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="   log %(levelname)s: %(message)s"
    )
    with DevServer() as server:
        pid = server.pid
        print(f"Started an OpenBao dev server at {server.address} (pid {pid})")
        manager = KeyManager(vault_url=server.address, vault_token=server.root_token)
        seed(server, manager)
        spec_examples(server)
        set_and_get(server, manager)
        keys(manager)
        rotation(server, manager)
        command_line(server)
        fallbacks(server, manager)
        production(server)
    print(f"\nStopped the OpenBao server (pid {pid}). Done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
