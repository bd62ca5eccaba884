"""How requests reach Vault: retries, deadlines, and a redirect policy that keeps the token home.

An hvac adapter, so every hvac call (KV, auth, token, sys) goes through the same rules:

- Retries, with exponential backoff and jitter: on a connection that failed or broke, on
  412 (a standby that has not caught up), 429 (honouring ``Retry-After``) and 503 (not
  sealed) - answers that mean the request was not processed. On 500, 502 and 504 only
  when replaying is harmless. Never on other 4xx, nor on 501.
- Unknown outcomes: a request that may have been processed (the connection broke after
  it was sent, or a gateway answered 500/502/504) is replayed only when that is harmless:
  reads, token renewals and lookups, and KV v2 check-and-set writes. Otherwise the caller
  gets :class:`~secureml.key_management.WriteOutcomeUnknownError`. Logins are not
  replayed either: a repeat could use up a single-use AppRole secret ID.
- Deadlines: a request, retries included, ends within ``timeout`` x attempts plus
  backoff, and within the deadline of the call it belongs to (``call_deadline``). A
  watchdog (:mod:`._deadline`) cuts the connection at that deadline, so a server that
  drips bytes cannot hold a call.
- Redirects: requests would resend ``X-Vault-Token`` to whatever host a redirect names.
  Here at most one 307/308 hop is followed, to its ``Location`` on a configured origin
  only, never https -> http.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import requests
import urllib3
from hvac.adapters import JSONAdapter
from urllib3.exceptions import InsecureRequestWarning

from .._bridge import pause
from ..errors import VaultError, VaultUnavailableError, WriteOutcomeUnknownError
from . import _vault_http as http
from ._deadline import DeadlinePassedError, on_new_connection
from ._vault_cluster import INDEX_HEADER, AddressBook, Consistency
from ._vault_cluster import origin as _origin
from ._vault_errors import format_errors

#: The request was not processed: safe to send again, whatever it was.
NOT_PROCESSED_STATUSES = frozenset({412, 429, 503})
#: A gateway or Vault failed, perhaps after processing: only harmless requests are resent.
MAYBE_PROCESSED_STATUSES = frozenset({500, 502, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
FOLLOWED_REDIRECTS = frozenset({307, 308})  # the ones that keep the method and body
#: Statuses hvac turns into its own exception types (translated in _vault_errors).
HVAC_STATUSES = frozenset({400, 401, 403, 404, 429, 500, 501, 502, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "LIST", "OPTIONS"})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0
RETRY_AFTER_CAP_SECONDS = 5.0


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _joined(node: str, url: str) -> str:
    """``url`` on ``node``, exactly as hvac's ``urljoin`` joins them (each stripped of
    its slashes at both ends), without its per-call cost."""
    return node.strip("/") + "/" + url.strip("/")


def _is_login(path: str) -> bool:
    return path.startswith("/v1/auth/") and "/login" in path


def _replayable(method: str, url: str, kwargs: dict[str, Any]) -> bool:
    """Whether sending the request twice is harmless.

    Reads are; so are token renewals and lookups, and KV v2 check-and-set writes (a
    replay of one that landed fails its CAS). Logins are not: a single-use secret ID
    would be spent by the first, and the token it minted orphaned.
    """
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    path = _path(url).rstrip("/")
    if path.startswith("/v1/auth/token/") and path.endswith(("/renew-self", "/lookup-self")):
        return True
    body = kwargs.get("json")
    options = body.get("options") if isinstance(body, dict) else None
    return isinstance(options, dict) and "cas" in options


def _sealed(response: requests.Response) -> bool:
    return response.status_code == 503 and "sealed" in response.text.lower()


def _during_handshake(detail: str) -> bool:
    """Whether an SSL error's text says the handshake failed (so nothing was sent)."""
    markers = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "handshake", "certificate")
    return any(marker in detail for marker in markers)


def _leaderless(response: requests.Response) -> bool:
    """A standby during an election: it could not forward, so it did nothing."""
    return response.status_code == 500 and "active cluster node not found" in response.text


#: Sent values shorter than this are not looked for in an answer (nothing secret is
#: that short, and a short one would blank out unrelated text).
_SHORTEST_ECHO = 8


def _forget_echoes(
    response: requests.Response, token: str | None, headers: dict[str, str], kwargs: Any
) -> None:
    """Blank out of a refusal's body what the request carried that may be secret (the
    token, a login's credentials): a proxy or a server that echoes the request in its
    error strings would put them in our exception's message, and from there in logs."""
    sent = [v for k, v in headers.items() if "token" in k.lower() or "authorization" in k.lower()]
    if token:
        sent.append(token)
    _text_leaves(kwargs.get("json"), sent)
    if isinstance(kwargs.get("data"), str):
        sent.append(kwargs["data"])
    content = response._content
    if not isinstance(content, bytes) or not content:
        return
    forms = sorted(
        {form for value in sent if len(value) >= _SHORTEST_ECHO for form in _echo_forms(value)},
        key=len,
        reverse=True,  # the longest first: a form may hold a shorter one
    )
    if not forms:
        return
    # Vault's JSON: each string decoded (however the server escaped it), cleared; a body
    # that is not JSON has its bytes cleared alone.
    with contextlib.suppress(ValueError, RecursionError):
        content = json.dumps(_cleared(json.loads(content), forms)).encode()
    for form in forms:
        content = content.replace(form.encode("utf-8", "replace"), _REDACTED.encode())
    response._content = content
    if isinstance(response, http.Answer):
        response._decoded = http.UNDECODED  # a copy decoded before this would hold them


#: What an echoed secret is replaced with.
_REDACTED = "[redacted]"


def _echo_forms(value: str) -> set[str]:
    """``value`` as an echo may show it: as sent, escaped as a JSON string (once, as
    Go's encoder does it, and twice: a request echoed in an error that is itself JSON),
    and percent-encoded."""
    once = json.dumps(value)[1:-1]
    go = once.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return {value, once, go, json.dumps(once)[1:-1], quote(value, safe=""), quote_plus(value)}


def _cleared(document: Any, forms: list[str]) -> Any:
    """``document`` (decoded JSON) with every form blanked out of its strings."""
    if isinstance(document, str):
        for form in forms:
            document = document.replace(form, _REDACTED)
        return document
    if isinstance(document, dict):
        return {_cleared(k, forms): _cleared(v, forms) for k, v in document.items()}
    if isinstance(document, list):
        return [_cleared(item, forms) for item in document]
    return document


def _text_leaves(value: object, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _text_leaves(item, into)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _text_leaves(item, into)


def _vault_errors(response: requests.Response) -> str:
    """Vault's own error strings from an answer, which name paths, never secrets."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    return format_errors(errors)


@dataclass(frozen=True)
class _Broken:
    """A connection that failed or broke: what it was, and whether to send it again."""

    kind: str
    replayable: bool
    tls: str | None = None  # the TLS failure, if that is what it was


@dataclass(slots=True)
class _Tries:
    """Where one request stands: which node, which round of retries, which redirect."""

    nodes: tuple[str, ...]
    retries: int
    deadline: float
    cursor: int = 0
    in_round: int = 0
    rounds: int = 0
    target: str | None = None  # set by a redirect
    hopped: bool = False
    sealed: int = 0  # nodes found sealed in this round

    @property
    def node(self) -> str:
        return self.nodes[self.cursor % len(self.nodes)]


class PolicyAdapter(JSONAdapter):  # type: ignore[misc]
    """hvac's JSON adapter with secureml's retry, deadline and redirect rules (module doc).

    Per request, ``retries=`` overrides the adapter's retries, ``bare=True`` sends
    neither token nor namespace (``sys/health`` is root-only and needs neither), and
    ``replayable=`` says whether sending the request twice is harmless when the path
    alone cannot tell (Transit's encrypt and decrypt are POSTs that change nothing).

    Args:
        retries: Extra rounds after the first (0 disables retrying). A round tries every
            node once, starting with the one that answered last.
        addresses: The cluster's nodes (shared by the backend's threads).
        consistency: The backend's read-your-writes state (shared too).
        pool: urllib3's connection pool (thread-safe; shared, so short-lived threads
            reuse connections rather than open their own).
        sleep: Injectable for tests (by default ``time.sleep``, or ``asyncio.sleep``
            for a bridged read: :mod:`.._bridge`).
        **kwargs: hvac's adapter arguments.
    """

    def __init__(
        self,
        *args: Any,
        retries: int = 2,
        addresses: AddressBook | None = None,
        consistency: Consistency | None = None,
        pool: http.Pools | None = None,
        sleep: Callable[[float], None] = pause,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retries = retries
        self.addresses = addresses or AddressBook([self.base_uri])
        self.consistency = consistency or Consistency()
        self.allowed_origins = frozenset(_origin(a) for a in self.addresses.addresses)
        self._sleep = sleep
        self._budgets: dict[int, float] = {}
        timeout = self._kwargs.get("timeout") or 30
        self._timeout = float(max(timeout) if isinstance(timeout, tuple) else timeout)
        self._pool = pool or http.make_pool(
            self.base_uri,
            verify=self._kwargs.get("verify", True),
            cert=self._kwargs.get("cert") or (),
        )
        self._unverified = self._kwargs.get("verify") is False
        #: Set by the backend around one public call (login, retry and all), so the
        #: call as a whole ends by then; ``None`` outside a call.
        self.call_deadline: float | None = None

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        raise_exception: bool = True,
        **kwargs: Any,
    ) -> Any:
        retries = kwargs.pop("retries", None)
        retries = self.retries if retries is None else retries
        bare = bool(kwargs.pop("bare", False))
        known_replayable = kwargs.pop("replayable", None)  # the caller knows best
        kwargs.pop("wrap_ttl", None)  # response wrapping is not used
        while "//" in url:
            url = url.replace("//", "/")  # as Vault's CLI does
        replayable = (
            _replayable(method, url, kwargs) if known_replayable is None else known_replayable
        )
        sent_headers = {**headers} if headers else {}
        if not bare:
            sent_headers.update(self.consistency.headers())
        tries = _Tries(self.addresses.order(), retries, self._deadline(retries))
        while True:
            target = tries.target or _joined(tries.node, url)
            outcome = self._attempt(
                method, target, sent_headers, kwargs, deadline=tries.deadline, bare=bare
            )
            if isinstance(outcome, _Broken):
                self._after_broken(method, target, outcome, tries, replayable=replayable)
                continue
            response = outcome
            status = response.status_code
            if status in REDIRECT_STATUSES:
                self._after_redirect(target, response, tries)
                continue
            sealed = _sealed(response)
            tries.sealed += sealed
            try_elsewhere = (
                sealed
                or _leaderless(response)
                or status in NOT_PROCESSED_STATUSES
                or (status in MAYBE_PROCESSED_STATUSES and replayable)
            )
            if try_elsewhere:
                delay = self._retry_after(response) or self._backoff(tries.rounds)
                # Sealed nodes stay sealed: when all are, no second round.
                if self._next_try(tries, delay, another_round=tries.sealed < len(tries.nodes)):
                    continue
            if status in MAYBE_PROCESSED_STATUSES and not replayable and not _leaderless(response):
                raise self._unknown_outcome(method, target, f"it answered {status}")
            if not try_elsewhere:
                self.addresses.answered(tries.node if tries.target is None else _origin(target))
            if method.upper() not in IDEMPOTENT_METHODS:
                self.consistency.saw(response.headers.get(INDEX_HEADER))
            if not response.ok:  # before anyone reads it: what we sent, echoed, is gone
                _forget_echoes(response, self.token, sent_headers, kwargs)
            return self._result(method, target, response, raise_exception)

    def _after_broken(
        self, method: str, target: str, outcome: _Broken, tries: _Tries, *, replayable: bool
    ) -> None:
        """Move on from a node whose connection failed, or raise if that is not safe
        or nothing is left to try."""
        if not outcome.replayable and not replayable:
            raise self._unknown_outcome(method, target, f"the connection broke ({outcome.kind})")
        # A failed TLS check will fail again: other nodes, but no second round.
        if self._next_try(tries, self._backoff(tries.rounds), another_round=outcome.tls is None):
            return
        # Fresh exceptions: requests' own carry the request, and its token.
        if outcome.tls is not None:
            raise requests.exceptions.SSLError(outcome.tls)
        raise requests.exceptions.ConnectionError(outcome.kind)

    def _after_redirect(self, target: str, response: requests.Response, tries: _Tries) -> None:
        """Follow a redirect our rules allow; otherwise this node cannot serve."""
        try:
            tries.target = self._redirect_target(target, response, tries.hopped)
        except VaultError:
            # Not followed (the token must not go there): try the next node, if any.
            if self._next_try(tries, self._backoff(tries.rounds), another_round=False):
                return
            raise
        tries.hopped = True

    def _next_try(self, tries: _Tries, delay: float, *, another_round: bool = True) -> bool:
        """Move to the next node; after a full round of failures, pause and start over
        (if retries and the deadline allow). Returns False when it is time to give up."""
        tries.in_round += 1
        tries.target = None
        tries.hopped = False
        tries.cursor += 1
        if tries.in_round < len(tries.nodes):
            go_on = time.monotonic() < tries.deadline
        elif (
            not another_round
            or tries.rounds >= tries.retries
            or time.monotonic() + delay > tries.deadline
        ):
            go_on = False
        else:
            self._sleep(delay)
            tries.rounds += 1
            tries.in_round = 0
            tries.sealed = 0
            go_on = True
        if go_on and len(tries.nodes) > 1:
            self.addresses.failed_over()
        return go_on

    def _deadline(self, retries: int) -> float:
        deadline = time.monotonic() + self._budget(retries)
        if self.call_deadline is not None:
            deadline = min(deadline, self.call_deadline)
        return deadline

    def _attempt(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None,
        kwargs: dict[str, Any],
        *,
        deadline: float,
        bare: bool,
    ) -> requests.Response | _Broken:
        if time.monotonic() >= deadline:
            raise VaultUnavailableError(
                f"Vault at {_origin(target)} did not answer {method.upper()} {_path(target)} "
                "within the call's deadline (timeout x attempts + backoff)"
            )
        try:
            return self._send(method, target, headers, kwargs, deadline=deadline, bare=bare)
        except urllib3.exceptions.SSLError as exc:
            # A failed handshake sent nothing: the node may be restarting, or an impostor;
            # try the others and report the TLS failure if none answers. A TLS error
            # later in the exchange is a broken connection like any other.
            detail = str(exc)
            # TLS 1.3 reports a refused client certificate only on the first read.
            handshake = _during_handshake(detail) or on_new_connection()
            return _Broken("TLS", replayable=handshake, tls=detail)
        except UnicodeEncodeError:
            # A header that cannot be sent (a token or namespace outside ASCII): say so
            # without the exception, whose message would quote the header's value.
            raise VaultError(
                f"a request to Vault at {_origin(target)} could not be sent: the token or "
                "namespace contains characters HTTP headers cannot carry"
            ) from None
        except http.NOT_SENT as exc:
            return _Broken(type(exc).__name__, replayable=True)
        except DeadlinePassedError:
            return _Broken("the call's deadline passed mid-answer", replayable=False)
        except http.BROKEN as exc:
            return _Broken(type(exc).__name__, replayable=False)

    def _result(
        self, method: str, target: str, response: requests.Response, raise_exception: bool
    ) -> Any:
        if not response.ok and raise_exception and not self.ignore_exceptions:
            self._raise_for_error(method, target, response)
        if response.status_code != 200:
            return response
        try:
            return response.json()
        except ValueError:
            pass  # raised below, outside the handler: the decode error holds the body
        raise VaultError(
            f"Vault at {_origin(target)} answered {method.upper()} {_path(target)} with "
            "something that is not Vault's JSON (a proxy or a login page in the way?)"
        )

    def _raise_for_error(self, method: str, url: str, response: requests.Response) -> None:
        status = response.status_code
        if status in HVAC_STATUSES:
            super()._raise_for_error(method, url, response)
        where = f"{method.upper()} {_path(url)}"
        detail = _vault_errors(response)
        if status == 412 or status >= 500:
            raise VaultUnavailableError(
                f"Vault at {_origin(url)} answered {status} to {where} ({detail})"
            )
        raise VaultError(f"Vault at {_origin(url)} answered {status} to {where}: {detail}")

    @staticmethod
    def _unknown_outcome(method: str, target: str, what: str) -> VaultError:
        if _is_login(_path(target)):
            # Unavailable, not "unknown write": reads may fall back, the next call retries.
            return VaultUnavailableError(
                f"a login at Vault {_origin(target)} may or may not have happened ({what}); "
                "not repeated, since a repeat could use up a single-use secret ID; the next "
                "call logs in again"
            )
        return WriteOutcomeUnknownError(
            f"Vault at {_origin(target)}: {what} after a {method.upper()} of "
            f"{_path(target)} was sent, so the write may or may not have happened; read it "
            "back before trying again"
        )

    def _send(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None,
        kwargs: dict[str, Any],
        *,
        deadline: float,
        bare: bool,
    ) -> requests.Response:
        # Some firewalls in front of Vault refuse requests without one (AWS WAF's
        # NoUserAgent rule); every route sends the same.
        sent_headers = {"User-Agent": http.USER_AGENT, **(headers or {})}
        if self.request_header:
            sent_headers["X-Vault-Request"] = "true"
        if self.token and not bare:
            sent_headers["X-Vault-Token"] = self.token
        if self.namespace and not bare:
            sent_headers["X-Vault-Namespace"] = self.namespace
        if self.strict_http and method.lower() == "list":
            method = "get"
            kwargs = {**kwargs, "params": {**kwargs.get("params", {}), "list": "true"}}
        timeout = min(self._timeout, max(0.001, deadline - time.monotonic()))
        if self._unverified:
            # The user turned verification off and was warned once, at set-up; urllib3
            # would repeat that on every request.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureRequestWarning)
                return http.send(
                    self._pool,
                    method,
                    target,
                    sent_headers,
                    kwargs,
                    timeout=timeout,
                    deadline=deadline,
                )
        return http.send(
            self._pool, method, target, sent_headers, kwargs, timeout=timeout, deadline=deadline
        )

    def _redirect_target(self, current: str, response: requests.Response, hopped: bool) -> str:
        origin = _origin(current)
        target = urljoin(current, response.headers.get("Location", ""))
        if hopped:
            raise VaultError(f"Vault at {origin} redirected more than once; not following")
        if urlsplit(current).scheme == "https" and urlsplit(target).scheme != "https":
            raise VaultError(f"Vault at {origin} redirected from https to http; not following")
        if _origin(target) not in self.allowed_origins:
            raise VaultError(
                f"Vault at {origin} redirected to {_origin(target)}, which is not a "
                "configured address; not following (the token would be sent there)"
            )
        if response.status_code not in FOLLOWED_REDIRECTS:
            raise VaultError(
                f"Vault at {origin} answered a {response.status_code} redirect; only 307 and "
                "308 (which keep the request as it is) are followed"
            )
        return target

    def budget(self, retries: int | None = None) -> float:
        """The most one request may take (with ``retries``, default the adapter's)."""
        return self._budget(self.retries if retries is None else retries)

    def _budget(self, retries: int) -> float:
        """The most a request may take: every attempt's timeout (each node, each round),
        and the backoff between rounds (worked out once per ``retries``: it runs on
        every request, and the timeout and the nodes are fixed)."""
        budget = self._budgets.get(retries)
        if budget is None:
            timeout = self._kwargs.get("timeout") or 0
            per_attempt = sum(timeout) if isinstance(timeout, tuple) else float(timeout)
            attempts = (retries + 1) * len(self.addresses)
            budget = self._budgets[retries] = per_attempt * attempts + BACKOFF_CAP_SECONDS * retries
        return budget

    def _backoff(self, attempt: int) -> float:
        cap = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
        return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not crypto

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After", "")
        try:
            return min(RETRY_AFTER_CAP_SECONDS, max(0.0, float(value)))
        except ValueError:
            return None
