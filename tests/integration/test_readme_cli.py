"""The README's command-line examples run as written, line by line, against
``secureml dev-server --seed`` (the setup the README tells a newcomer to use)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_dev_server import dev_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECUREML = str(Path(sys.executable).with_name("secureml"))
MARKER = "every line of this block runs as written"


def readme_cli_lines() -> list[str]:
    """The commands of the README block that follows :data:`MARKER` (comments cut)."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER) :]
    block = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert block is not None, "the README's runnable command-line block is gone"
    lines = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command:
            lines.append(command)
    return lines


@pytest.fixture(scope="module")
def seeded() -> Iterator[dict[str, str]]:
    with dev_server("--seed") as (exports, lines):
        assert any(line.startswith("# seeded: ") for line in lines), lines
        yield exports


def test_every_readme_command_runs_as_written(seeded: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN TEST KEY-----\nabc\n-----END TEST KEY-----\n")
    (tmp_path / "train.parquet").write_bytes(os.urandom(200_000))
    (tmp_path / "big.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("a,b\n1,2\n")
    path = f"{os.path.dirname(SECUREML)}:{os.environ['PATH']}"
    env = {**os.environ, **seeded, "PATH": path, "HOME": str(tmp_path)}
    for line in readme_cli_lines():
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"README line failed: {line}\n{done.stderr}"
    assert (tmp_path / "train.copy.parquet").read_bytes() == (
        tmp_path / "train.parquet"
    ).read_bytes()
    assert (tmp_path / "row.token").read_text().startswith("vault:v1:")
