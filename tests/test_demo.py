"""`make demo`'s script runs start to finish and shows no key in full."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


@pytest.mark.integration
def test_demo_runs_and_only_previews_keys() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Done." in done.stdout
    assert "SecurityWarning" in done.stdout
    # A 32-byte key in hex (64) or base64 (43+) would show as a long unbroken run.
    assert not re.search(r"[0-9a-fA-F]{32,}|[A-Za-z0-9+/_-]{40,}", done.stdout)
