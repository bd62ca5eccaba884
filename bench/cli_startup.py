"""`secureml --help` must start in under 200 ms (issue 7): measured against the
interpreter alone and `bao --help`, side by side, as medians of 15 runs each.

    .venv/bin/python bench/cli_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from secureml._devserver import bao_binary

RUNS = 15


def median_ms(argv: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    secureml = str(Path(sys.executable).with_name("secureml"))
    rows = {
        "`secureml --help`": median_ms([secureml, "--help"]),
        "`python -c pass` (the floor)": median_ms([sys.executable, "-c", "pass"]),
        "`bao --help`": median_ms([bao_binary(), "--help"]),
        "`secureml keys --help`": median_ms([secureml, "keys", "--help"]),
    }
    print("| command | median start-up | target |")
    print("| --- | ---: | ---: |")
    for name, ms in rows.items():
        target = "< 200 ms" if "secureml" in name else ""
        print(f"| {name} | {ms:.0f} ms | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
