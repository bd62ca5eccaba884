"""``secureml dev-server`` as a newcomer runs it: a real process, its export lines read."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SECUREML = str(Path(sys.executable).with_name("secureml"))
#: The lines it prints before it waits: a header, four exports, the cluster port, the
#: mounts and (with --seed) what it stored.
HEADER_LINES = 8


@contextmanager
def dev_server(*args: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """``secureml dev-server ARGS`` until the block ends (stopped with Ctrl-C's SIGINT):
    the variables its export lines set, and the lines it printed."""
    process = subprocess.Popen(
        [SECUREML, "dev-server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(HEADER_LINES)]  # type: ignore[union-attr]
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        yield exports, lines
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
