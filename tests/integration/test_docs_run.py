"""The Python examples in docs/*.md run as written against a real server (with
``BAO_ADDR`` and ``BAO_TOKEN`` exported, as ``secureml dev-server`` prints them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secureml._devserver import DevServer

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_example_runs(
    page: Path, bao_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("SECUREML_VAULT_URL", "SECUREML_VAULT_TOKEN", "VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("BAO_ADDR", bao_server.address)
    monkeypatch.setenv("BAO_TOKEN", bao_server.root_token)
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    assert blocks
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{page.name} block {number}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # say which block, as written
            pytest.fail(f"{page.name} block {number} failed: {type(exc).__name__}: {exc}")
