"""Every key use passes here: audit events, counters, and notices given once.

One :class:`Observer` per manager. A public call runs inside :meth:`Observer.observed`,
which counts its errors and hands ``audit_hook`` one :class:`AccessEvent` saying what
was used (operation, name, version, source) and how it went (``ok``, ``cached``,
``stale``, ``fresh``, ``rejected`` for a ciphertext that did not authenticate, or
``error``). Never the value: an event is safe to ship anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ._counters import Counters
from ._status import AccessEvent
from ._warnings import Once, warn_caller
from .errors import (
    AuthenticationError,
    InvalidCiphertextError,
    PermissionDeniedError,
    SecurityWarning,
)

__all__ = ["Observer", "Served"]

logger = logging.getLogger("secureml.key_management")

_T = TypeVar("_T")

_REFUSALS = (PermissionDeniedError, AuthenticationError)


def _event_name(name: object) -> str:
    """What an event may say a name was: never a huge one (it would be logged whole)."""
    if not isinstance(name, str):
        return repr(type(name))
    return name if len(name) <= _MAX_EVENT_NAME else name[:64] + "..."


_MAX_EVENT_NAME = 512


class Served(NamedTuple):
    """What a call produced, and what its audit event says about it.

    Attributes:
        value: What the call returns (never put in an event).
        source: Where the value or key came from, or was written to.
        outcome: ``ok``, ``cached``, ``stale`` or ``fresh``.
        version: The version used or made, if known.
    """

    value: Any
    source: str | None
    outcome: str = "ok"
    version: int | None = None

    def __repr__(self) -> str:
        # Never the value: it is a secret or key bytes, and a repr ends up in logs and in
        # the locals an error tracker captures while an audit hook runs.
        return f"Served(source={self.source!r}, outcome={self.outcome!r}, version={self.version})"


class Observer:
    """Counters, ``audit_hook`` and notices given once, for one manager. Thread-safe.

    Args:
        audit_hook: Called with an :class:`AccessEvent` after every access; what it
            raises is logged (once per kind), never propagated.
        on_refused: Called with a :class:`PermissionDeniedError` or
            :class:`AuthenticationError` any observed call raised, and the name it was
            about: whatever the call was, the core then forgets what that identity read.
    """

    def __init__(
        self,
        audit_hook: Callable[[AccessEvent], object] | None,
        on_refused: Callable[[Exception, str], object] | None = None,
    ) -> None:
        if audit_hook is not None and not callable(audit_hook):
            raise TypeError("audit_hook must be callable with one AccessEvent")
        self.audit_hook = audit_hook
        self._on_refused = on_refused
        self.counts = Counters()
        self._notices = Once()

    # -- events ----------------------------------------------------------------------

    def observed(
        self,
        operation: str,
        name: str,
        call: Callable[..., Served],
        *args: Any,
        version: int | None = None,
    ) -> Any:
        """Run ``call(*args)``, emit its event, return its value.

        Args:
            version: The version the call is about, if known before it runs (an event
                for a call that fails still names it).
        """
        started = time.perf_counter()
        try:
            served = call(*args)
        except Exception as exc:
            self.failed(operation, name, exc, version=version, started=started)
            raise
        if self.audit_hook is not None:
            self._emit(
                operation,
                name,
                source=served.source,
                version=version if served.version is None else served.version,
                outcome=served.outcome,
                error=None,
                started=started,
            )
        return served.value

    def failed(
        self,
        operation: str,
        name: str,
        exc: BaseException,
        *,
        version: int | None = None,
        started: float | None = None,
    ) -> None:
        """Count a call's error and emit its event (``rejected`` for a ciphertext that
        does not open, ``error`` otherwise); a refusal also tells the core to forget.
        Called directly for a ciphertext too malformed to name its key (``name=""``)."""
        self.counts.error(type(exc).__name__)
        if self._on_refused is not None and isinstance(exc, _REFUSALS):
            self._on_refused(exc, name)
        if self.audit_hook is not None:
            self._emit(
                operation,
                name,
                source=None,
                version=version,
                outcome="rejected" if isinstance(exc, InvalidCiphertextError) else "error",
                error=type(exc).__name__,
                started=time.perf_counter() if started is None else started,
            )

    def _emit(
        self,
        operation: str,
        name: object,
        *,
        source: str | None,
        version: int | None,
        outcome: str,
        error: str | None,
        started: float,
    ) -> None:
        hook = self.audit_hook
        if hook is None:
            return
        event = AccessEvent(
            operation=operation,
            name=_event_name(name),
            source=source,
            version=version if type(version) is int and version > 0 else None,
            outcome=outcome,
            error=error,
            duration=time.perf_counter() - started,
        )
        try:
            hook(event)
        except Exception as exc:  # an audit sink must never break the call it observes
            self.log_once(("audit", type(exc).__name__), "audit_hook raised %r", exc)

    # -- notices ---------------------------------------------------------------------

    def log_once(self, condition: tuple[str, str], message: str, *args: object) -> None:
        """Log ``message`` at WARNING once (outage and stale notices: once per outage)."""
        if not self._notices.first(condition):
            return
        logger.warning(message, *args)

    def warn_dev_default(self, name: str) -> None:
        """The first time ``name`` is served an insecure dev default: say so, loudly."""
        if not self._notices.first(("dev-default", name)):
            return
        warn_caller(
            f"serving an INSECURE deterministic development default for {name!r}: anyone "
            "can compute it. Store the secret in Vault or the environment, and set "
            "use_default_fallback=False outside development.",
            SecurityWarning,
        )

    def recovered(self) -> None:
        """The primary answered: outage and stale notices may be given again."""
        self._notices.forget(
            lambda notice: isinstance(notice, tuple) and notice[0] in ("outage", "stale")
        )
