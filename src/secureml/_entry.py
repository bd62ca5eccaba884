"""The ``secureml`` console script: the command line, or the one line that installs it.

``pip install secureml`` brings the library alone; the command line's own dependencies
(click, rich) come with the ``cli`` extra. Without them, ``secureml`` says so instead of
ending in a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

#: What the command line imports that the library does not need.
CLI_MODULES = ("click", "rich")


def main() -> None:
    """Run the command line, or say how to install it (exit 1)."""
    missing = [name for name in CLI_MODULES if not _importable(name)]
    if missing:
        sys.stderr.write(
            f"secureml: error: the command line needs {' and '.join(missing)}, which come "
            "with its extra: pip install 'secureml[cli]'\n"
        )
        sys.exit(1)
    from .cli import main as run

    run()


def _importable(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it (rich is slow to
    import, and ``--help`` must stay quick)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name] is not None  # None: blocked on purpose
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
