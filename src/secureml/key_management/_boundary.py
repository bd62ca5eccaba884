"""Exceptions leave the library without the locals of the frames they passed through.

Error trackers (Sentry's ``include_local_variables``, on by default), ``pytest
--showlocals``, rich's ``show_locals`` and ``traceback.TracebackException(...,
capture_locals=True)`` render the locals of every frame an exception carries, and of
the exceptions chained to it. Below a public call those locals hold tokens, passwords,
values being written and key bytes, in our frames and in hvac's and requests'. So every
public entry point clears the frames below it as an exception leaves: the traceback
keeps every file, line and function (it still says *where*), but no frame of this
library, its dependencies or the standard library keeps a local. The caller's own
frames (callbacks such as ``progress`` or ``audit_hook``, readers and writers, custom
backends) keep theirs, as do generator frames (clearing one would close it).

Two forms, one rule (:func:`scrub`): :func:`guarded` wraps a function, and hot methods
(where a wrapper's extra call would cost more than the method) inline
``except BaseException as exc: scrub(exc); raise`` and delete their own sensitive
arguments first.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = ["guarded", "guarded_class", "scrub", "scrubs_inline"]

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)


def _frames(tb: TracebackType | None) -> list[FrameType]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


#: Where the frames whose locals are cleared come from: this library and what it calls
#: with secrets (hvac, requests, urllib3, cryptography, tink and its protobuf, the
#: standard library: json, http.client, ssl...). The caller's own code, callbacks
#: included, keeps its locals.
_LIBRARIES = frozenset(
    {"secureml", "hvac", "requests", "urllib3", "cryptography", "certifi", "idna", "tink", "google"}
) | frozenset(getattr(sys, "stdlib_module_names", ()))
#: A frame of a generator or coroutine may belong to one still suspended: clearing it
#: would close it under its owner (Python 3.11 does).
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _ours(frame: FrameType) -> bool:
    if frame.f_code.co_flags & _RESUMABLE:
        return False
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and module.partition(".")[0] in _LIBRARIES


def scrub(exc: BaseException) -> None:
    """Clear the locals of the finished frames ``exc`` passed through, and of those of
    the exceptions chained to it inside the call.

    Call it in the ``except`` block of the boundary frame: that frame, still running, is
    the first of ``exc``'s traceback and is left alone (it deletes its own arguments).
    A chained exception is the call's own when it was caught in one of the call's
    frames; one the caller was already handling (its ``__context__`` when the call
    began) is the caller's, and is not touched.
    """
    ours: set[int] = set()
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    first = True
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = _frames(current.__traceback__)
        if not first and (not frames or id(frames[0]) not in ours):
            continue  # not raised inside this call: the caller's own exception
        ours.update(id(frame) for frame in frames)
        for frame in frames[1:] if first else frames:
            if _ours(frame):
                with contextlib.suppress(RuntimeError):  # still running: another thread's
                    frame.clear()
        first = False
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += getattr(current, "exceptions", ())  # an exception group's members


def guarded(function: _F) -> _F:
    """``function``, clearing frame locals (:func:`scrub`) when an exception leaves it;
    its own arguments go first."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            del args, kwargs
            scrub(exc)
            raise

    return call  # type: ignore[return-value]


def guarded_class(cls: _C) -> _C:
    """``cls`` with every public method, ``__init__`` and property getter
    :func:`guarded`, except those already scrubbing inline (marked with
    ``__secureml_scrubs__``)."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property) and member.fget is not None:
            setattr(cls, name, member.getter(guarded(member.fget)))
        elif isinstance(member, (staticmethod, classmethod)):
            setattr(cls, name, type(member)(guarded(member.__func__)))
        elif callable(member) and not getattr(member, "__secureml_scrubs__", False):
            setattr(cls, name, guarded(member))
    return cls


def scrubs_inline(function: _F) -> _F:
    """Mark a method that scrubs inline, so :func:`guarded_class` leaves it unwrapped."""
    function.__secureml_scrubs__ = True  # type: ignore[attr-defined]
    return function
