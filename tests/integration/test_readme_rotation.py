"""The README's "Key rotation" runbook, Transit and encryption examples run verbatim, the
runbook with a token that holds only the rotation policy the README shows."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from secureml._devserver import DevServer
from secureml.key_management import KeyManager

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    """The README text under heading ``title``, up to the next heading of its level or
    above (lines inside code fences are never headings)."""
    level = len(title.split(" ", maxsplit=1)[0])
    lines: list[str] = []
    fenced = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"(#+) ", line)
        if lines and heading and len(heading.group(1)) <= level:
            break
        if lines or line == title:
            lines.append(line)
    assert lines, f"the README has no {title!r} section"
    return "\n".join(lines) + "\n"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_rotation_runbook_runs_with_the_rotation_policy(
    bao_server: DevServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rotation = section("## Key rotation").split("\n### Vault Transit")[0]
    (runbook,) = blocks(rotation, "python")
    (policy,) = blocks(rotation, "hcl")
    name = f"rotation-{uuid.uuid4().hex[:8]}"
    bao_server.bao("policy", "write", name, "-", input=policy.encode())
    token = bao_server.bao("token", "create", f"-policy={name}", "-field=token", "-ttl=5m")
    monkeypatch.setenv("SECUREML_VAULT_URL", bao_server.address)
    monkeypatch.setenv("SECUREML_VAULT_TOKEN", token.stdout.decode().strip())
    try:
        exec(compile(runbook, "README.md (Key rotation)", "exec"), {})  # noqa: S102
    finally:
        root = KeyManager(bao_server.address, bao_server.root_token)
        root.delete_secret("runbook/datasets", destroy=True)
    printed = capsys.readouterr().out.strip()
    assert printed == "[(1, True, False), (2, False, True)]"
    assert printed in runbook  # the output shown in the README is what it prints


def test_transit_example_runs(bao_server: DevServer, vault_path: str) -> None:
    (example,) = blocks(section("### Vault Transit"), "python")
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    km = KeyManager(bao_server.address, bao_server.root_token, vault_path)
    exec(compile(example, "README.md (Vault Transit)", "exec"), {"km": km})  # noqa: S102


def test_encryption_example_runs(
    bao_server: DevServer,
    vault_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first: the checkpoints example below it has a test of its own (README examples).
    example = blocks(section("## Encrypting data and files"), "python")[0]
    mounts = bao_server.bao("secrets", "list", "-format=json").stdout.decode()
    if '"transit/"' not in mounts:
        bao_server.bao("secrets", "enable", "transit")
    km = KeyManager(bao_server.address, bao_server.root_token, vault_path)
    km.transit.ensure_key("features")
    km.generate_key("models/key")
    monkeypatch.chdir(tmp_path)
    parquet = os.urandom(3 * (1 << 20) + 11)
    (tmp_path / "train.parquet").write_bytes(parquet)
    (tmp_path / "weights.bin").write_bytes(b"weights")
    exec(compile(example, "README.md (Encrypting)", "exec"), {"km": km})  # noqa: S102
    assert (tmp_path / "train.parquet").read_bytes() == parquet  # decrypted back in place
    assert km.decrypt((tmp_path / "weights.sml").read_bytes()) == b"weights"
    assert capsys.readouterr().out.split() == ["1048576", "2097152", "3145728", "3145739"]
