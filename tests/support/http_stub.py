"""A tiny threaded HTTP(S) server on 127.0.0.1 that records requests and answers from a callback.

with StubServer(lambda seen: json_response(200, {"ok": True})) as server:
    ...  # talk to server.origin
assert server.requests[0].method == "GET"
"""

from __future__ import annotations

import json
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

from .pki import Pem

__all__ = ["Handler", "Reply", "Seen", "StubServer", "json_response"]

Reply = tuple[int, dict[str, str], bytes]
"""What a handler returns: status, headers, body."""

_SOCKET_TIMEOUT = 10.0  # seconds: bounds a stalled client's TLS handshake or request read


@dataclass
class Seen:
    """One request as the stub received it.

    ``path`` is the raw request target, query string included. ``headers`` keeps the
    names as the client sent them (a repeated header keeps its last value).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """Look a header up by name, ignoring case."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default


Handler = Callable[[Seen], Reply]
"""The callback that answers each request."""


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Reply:
    """A reply with ``payload`` as a JSON body and ``Content-Type: application/json``."""
    merged = {"Content-Type": "application/json"}
    merged.update(headers or {})
    return status, merged, json.dumps(payload).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stub: StubServer, tls: ssl.SSLContext | None) -> None:
        self.stub = stub
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would ask DNS for the host's FQDN: skip it, we know the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = cast("tuple[str, int]", self.server_address)[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the request's own thread, so a client that stalls
        # or rejects our certificate never blocks the accept loop.
        request.settimeout(_SOCKET_TIMEOUT)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError included: e.g. the client did not trust our CA
            return  # wrap_socket closed the TLS socket; the caller closes the raw one
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client hanging up mid-request is routine in fault tests."""


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _SOCKET_TIMEOUT

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches on `do_<METHOD>`: answer every method the same way.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        seen = Seen(
            method=self.command,
            path=self.path,
            headers=dict(self.headers.items()),
            body=self._read_body(),
        )
        stub = self.server.stub
        stub._record(seen)
        try:
            status, headers, body = stub.handler(seen)
        except Exception as exc:  # a broken handler must still answer
            stub._record_error(exc)
            status, headers, body = 500, {"Content-Type": "text/plain"}, repr(exc).encode()
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class StubServer:
    """A loopback HTTP(S) server that records every request and answers with ``handler``.

    Binds 127.0.0.1 on a free port when started. With ``tls=`` it serves HTTPS with that
    certificate and key. Every request, whatever its method (GET, POST, PUT, DELETE, PATCH,
    HEAD, LIST, ...), is appended to :attr:`requests` before ``handler`` runs. Responses
    always carry ``Content-Length``; connections are HTTP/1.0 (closed after each reply).
    If ``handler`` raises, the client gets a 500 and the exception lands in :attr:`errors`.
    """

    def __init__(self, handler: Handler, *, tls: Pem | None = None) -> None:
        """Prepare a server; nothing listens until :meth:`start`."""
        self.handler = handler
        self.tls = tls
        self.requests: list[Seen] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _record_error(self, exc: Exception) -> None:
        with self._lock:
            self.errors.append(exc)

    def _context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        return context

    def start(self) -> StubServer:
        """Bind and serve in a background thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("StubServer already started")
        server = _Server(self, self._context())
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"StubServer:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        self._port = cast("tuple[str, int]", server.server_address)[1]
        return self

    def stop(self) -> None:
        """Stop serving, wait for in-flight requests and close the socket. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    @property
    def port(self) -> int:
        """The port the server listens on; still known after :meth:`stop` (for "refused")."""
        if self._port is None:
            raise RuntimeError("StubServer was never started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://127.0.0.1:PORT``."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` on this server."""
        return self.origin + (path if path.startswith("/") else "/" + path)

    def __enter__(self) -> StubServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
