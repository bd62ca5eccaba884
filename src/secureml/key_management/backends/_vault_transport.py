"""How requests reach Vault: retries with backoff, and a redirect policy that keeps the token home.

An hvac adapter, so every hvac call (KV, auth, token, sys) goes through the same rules:

- Retries: on connection errors, on 5xx except 501, on 412 (a standby that has not caught
  up) and on 429 (honouring ``Retry-After``); never on other 4xx. Exponential backoff with
  full jitter. A request whose outcome is unknown (the connection broke after it was sent)
  is retried only when replaying it is harmless: reads, and KV v2 check-and-set writes.
  Otherwise the caller is told the write may or may not have happened.
- Redirects: requests would resend ``X-Vault-Token`` to whatever host a redirect names.
  Here at most one hop is followed, only to a configured address, never https -> http.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from hvac.adapters import JSONAdapter
from urllib3.exceptions import InsecureRequestWarning

from ..errors import VaultError, VaultUnavailableError, WriteOutcomeUnknownError

RETRY_STATUSES = frozenset({412, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "LIST", "OPTIONS"})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0
RETRY_AFTER_CAP_SECONDS = 5.0


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached Vault (it failed while connecting)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    never = ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError")
    return type(reason).__name__ in never


def _replayable(method: str, url: str, kwargs: dict[str, Any]) -> bool:
    """Whether sending the request twice is harmless.

    Reads are; so are logins and token renewals (a duplicate only mints or extends a
    token), and KV v2 check-and-set writes (a replay of one that landed fails its CAS).
    """
    if method.upper() in IDEMPOTENT_METHODS:
        return True
    path = url.split("?", 1)[0].rstrip("/")
    if path.startswith("/v1/auth/") and (
        "/login" in path or path.endswith(("/renew-self", "/lookup-self"))
    ):
        return True
    body = kwargs.get("json")
    options = body.get("options") if isinstance(body, dict) else None
    return isinstance(options, dict) and "cas" in options


def _sealed(response: requests.Response) -> bool:
    return response.status_code == 503 and "sealed" in response.text.lower()


class PolicyAdapter(JSONAdapter):  # type: ignore[misc]
    """hvac's JSON adapter with secureml's retry and redirect rules (see module doc).

    A request's worst case is bounded: ``timeout`` per attempt plus the backoff between
    attempts; a retry that could not finish inside that budget is not started. Pass
    ``retries=`` to one request (``adapter.get(url, retries=0)``) to override.

    Args:
        retries: Extra attempts after the first (0 disables retrying).
        allowed_origins: ``scheme://host:port`` of every configured Vault address.
        sleep: Injectable for tests.
        **kwargs: hvac's adapter arguments.
    """

    def __init__(
        self,
        *args: Any,
        retries: int = 2,
        allowed_origins: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retries = retries
        self.allowed_origins = frozenset(_origin(o) for o in allowed_origins) | {
            _origin(self.base_uri)
        }
        self._sleep = sleep
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
        base = self.base_uri
        attempt = 0
        hopped = False
        deadline = time.monotonic() + self._budget(retries)
        if self.call_deadline is not None:
            deadline = min(deadline, self.call_deadline)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VaultUnavailableError(
                    f"Vault at {base} did not answer {method.upper()} {url} before the "
                    "call's deadline (timeout x attempts + backoff)"
                )
            try:
                response = self._send(base, method, url, headers, kwargs, remaining=remaining)
            except requests.exceptions.SSLError:
                # A failed TLS check is not transient (and nothing was sent): no retry.
                raise
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                self._check_replayable(exc, base, method, url, kwargs)
                delay = self._backoff(attempt)
                if attempt >= retries or time.monotonic() + delay > deadline:
                    raise
                self._sleep(delay)
                attempt += 1
                continue
            status = response.status_code
            if status in REDIRECT_STATUSES:
                base = self._redirect_target(base, response, hopped)
                hopped = True
                continue
            if status in RETRY_STATUSES and not _sealed(response) and attempt < retries:
                delay = self._retry_after(response) or self._backoff(attempt)
                if time.monotonic() + delay <= deadline:
                    self._sleep(delay)
                    attempt += 1
                    continue
            if not response.ok and raise_exception and not self.ignore_exceptions:
                self._raise_for_error(method, url, response)
            if status == 200:
                try:
                    return response.json()
                except ValueError:
                    pass
            return response

    @staticmethod
    def _check_replayable(
        exc: requests.RequestException, base: str, method: str, url: str, kwargs: dict[str, Any]
    ) -> None:
        """Raise if the request may have reached Vault and replaying it is unsafe."""
        if not (_never_sent(exc) or _replayable(method, url, kwargs)):
            raise WriteOutcomeUnknownError(
                f"the connection to Vault at {base} broke after a {method.upper()} of {url} "
                "was sent: the write may or may not have happened; read it back before "
                "trying again"
            ) from None

    def _send(
        self,
        base: str,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        kwargs: dict[str, Any],
        *,
        remaining: float,
    ) -> requests.Response:
        while "//" in url:
            url = url.replace("//", "/")
        sent_headers = dict(headers or {})
        if self.request_header:
            sent_headers["X-Vault-Request"] = "true"
        if self.token:
            sent_headers["X-Vault-Token"] = self.token
        if self.namespace:
            sent_headers["X-Vault-Namespace"] = self.namespace
        options = {**self._kwargs, **kwargs}
        options.pop("wrap_ttl", None)
        timeout = options.get("timeout")
        if isinstance(timeout, (int, float)) and timeout > remaining:
            options["timeout"] = remaining  # never wait past the deadline
        if self.strict_http and method.lower() == "list":
            method = "get"
            options["params"] = {**options.get("params", {}), "list": "true"}
        request = {
            "method": method,
            "url": self.urljoin(base, url),
            "headers": sent_headers,
            "allow_redirects": False,
            **options,
        }
        if options.get("verify") is False:
            # The user turned verification off and was warned once, at set-up; urllib3
            # would repeat that on every request.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureRequestWarning)
                return self.session.request(**request)  # type: ignore[no-any-return]
        response: requests.Response = self.session.request(**request)
        return response

    def _redirect_target(self, base: str, response: requests.Response, hopped: bool) -> str:
        location = response.headers.get("Location", "")
        target = _origin(location) if "://" in location else _origin(base)
        if hopped:
            raise VaultError(f"Vault at {base} redirected more than once; not following")
        if urlsplit(base).scheme == "https" and urlsplit(target).scheme != "https":
            raise VaultError(f"Vault at {base} redirected from https to http; not following")
        if target not in self.allowed_origins:
            raise VaultError(
                f"Vault at {base} redirected to {target}, which is not a configured address; "
                "not following (the token would be sent there)"
            )
        return target

    def budget(self, retries: int | None = None) -> float:
        """The most one request may take (with ``retries``, default the adapter's)."""
        return self._budget(self.retries if retries is None else retries)

    def _budget(self, retries: int) -> float:
        """The most a request may take: every attempt's timeout, and backoff between."""
        timeout = self._kwargs.get("timeout") or 0
        per_attempt = sum(timeout) if isinstance(timeout, tuple) else float(timeout)
        return per_attempt * (retries + 1) + BACKOFF_CAP_SECONDS * retries

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
