"""Warnings that point at the caller's line, however deep inside secureml they start,
and notices given once."""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path

from ._process import reset_after_fork

_PACKAGE = str(Path(__file__).resolve().parent.parent)


def warn_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the first frame outside the secureml package as location."""
    level = 2  # 1 would be this function, 2 its caller
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


class Once:
    """Remembers which notices were given, so each is given once. Thread- and fork-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given: set[Hashable] = set()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the notices given stay given)."""
        self._lock = threading.Lock()

    def first(self, notice: Hashable) -> bool:
        """Whether ``notice`` is given now for the first time (it then counts as given)."""
        with self._lock:
            if notice in self._given:
                return False
            self._given.add(notice)
            return True

    def forget(self, match: Callable[[Hashable], bool]) -> None:
        """Let the notices ``match`` accepts be given again."""
        if self._given:
            with self._lock:
                self._given = {n for n in self._given if not match(n)}
