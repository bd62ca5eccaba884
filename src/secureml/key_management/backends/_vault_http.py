"""One HTTP exchange with a Vault node, on urllib3 directly.

hvac speaks through ``requests``, whose per-request machinery (environment merging,
cookie jars, hooks, redirect resolution) costs about as much as the network round trip
to a local Vault. secureml needs none of it: it sends JSON, never follows redirects on
its own, and reads every answer whole under a deadline. So requests are sent on
urllib3's connection pool (thread-safe, keep-alive), and the answer is handed back as
a ``requests.Response`` so hvac's API code works unchanged.

urllib3's per-request layer costs much of what an uncached read spends in Python too
(a ``Retry`` and ``Timeout`` per request, header normalisation, its own response
object and decoders), and ``http.client``'s answer parsing (the ``email`` package)
as much again. So on a direct route the request's bytes are written and the answer
parsed by :mod:`._http11`, the layer the async wire uses, on a connection of urllib3's
pool: urllib3 still opens it (TLS and its verification included), notices a dropped
one, and keeps it alive; failures are raised as the urllib3 exceptions ``urlopen``
would raise, so the transport judges them alike. Through a proxy, ``urlopen`` does the
whole exchange.

Proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``...) are honoured as
requests would, except that loopback is never proxied (as Go's client, and so the
``vault``/``bao`` CLIs, do: a Vault Agent on 127.0.0.1 must not see its token sent to a
proxy); plain http through a proxy warns once, since the token crosses it in clear; a
proxy scheme urllib3 cannot speak (``socks5://``) is a configuration error, not an
outage. TLS verification is on unless the settings say otherwise; without a CA
bundle, what requests would trust is used (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
certifi).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import ssl
import time
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import requests
import urllib3
from requests.utils import get_environ_proxies, select_proxy

from .. import _bridge
from .._config import is_loopback
from .._warnings import Once, warn_caller
from ..errors import ConfigurationError, SecurityWarning
from ._deadline import (
    POOL_CLASSES,
    Cut,
    DeadlinePassedError,
    deadline_for_this_thread,
    note_new_connection,
    watch,
)
from ._http11 import (
    MAX_ANSWER_BYTES,
    AnswerParser,
    MalformedAnswerError,
    ParsedAnswer,
    request_bytes,
)
from ._vault_aio import Wire, tls_context
from ._vault_aio import exchange as exchange_on_loop

READ_CHUNK_BYTES = 64 * 1024
#: An async read's answer larger than this is decoded from JSON on a pool thread: a
#: 4 MiB one takes ~20 ms to decode, a stall for every other coroutine of the loop.
DECODE_OFF_LOOP_BYTES = 256 * 1024
_UNBUILT: Any = object()
#: ``Answer``'s mark for a body not decoded yet.
UNDECODED: Any = object()
USER_AGENT = "secureml"

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


class Pools:
    """Connections to a cluster's nodes: one urllib3 pool per node, kept at hand (a
    lookup through the pool manager parses the URL on every request), direct or through
    the environment's proxy as ``NO_PROXY`` decides for that node."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._direct = _watched(urllib3.PoolManager(**options))
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        self._by_origin: dict[str, Any] = {}
        # The async wires' TLS context: built by :meth:`prepare_wires` (an async facade
        # being made) or by the first wire; plain http has none. (Never for sync use:
        # urllib3 builds its own.)
        self._tls: Any = _UNBUILT if "cert_reqs" in options else None

    def wire(self) -> Wire:
        """The running event loop's connections to the cluster (asyncio connections
        belong to the loop that opened them, and close when it shuts down), with the
        same TLS options."""
        if self._tls is _UNBUILT:
            # The same for every loop: built once, on a pool thread (it reads the CA
            # bundle), never on the loop that asked first. (Before loop_local, whose
            # ``make`` must not wait: a read waiting in it would let another make a
            # second wire for the loop.) Two reads building it at once build the same.
            try:
                self._tls = _bridge.blocking(tls_context, self._options)
            except (ssl.SSLError, OSError) as exc:
                # A CA bundle or client certificate that does not load: what the sync
                # wire's connect raises for it, so the same rules (and fallback) apply.
                raise urllib3.exceptions.SSLError(
                    f"the TLS settings do not load ({type(exc).__name__}: "
                    f"{getattr(exc, 'reason', None) or exc.strerror or 'unreadable'})"
                ) from None
        return _bridge.loop_local(self, self._new_wire, Wire.close)

    def prepare_wires(self) -> None:
        """Build the async wires' TLS context now, off any event loop (when an async
        facade is made). One that does not load is left for the first read to report."""
        if self._tls is _UNBUILT:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._tls = tls_context(self._options)

    def _new_wire(self) -> Wire:
        return Wire(self._tls)

    def for_origin(self, origin: str) -> Any:
        """What to call ``urlopen`` on for ``origin`` (see :func:`send`)."""
        found = self._by_origin.get(origin)
        if found is None:  # a race only builds the same thing twice
            found = self._by_origin[origin] = self._route(origin)
        return found

    def close_wire(self) -> None:
        """Close the running event loop's idle connections, if it has any."""
        _bridge.forget_loop_local(self)

    def _route(self, origin: str) -> Any:
        target = urlsplit(origin)
        proxy = None if is_loopback(target.hostname or "") else _proxy_for(origin)
        if not proxy:
            return self._direct.connection_from_url(origin)
        if target.scheme == "http" and _proxied_in_clear.first(origin):
            warn_caller(
                f"Vault at {origin} is reached over plain http through the proxy "
                f"{_without_credentials(proxy)}: the token crosses it unencrypted. Use "
                "https://, or exclude the address with NO_PROXY.",
                SecurityWarning,
            )
        manager = self._proxies.get(proxy)
        if manager is None:
            parts = urlsplit(proxy)
            headers = None
            if parts.username:
                credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                headers = urllib3.make_headers(proxy_basic_auth=credentials)
            manager = self._proxies[proxy] = _watched(
                urllib3.ProxyManager(proxy, proxy_headers=headers, **self._options)
            )
        return _Proxied(manager)


_proxied_in_clear = Once()


def _proxy_for(origin: str) -> str | None:
    """The environment's proxy for ``origin`` (``NO_PROXY`` applied), if any."""
    proxy: str | None = select_proxy(origin, get_environ_proxies(origin))
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy  # what requests, curl and Go assume
    if proxy and urlsplit(proxy).scheme not in ("http", "https"):
        raise ConfigurationError(
            f"the proxy for {origin} ({_without_credentials(proxy)}) uses a scheme secureml "
            "cannot speak (http:// and https:// proxies only); fix HTTPS_PROXY/ALL_PROXY or "
            "exclude the address with NO_PROXY"
        )
    return proxy


def _without_credentials(proxy: str) -> str:
    parts = urlsplit(proxy)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


_M = TypeVar("_M", bound=urllib3.PoolManager)


def _watched(manager: _M) -> _M:
    """``manager``, building pools whose requests the deadline watchdog can cut off."""
    manager.pool_classes_by_scheme = POOL_CLASSES
    return manager


class _Proxied:
    """A node behind a proxy: requests go through the proxy manager with the absolute
    URL (for http the proxy needs it; for https the manager tunnels with CONNECT)."""

    def __init__(self, manager: urllib3.ProxyManager) -> None:
        self.manager = manager


def make_pool(
    base_url: str, *, verify: bool | str, cert: tuple[str, str] | str | tuple[()]
) -> Pools:
    """Connection pools for ``base_url``'s cluster with secureml's TLS settings.

    Without a CA given, certificates are checked against what ``requests`` (and so
    hvac) would use: ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` if set, else certifi's
    bundle.
    """
    # Shared by every thread of a backend: connections beyond maxsize are closed after use.
    options: dict[str, Any] = {"maxsize": 32, "block": False, "retries": False}
    if urlsplit(base_url).scheme == "https":
        if verify is False:
            options["cert_reqs"] = "CERT_NONE"
        else:
            options["cert_reqs"] = "CERT_REQUIRED"
            ca = verify if isinstance(verify, str) else _default_ca_bundle()
            key = "ca_cert_dir" if os.path.isdir(ca) else "ca_certs"
            options[key] = ca
        if isinstance(cert, str):
            options["cert_file"] = cert
        elif len(cert) == 2:
            options["cert_file"], options["key_file"] = cert
    return Pools(options)


def _default_ca_bundle() -> str:
    from requests.utils import DEFAULT_CA_BUNDLE_PATH

    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    return str(DEFAULT_CA_BUNDLE_PATH)


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

    ``headers`` are sent as they are (the transport adds ``User-Agent``); ``kwargs`` are
    hvac's: ``json`` (the body), ``params`` (the query string).

    Raises:
        urllib3.exceptions.SSLError: TLS failed.
        One of ``NOT_SENT``: it never left.
        One of ``BROKEN``, or DeadlinePassedError: it may have been processed.
    """
    body: bytes | None = None
    if kwargs:
        if kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"]).encode()
            headers = {**headers, "Content-Type": "application/json"}
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            body = data.encode() if isinstance(data, str) else data
        params = kwargs.get("params")
        if params:
            url = f"{url}?{urlencode(params, doseq=True)}"
    parts = _split(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    route = pools.for_origin(origin)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if isinstance(route, _Proxied):  # the proxy manager speaks the proxy's protocol
        if _bridge.active():  # on an event loop: on a thread, off the loop
            on_thread = functools.partial(
                _sent_here, headers=headers, body=body, timeout=timeout, deadline=deadline
            )
            return _bridge.blocking(on_thread, route, method, url, target)
        return _sent_here(
            route,
            method,
            url,
            target,
            headers=headers,
            body=body,
            timeout=timeout,
            deadline=deadline,
        )
    method = method.upper()
    request = request_bytes(method, parts, target, headers, body)
    head_only = method == "HEAD"
    if _bridge.active():  # on an event loop: the loop's own connections
        status, found, content, reason = exchange_on_loop(
            pools.wire(),
            parts,
            origin,
            request,
            head_only=head_only,
            timeout=timeout,
            deadline=deadline,
        )
        decoded = UNDECODED
        if _decoded_early(status, content):  # milliseconds of JSON: not on the loop
            decoded = _bridge.blocking(_json_or_undecoded, content)
        return Answer(status, found, content, url, reason, decoded=decoded)
    # The watchdog bounds what socket timeouts cannot: connecting, and TLS's handshake.
    try:
        with deadline_for_this_thread(deadline):
            status, found, content, reason = _exchange(
                route, request, target, head_only=head_only, timeout=timeout, deadline=deadline
            )
    except Cut:
        # Whatever came back (a cut can look like an empty 200) is not an answer.
        raise DeadlinePassedError("the call's deadline passed while the answer arrived") from None
    return Answer(status, found, content, url, reason)


def _sent_here(
    route: _Proxied,
    method: str,
    url: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
    deadline: float,
) -> requests.Response:
    """:func:`send` through a proxy, on this thread's blocking sockets."""
    # The watchdog bounds what socket timeouts cannot: an answer dripped byte by byte.
    try:
        with deadline_for_this_thread(deadline):
            status, found, content, reason = _through_proxy(
                route, method, url, headers, body, timeout=timeout, deadline=deadline
            )
    except Cut:
        # Whatever came back (a cut can look like an empty 200) is not an answer.
        raise DeadlinePassedError("the call's deadline passed while the answer arrived") from None
    # On a pool thread when bridged: a large answer is decoded here, not on the loop.
    decoded = _json_or_undecoded(content) if _decoded_early(status, content) else UNDECODED
    return Answer(status, found, content, url, reason, decoded=decoded)


def _decoded_early(status: int, content: bytes) -> bool:
    """Whether to decode an answer's JSON before the transport judges it: a large one,
    and only one that is not a refusal (a refusal's body is first cleared of what the
    request sent, which a decoded copy would still hold)."""
    return status < 400 and len(content) > DECODE_OFF_LOOP_BYTES


#: A URL's parts, remembered: a service reads the same few names again and again.
_split = functools.lru_cache(maxsize=4096)(urlsplit)


def _exchange(
    pool: Any,
    request: bytes,
    target: str,
    *,
    head_only: bool,
    timeout: float,
    deadline: float,
) -> tuple[int, Any, bytes, str]:
    """One request (its bytes, :func:`._http11.request_bytes`) on a connection of
    ``pool`` (a direct route): status, headers, body and reason of the answer. urllib3
    owns the connections: it opens them (TLS and its verification included), finds
    dropped ones, and keeps them alive; the exchange itself is written and parsed here,
    as the async wire does it.

    Raises what :func:`send` does, urllib3's exception types as ``urlopen`` would.
    """
    conn = pool._get_conn()  # a dropped keep-alive connection comes back closed
    reusable = False
    try:
        fresh = conn.sock is None
        if fresh:
            # Connecting and TLS are urllib3's: the watchdog bounds them. The exchange
            # below bounds itself (every wait ends by the deadline).
            watch(conn)
        else:
            note_new_connection(False)
        conn.timeout = timeout
        try:
            if fresh:
                pool._validate_conn(conn)  # HTTPS: connects, TLS checked as urllib3 does
                if conn.sock is None:
                    conn.connect()
            answer = _exchange_on(conn.sock, request, head_only, timeout, deadline)
        except (urllib3.exceptions.HTTPError, DeadlinePassedError):
            raise  # urllib3's own (connecting), or already ours
        except Exception as exc:
            raise _as_urllib3(exc, pool, target) from None
        reusable = answer.reusable
    finally:
        if not reusable:
            conn.close()  # half-used: it must not be reused
        pool._put_conn(conn)
    return answer.status, answer.headers, answer.body, answer.reason


def _exchange_on(
    sock: socket.socket, request: bytes, head_only: bool, timeout: float, deadline: float
) -> ParsedAnswer:
    """Write ``request`` on ``sock`` and read the answer: each wait at most ``timeout``,
    and none past ``deadline``, so a server that drips bytes cannot hold the call.

    Raises:
        DeadlinePassedError: The deadline passed before the whole answer was in.
        TimeoutError: One wait took ``timeout``.
        urllib3.exceptions.ProtocolError: The answer is malformed, or the connection
            closed before it was whole.
        OSError: The connection failed.
    """
    parser = AnswerParser()
    parser.expect(head_only=head_only)
    left = deadline - time.monotonic()
    if left <= 0:  # connecting took it all: nothing was sent, so nothing can have happened
        raise urllib3.exceptions.ConnectTimeoutError(
            None, "the call's deadline passed before the request could be sent"
        )
    sock.settimeout(min(timeout, left))
    buffer = parser.buffer
    try:
        # Vault may answer (413: too large) and close before reading all of a big
        # body: its answer is what the caller needs, as urllib3 gives it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            sock.sendall(request)
        while True:
            data = sock.recv(READ_CHUNK_BYTES)
            buffer += data
            try:
                answer = parser.parse(not data)
            except MalformedAnswerError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from None
            if answer is not None:
                return answer
            if not data:
                raise urllib3.exceptions.ProtocolError(
                    "Connection aborted.", ConnectionResetError("closed before the whole answer")
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassedError("the call's deadline passed while the answer arrived")
            sock.settimeout(min(timeout, left))
    except TimeoutError:  # a wait cut short by the deadline is the deadline's
        if time.monotonic() >= deadline:
            raise DeadlinePassedError(
                "the call's deadline passed while the answer arrived"
            ) from None
        raise


def _as_urllib3(exc: Exception, pool: Any, target: str) -> Exception:
    """What urllib3's ``urlopen`` raises for ``exc`` (so the transport judges every
    route's failures alike); anything else as it is."""
    if isinstance(exc, TimeoutError):
        return urllib3.exceptions.ReadTimeoutError(pool, target, "Read timed out.")
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return urllib3.exceptions.SSLError(exc)
    if isinstance(exc, OSError):
        return urllib3.exceptions.ProtocolError("Connection aborted.", exc)
    return exc


def _through_proxy(
    route: _Proxied,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    *,
    timeout: float,
    deadline: float,
) -> tuple[int, Any, bytes, str]:
    """One request through the proxy manager (which speaks the proxy's protocol)."""
    raw = route.manager.urlopen(
        method.upper(),
        url,
        body=body,
        headers=headers,
        # total: connecting and waiting for the answer together, not each in full.
        timeout=urllib3.Timeout(total=timeout, connect=timeout, read=timeout),
        redirect=False,
        retries=False,
        preload_content=False,
    )
    try:
        content = _read_whole(raw, deadline)
    except BaseException:
        raw.close()  # half-read: the connection must not be reused
        raise
    finally:
        raw.release_conn()
    return raw.status, raw.headers, content, raw.reason or ""


class Answer(requests.Response):
    """A ``requests.Response`` with what hvac reads from one, and nothing else: building
    a full one (cookie jar and all) costs more than parsing Vault's JSON."""

    def __init__(
        self,
        status: int,
        headers: Any,
        content: bytes,
        url: str,
        reason: str,
        *,
        decoded: Any = UNDECODED,
    ) -> None:  # deliberately not calling super().__init__()
        self._decoded = decoded  # the body's JSON, if decoded already (off the loop)
        self.status_code = status
        self.headers = headers  # ours (_http11.Headers) or urllib3's: both case-insensitive
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

    @property
    def ok(self) -> bool:
        return self.status_code < 400  # what requests says, without raising to say it

    def json(self, **kwargs: Any) -> Any:
        """The body as JSON (Vault's answers are UTF-8), failing as requests does."""
        decoded, self._decoded = self._decoded, UNDECODED  # a second call decodes anew
        if decoded is not UNDECODED and not kwargs:
            return decoded
        try:
            return json.loads(self._content or b"", **kwargs)
        except RecursionError:  # "[[[[..." nested past the interpreter's limit
            why, where = "nested too deeply", 0
        except ValueError as exc:
            why, where = getattr(exc, "msg", "not JSON"), getattr(exc, "pos", 0)
        # Outside the handler, without the document: the decode error holds the body.
        raise requests.exceptions.JSONDecodeError(why, "", where)


def _json_or_undecoded(content: bytes) -> Any:
    """``content`` as JSON, or :data:`UNDECODED` (``Answer.json`` then fails as it
    would have, with its own message)."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return UNDECODED


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
        if len(body) > MAX_ANSWER_BYTES:  # a peer sending without end: not an answer
            raise urllib3.exceptions.ProtocolError("an answer larger than secureml reads")
        if time.monotonic() > deadline:
            raise DeadlinePassedError("the call's deadline passed while the answer arrived")
