"""A loopback HTTP proxy in front of a real OpenBao server that injects faults on cue.

Vault's behaviour is never faked: every request the proxy does not sabotage is forwarded
to the real server and its real answer is passed back. Faults are queued per request:

- ``Fault.status(503)`` / ``Fault.status(429, retry_after=1)``: answer with that status
  instead of forwarding (the request never reaches Vault).
- ``Fault.drop()``: read the request, then close the connection without answering (the
  client cannot know whether it was processed).
- ``Fault.drop(forward=True)``: forward the request to Vault, then drop the answer (the
  write happened, the client is not told).
- ``Fault.cut()``: forward, then send the answer's headers and half its body, and close.
- ``Fault.drip(seconds)``: forward, then send the answer one byte per ``seconds``.
- ``Fault.replace(status, body)``: answer ``body`` (not JSON, say) without forwarding.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of (or after) forwarding it."""

    kind: str
    status_code: int = 0
    retry_after: float | None = None
    forward: bool = False
    path_prefix: str = "/v1/"
    body: bytes = b""
    seconds: float = 0.0

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | None = None, path_prefix: str = "/v1/"
    ) -> Fault:
        """Answer ``code`` (with a Vault-style error body) without forwarding."""
        return cls("status", code, retry_after, path_prefix=path_prefix)

    @classmethod
    def drop(cls, *, forward: bool = False, path_prefix: str = "/v1/") -> Fault:
        """Close the connection without an answer (after forwarding, if ``forward``)."""
        return cls("drop", forward=forward, path_prefix=path_prefix)

    @classmethod
    def cut(cls, *, path_prefix: str = "/v1/") -> Fault:
        """Forward; answer the headers and half the body, then close the connection."""
        return cls("cut", forward=True, path_prefix=path_prefix)

    @classmethod
    def drip(cls, seconds: float, *, path_prefix: str = "/v1/") -> Fault:
        """Forward; send the answer one byte every ``seconds``."""
        return cls("drip", forward=True, path_prefix=path_prefix, seconds=seconds)

    @classmethod
    def replace(cls, code: int, body: bytes, *, path_prefix: str = "/v1/") -> Fault:
        """Answer ``code`` with ``body`` (as text/html) without forwarding."""
        return cls("replace", code, path_prefix=path_prefix, body=body)


@dataclass
class Hit:
    """One request the proxy saw, and what it did with it."""

    method: str
    path: str
    fault: Fault | None
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``, sabotaging queued requests.

    Example:
        >>> with FaultProxy(server.address) as proxy:          # doctest: +SKIP
        ...     proxy.inject(Fault.status(503), Fault.status(503))
        ...     KeyManager(vault_url=proxy.origin, ...).get_secret("x")
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.hits: list[Hit] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: point the client here."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies to the next request whose path matches it."""
        with self._lock:
            self._faults.extend(faults)

    def pending(self) -> int:
        """Faults not used yet."""
        with self._lock:
            return len(self._faults)

    def hits_for(self, path_part: str) -> list[Hit]:
        """Requests whose path contains ``path_part``."""
        with self._lock:
            return [hit for hit in self.hits if path_part in hit.path]

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            if self._faults and path.startswith(self._faults[0].path_prefix):
                return self._faults.popleft()
            return None

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return self._handle
                raise AttributeError(name)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take(self.path)
                proxy._record(Hit(self.command, self.path, fault, dict(self.headers.items())))
                if fault is not None and fault.kind == "status":
                    self._answer_status(fault)
                    return
                if fault is not None and fault.kind == "replace":
                    self._answer(fault.status_code, {"Content-Type": "text/html"}, fault.body)
                    return
                if fault is None or fault.forward:
                    status, headers, payload = proxy._forward(
                        self.command, self.path, dict(self.headers.items()), body
                    )
                    if fault is None:
                        self._answer(status, headers, payload)
                        return
                    if fault.kind == "cut":
                        self._answer(status, headers, payload, send=len(payload) // 2)
                    elif fault.kind == "drip":
                        self._answer(status, headers, payload, pause=fault.seconds)
                        return
                self._drop()

            def _answer_status(self, fault: Fault) -> None:
                payload = b'{"errors":["injected fault"]}'
                headers = {"Content-Type": "application/json"}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                self._answer(fault.status_code, headers, payload)

            def _answer(
                self,
                status: int,
                headers: dict[str, str],
                payload: bytes,
                *,
                send: int | None = None,
                pause: float = 0.0,
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                sent = payload if send is None else payload[:send]
                if not pause:
                    self.wfile.write(sent)
                    return
                self.wfile.flush()
                for index in range(len(sent)):
                    time.sleep(pause)
                    try:
                        self.wfile.write(sent[index : index + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up, as it should

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop listening and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
