"""What an error tracker would capture from an exception: the locals of its frames."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path

#: The tests' own frames hold what the test passed in; only the library's are checked.
TESTS = str(Path(__file__).resolve().parents[1])


def rendered_locals(error: BaseException) -> Iterator[tuple[str, str, str]]:
    """(frame, name, repr) of every local of every library frame ``error`` carries,
    chained exceptions included, rendered as ``capture_locals=True`` renders them."""
    summary = traceback.TracebackException(
        type(error), error, error.__traceback__, capture_locals=True
    )
    seen: set[int] = set()
    todo = [summary]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for frame in current.stack:
            if frame.filename.startswith(TESTS):
                continue
            for name, value in (frame.locals or {}).items():
                yield f"{frame.filename}:{frame.lineno} {frame.name}", name, value
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
