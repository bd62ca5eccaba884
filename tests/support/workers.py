"""An OpenBao server that writes an audit log, for counting the logins of workers.

OpenBao 2 enables audit devices only from its configuration file (not through the API),
so worker tests share one server started with a file audit device. Each test makes an
AppRole of its own (a fresh mount), so counting ``auth/<mount>/login`` answers in the
log counts that test's logins and nobody else's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from secureml._devserver import DevServer
from secureml.key_management import AppRoleAuth, KeyManager, KeyManagerSpec


@dataclass(frozen=True)
class AppRole:
    """An AppRole login on the audited server (its secret id stays in the test)."""

    mount: str
    role_id: str
    secret_id: str


class AuditedServer:
    """A dev server whose every request and answer is written to :attr:`audit_log`."""

    def __init__(self, workdir: Path) -> None:
        self.audit_log = workdir / "audit.log"
        config = (
            'audit "file" "workers" {\n'
            f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n'
            "}\n"
        )
        self.server = DevServer(extra_config=config)

    def start(self) -> AuditedServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def root_token(self) -> str:
        return self.server.root_token

    def approle(self, vault_path: str, *, ttl: str = "300s") -> AppRole:
        """A fresh AppRole mount with one role that may read and write ``vault_path``."""
        tag = uuid.uuid4().hex[:10]
        mount, policy = f"approle-{tag}", f"workers-{tag}"
        can = '{ capabilities = ["read", "create", "update"] }'
        rules = (
            f'path "secret/data/{vault_path}/*" {can}\n'
            f'path "secret/metadata/{vault_path}/*" {can}\n'
            'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n'
        )
        bao = self.server.bao
        bao("policy", "write", policy, "-", input=rules.encode())
        bao("auth", "enable", f"-path={mount}", "approle")
        role = f"auth/{mount}/role/worker"
        bao("write", role, f"token_policies={policy}", f"token_ttl={ttl}")
        role_id = json.loads(bao("read", "-format=json", f"{role}/role-id").stdout)
        secret = json.loads(
            bao("write", "-format=json", "-f", f"auth/{mount}/role/worker/secret-id").stdout
        )
        return AppRole(mount, str(role_id["data"]["role_id"]), str(secret["data"]["secret_id"]))

    def logins(self, mount: str, *, settle: float = 0.3) -> int:
        """Successful logins at ``auth/<mount>/login`` so far (the log is written as
        answers go out; ``settle`` lets the last lines land)."""
        time.sleep(settle)
        count = 0
        for line in _lines(self.audit_log):
            entry = json.loads(line)
            if (
                entry.get("type") == "response"
                and entry.get("request", {}).get("path") == f"auth/{mount}/login"
                and not entry.get("error")
            ):
                count += 1
        return count

    def failed_logins(self, mount: str) -> int:
        """Login answers at ``auth/<mount>/login`` that carried an error."""
        return sum(
            1
            for line in _lines(self.audit_log)
            if (entry := json.loads(line)).get("type") == "response"
            and entry.get("request", {}).get("path") == f"auth/{mount}/login"
            and entry.get("error")
        )


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        return iter(())
    return iter([line for line in path.read_text().splitlines() if line.strip()])


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker test needs: the role whose logins it counts, the spec it ships
    (the secret id by reference, in ``credential_env``) and a root manager for the
    driver's own reads and writes, which log in on no counted mount."""

    role: AppRole
    vault_path: str
    spec: KeyManagerSpec
    root: KeyManager


def worker_setup(server: AuditedServer, *, key: str, credential_env: str) -> WorkerSetup:
    """A fresh folder and AppRole, managed key ``key`` made there with the root token,
    and the spec of an AppRole manager with its secret id in ``credential_env``."""
    vault_path = f"test-{uuid.uuid4().hex[:12]}"
    role = server.approle(vault_path)
    root = KeyManager(
        vault_url=server.address, vault_token=server.root_token, vault_path=vault_path
    )
    root.generate_key(key)
    parent = KeyManager(
        vault_url=server.address,
        vault_auth=AppRoleAuth(role.role_id, role.secret_id, mount=role.mount),
        vault_path=vault_path,
    )
    return WorkerSetup(role, vault_path, parent.spec(credential_env=credential_env), root)
