"""One HTTP exchange with a Vault node, on urllib3 directly.

hvac speaks through ``requests``, whose per-request machinery (environment merging,
cookie jars, hooks, redirect resolution) costs about as much as the network round trip
to a local Vault. secureml needs none of it: it sends JSON, never follows redirects on
its own, and reads every answer whole under a deadline. So requests are sent with
urllib3's connection pool (thread-safe, keep-alive), and the answer is handed back as
a ``requests.Response`` so hvac's API code works unchanged.

Proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``...) are honoured as
requests would. TLS verification is on unless the settings say otherwise; without a CA
bundle the system trust store is used.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.utils import get_environ_proxies

READ_CHUNK_BYTES = 64 * 1024

#: Failures while connecting: the request cannot have reached Vault.
NOT_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.NameResolutionError,
    urllib3.exceptions.ProxyError,
)
#: Failures after sending began: Vault may have processed the request.
BROKEN = (
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
    urllib3.exceptions.HTTPError,
    OSError,
)


class DeadlinePassedError(Exception):
    """The call's deadline passed while the answer was still arriving."""


class Pools:
    """urllib3's pool manager, with each node's own pool kept at hand (looking it up
    through the manager parses and normalises the URL on every request)."""

    def __init__(self, manager: urllib3.PoolManager) -> None:
        self.manager = manager
        self._by_origin: dict[str, urllib3.HTTPConnectionPool] = {}

    def for_origin(self, origin: str) -> urllib3.HTTPConnectionPool:
        found = self._by_origin.get(origin)
        if found is None:  # a race only builds the same pool twice; the manager keeps one
            found = self._by_origin[origin] = self.manager.connection_from_url(origin)
        return found


def make_pool(
    base_url: str, *, verify: bool | str, cert: tuple[str, str] | str | tuple[()]
) -> Pools:
    """Connection pools for ``base_url``'s cluster with secureml's TLS settings (and the
    environment's proxy)."""
    # Shared by every thread of a backend: connections beyond maxsize are closed after use.
    options: dict[str, Any] = {"maxsize": 32, "block": False, "retries": False}
    if urlsplit(base_url).scheme == "https":
        if verify is False:
            options["cert_reqs"] = "CERT_NONE"
        else:
            options["cert_reqs"] = "CERT_REQUIRED"
            if isinstance(verify, str):
                key = "ca_cert_dir" if os.path.isdir(verify) else "ca_certs"
                options[key] = verify
        if isinstance(cert, str):
            options["cert_file"] = cert
        elif len(cert) == 2:
            options["cert_file"], options["key_file"] = cert
    proxy = get_environ_proxies(base_url).get(urlsplit(base_url).scheme)
    if proxy:
        return Pools(urllib3.ProxyManager(proxy, **options))
    return Pools(urllib3.PoolManager(**options))


def send(
    pools: Pools,
    method: str,
    url: str,
    headers: dict[str, str],
    kwargs: dict[str, Any],
    *,
    timeout: float,
    deadline: float,
) -> requests.Response:
    """Send one request and read its whole answer before ``deadline``.

    ``kwargs`` are hvac's: ``json`` (the body), ``params`` (the query string).

    Raises:
        urllib3.exceptions.SSLError: TLS failed.
        One of ``NOT_SENT``: it never left.
        One of ``BROKEN``, or DeadlinePassedError: it may have been processed.
    """
    body: bytes | None = None
    if kwargs.get("json") is not None:
        body = json.dumps(kwargs["json"]).encode()
        headers = {**headers, "Content-Type": "application/json"}
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body = data.encode() if isinstance(data, str) else data
    params = kwargs.get("params")
    if params:
        url = f"{url}?{urlencode(params, doseq=True)}"
    # The host's own pool, straight: PoolManager.request would parse the URL and look
    # the pool up again on every call.
    parts = urlsplit(url)
    raw = pools.for_origin(f"{parts.scheme}://{parts.netloc}").urlopen(
        method.upper(),
        parts.path + (f"?{parts.query}" if parts.query else ""),
        body=body,
        headers=headers,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        redirect=False,
        retries=False,
        preload_content=False,
        assert_same_host=False,
    )
    try:
        content = _read_whole(raw, deadline)
    except BaseException:
        raw.close()  # half-read: the connection must not be reused
        raise
    finally:
        raw.release_conn()
    return Answer(raw.status, raw.headers, content, url, raw.reason or "")


class Answer(requests.Response):
    """A ``requests.Response`` with what hvac reads from one, and nothing else: building
    a full one (cookie jar and all) costs more than parsing Vault's JSON."""

    def __init__(
        self, status: int, headers: Any, content: bytes, url: str, reason: str
    ) -> None:  # deliberately not calling super().__init__()
        self.status_code = status
        self.headers = headers  # urllib3's HTTPHeaderDict: already case-insensitive
        self._content = content
        self._content_consumed = True
        self._next = None
        self.encoding = "utf-8"
        self.reason = reason
        self.url = url
        self.raw = None
        self.history = []
        self.request = None  # type: ignore[assignment]
        self.connection = None  # type: ignore[assignment]


def _read_whole(raw: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """The answer's body, read in pieces with the deadline checked between them, so a
    server that drips bytes cannot hold a call past its deadline."""
    read = getattr(raw, "read1", None) or raw.read
    body = bytearray()
    while True:
        chunk = read(READ_CHUNK_BYTES)
        if not chunk:
            return bytes(body)
        body += chunk
        if time.monotonic() > deadline:
            raise DeadlinePassedError("the call's deadline passed while the answer arrived")
