"""The Vault token's lifecycle: log in, renew before expiry, log in again when needed.

Modelled on Vault's own LifetimeWatcher, but driven by use rather than a background
thread: every request asks :meth:`TokenSession.token` for a token, which renews it once
about two thirds of its TTL has passed (with 10-20 % jitter, so a fleet does not renew
in step), logs in again before expiry once renewals stop extending it (max TTL), and
logs in again after the server rejects it. Thread-safe and single-flight: however many
threads find the token due, one of them talks to Vault and the others use its result.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .._auth import Login, VaultAuth
from .._bridge import blocking, pause
from .._process import reset_after_fork
from ..errors import AuthenticationError, PermissionDeniedError, VaultUnavailableError
from ._vault_errors import translated

if TYPE_CHECKING:
    import hvac

logger = logging.getLogger("secureml.key_management")

#: Renew (or log in again) once this share of the TTL is gone, less the jitter.
RENEW_FRACTION = 2 / 3
JITTER = (0.10, 0.20)
#: After a renewal failed because Vault was unavailable, try again this much later.
RENEW_RETRY_SECONDS = 1.0
#: Count a token as expired this much early (at most a quarter of its TTL): Vault
#: stores a batch token's creation time in whole seconds, so it may die up to 1 s
#: before the TTL it reported has passed here.
EXPIRY_MARGIN_SECONDS = 1.0
#: A renewal that returns less than the previous TTL minus this has hit the max TTL.
CAPPED_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class _State:
    login: Login
    generation: int
    expires_at: float | None  # None: never expires (e.g. a root token)
    refresh_at: float | None  # when to renew, or log in again; None: never
    relogin: bool  # True once renewing no longer helps: the next refresh logs in


def _jitter() -> float:
    return random.uniform(*JITTER)  # noqa: S311 - spreading load, not cryptography


class TokenSession:
    """Hands out a valid token for an auth method; renews and logs in again as due.

    Args:
        auth: The auth method.
        url: The Vault address, for error messages.
        namespace: The namespace logins go to, for error messages.
        clock: Monotonic seconds; injectable for tests.
        jitter: Returns a fraction within ``JITTER``; injectable for tests.
        first_login_delay: Wait a random time up to this many seconds before this
            process's first login (never past the call's deadline), so that many
            workers started at once do not all log in in the same instant.

    Attributes:
        logins: Logins performed by a method that can log in again (not plain tokens).
        renewals: Successful token renewals.
    """

    def __init__(
        self,
        auth: VaultAuth,
        *,
        url: str,
        namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = _jitter,
        first_login_delay: float = 0.0,
    ) -> None:
        self.auth = auth
        self._first_login_delay = first_login_delay
        self._url = url
        self._where = f"namespace {namespace!r}" if namespace else "the root namespace"
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self._state: _State | None = None
        reset_after_fork(self)
        self._generation = 0
        self.logins = 0
        self.renewals = 0

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a login in flight stayed in the parent);
        the token stays valid and is kept; counts start again, as the manager's do."""
        self._lock = threading.Lock()
        self.logins = 0
        self.renewals = 0

    # -- what requests use -----------------------------------------------------------

    def token(self, client: hvac.Client) -> tuple[str, int]:
        """A token valid now and its generation (report it to :meth:`rejected`).

        Raises:
            AuthenticationError: Login failed, or a token that cannot be replaced expired.
            VaultUnavailableError: Vault could not be reached to log in.
        """
        state = self._state
        if state is not None and not self._due(state) and not self._expired(state):
            return state.login.token, state.generation
        # On an event loop, on a thread: an auth method may block (files, a cloud SDK),
        # and the lock is held across requests, which a greenlet must never do.
        return blocking(self._token_locked, client)

    def _token_locked(self, client: hvac.Client) -> tuple[str, int]:
        """:meth:`token` when it is due: under the lock, logging in or renewing."""
        # Another thread may be logging in; wait for it, but not past this call's deadline.
        deadline = getattr(client.adapter, "call_deadline", None)
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise VaultUnavailableError(
                f"gave up waiting for another thread's login to Vault at {self._url} "
                "within this call's deadline"
            )
        try:
            state = self._renewed(client)
            return state.login.token, state.generation
        finally:
            self._lock.release()

    def _renewed(self, client: hvac.Client) -> _State:
        """The state after logging in or renewing as due (the lock held)."""
        state = self._state
        if state is None or self._expired(state):
            return self._fresh(client, state)
        if self._due(state):
            return self._refresh(client, state)
        return state

    def rejected(self, generation: int) -> bool:
        """Vault rejected the token of ``generation``; return whether to log in and retry.

        Only the first thread to report a generation drops it; the others find the
        newer token when they ask again.
        """
        if not self.auth.can_login_again:
            return False
        blocking(self._drop, generation)  # the lock may be a login's: wait on a thread
        return True

    def _drop(self, generation: int) -> None:
        with self._lock:
            if self._state is not None and self._state.generation == generation:
                self._state = None

    # -- lifecycle -------------------------------------------------------------------

    def _due(self, state: _State) -> bool:
        return state.refresh_at is not None and self._clock() >= state.refresh_at

    def _expired(self, state: _State) -> bool:
        return state.expires_at is not None and self._clock() >= state.expires_at

    def _login(self, client: hvac.Client) -> Login:
        login = self.auth.login(client)
        return _looked_up(client, login) if login.ttl is None else login

    def _fresh(self, client: hvac.Client, old: _State | None) -> _State:
        if old is not None and not self.auth.can_login_again:
            raise AuthenticationError(
                f"the Vault token for {self._url} has expired or was revoked, and a plain "
                "token cannot log in again: supply a new token, or use an auth method such "
                "as AppRoleAuth that can"
            ).in_cli_words(
                f"the Vault token for {self._url} has expired or was revoked: log in again "
                "(bao login) or set a new BAO_TOKEN"
            )
        client.token = ""  # a stale token must not ride along on a login request
        if old is None and self._generation == 0 and self._first_login_delay > 0:
            self._spread_first_login(client)
        login = translated(
            lambda: self._login(client),
            url=self._url,
            action=f"log in with {self.auth.method} in {self._where}",
            where="",
            login=True,
        )
        self.logins += int(self.auth.can_login_again)
        self._generation += 1
        state = self._schedule(login, relogin=False, generation=self._generation)
        self._state = state
        logger.debug("vault %s login: token generation %d", self.auth.method, state.generation)
        return state

    def _spread_first_login(self, client: hvac.Client) -> None:
        delay = random.uniform(0.0, self._first_login_delay)  # noqa: S311 - load spreading
        deadline = getattr(client.adapter, "call_deadline", None)
        if deadline is not None:
            delay = min(delay, max(0.0, (deadline - time.monotonic()) / 2))
        pause(delay)

    def _refresh(self, client: hvac.Client, state: _State) -> _State:
        if state.relogin:
            return self._replace_token(client, state)
        client.token = state.login.token
        try:
            response = translated(
                client.auth.token.renew_self, url=self._url, action="renew the token", where=""
            )
        except VaultUnavailableError:
            return self._retry_later(state)  # the token is still valid meanwhile
        except (AuthenticationError, PermissionDeniedError):
            # Revoked, or not allowed renew-self (no default policy): renewing is over.
            return self._replace_token(client, state)
        self.renewals += 1
        auth = response.get("auth") or {}
        new_ttl = float(auth.get("lease_duration") or 0)
        login = Login(state.login.token, new_ttl or None, bool(auth.get("renewable")), "service")
        # A renewal that no longer restores the TTL has hit the max TTL: the token will
        # die, so the next refresh logs in again, before it expires.
        capped = new_ttl + CAPPED_SLACK_SECONDS < (state.login.ttl or 0.0)
        renewed = self._schedule(login, relogin=capped, generation=state.generation)
        self._state = renewed
        logger.debug("vault token renewed: generation %d, ttl %.0fs", state.generation, new_ttl)
        return renewed

    def _replace_token(self, client: hvac.Client, state: _State) -> _State:
        """Renewing no longer helps (max TTL reached, or renewal refused): log in again
        if this method can, keeping the current token while that fails; a plain token
        is kept until the server rejects it (and the error then says why)."""
        if self.auth.can_login_again:
            try:
                return self._fresh(client, None)
            except (VaultUnavailableError, AuthenticationError) as exc:
                logger.warning("%s; the current token stays in use until it expires", exc)
                return self._retry_later(replace(state, relogin=True))
        kept = replace(state, refresh_at=None, relogin=True)
        self._state = kept
        return kept

    def _retry_later(self, state: _State) -> _State:
        """Keep ``state``'s token; refresh again shortly (never past its expiry)."""
        retry_at = self._clock() + RENEW_RETRY_SECONDS
        if state.expires_at is not None:
            retry_at = min(retry_at, state.expires_at)
        later = _State(state.login, state.generation, state.expires_at, retry_at, state.relogin)
        self._state = later
        return later

    def _schedule(self, login: Login, *, relogin: bool, generation: int) -> _State:
        now = self._clock()
        if not login.ttl:
            return _State(login, generation, None, None, relogin=False)
        expires_at = now + login.ttl - min(EXPIRY_MARGIN_SECONDS, login.ttl / 4)
        refresh_at = now + login.ttl * RENEW_FRACTION * (1 - self._jitter())
        renewable = login.renewable and login.token_type != "batch"  # noqa: S105 - a kind
        if relogin or not renewable:
            # Renewing cannot help: log in again before expiry, if this method can.
            can_login = self.auth.can_login_again
            return _State(login, generation, expires_at, refresh_at if can_login else None, True)
        return _State(login, generation, expires_at, refresh_at, False)


def _looked_up(client: hvac.Client, login: Login) -> Login:
    """Ask Vault what it knows of a token we were handed (TTL, renewable, type).

    A token without the ``default`` policy may not look itself up; it is then used as
    is, and a token that is simply wrong is reported by the first real request.
    """
    import hvac.exceptions

    client.token = login.token
    try:
        data = (client.auth.token.lookup_self() or {}).get("data") or {}
    except hvac.exceptions.Forbidden:
        return login
    return Login(
        token=login.token,
        ttl=float(data.get("ttl") or 0) or None,
        renewable=bool(data.get("renewable")),
        token_type=str(data.get("type") or "service"),
    )
