"""HTTP/1.1 as secureml speaks it to Vault: the request's bytes, and a parser for the answer.

One layer for both wires: the sync one (blocking sockets of urllib3's pool,
:mod:`._vault_http`) and the async one (asyncio connections, :mod:`._vault_aio`) write
the same bytes and read answers with the same parser, so they cannot disagree on what
an answer is. ``http.client`` (and the ``email`` parser behind it) cost more Python per
answer than the rest of a secureml read; Vault speaks plain HTTP/1.1 JSON with
``Content-Length``, which takes a few regular expressions to read. Chunked bodies are
read too (a proxy may re-frame them); anything else is refused. The answer is hostile
input: a malformed or oversized head, or a body past :data:`MAX_ANSWER_BYTES`, raises
:class:`MalformedAnswerError`, never anything that quotes it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_INTERIM_HEADS",
    "AnswerParser",
    "Headers",
    "MalformedAnswerError",
    "ParsedAnswer",
    "request_bytes",
]

#: The most a status line and headers may take; Vault's are a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
#: The most 1xx heads (100 Continue, 103 Early Hints) skipped before an answer: Vault
#: sends none; a peer sending thousands would have each one parsed on the event loop.
MAX_INTERIM_HEADS = 8
#: The most an answer's body may be: Vault's KV answers are kilobytes; a peer that
#: sends without end must not fill memory.
MAX_ANSWER_BYTES = 32 * 1024 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: ([^\r\n]*))?")
_HEADER_LINE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*"  # a token, a colon, no CR or LF
#: Every header line at once: one pass in C, not a match per line.
_HEADER_BLOCK = re.compile(_HEADER_LINE + rb"(?:\r\n" + _HEADER_LINE + rb")*")
#: The lines that frame the body, as they start in a checked block lower-cased with a
#: CR LF put before it (so each line, the first too, starts after one): three searches
#: in C cost less than one case-blind regular expression over every line.
_FRAMING = (
    (b"\r\ncontent-length:", "content-length"),
    (b"\r\ntransfer-encoding:", "transfer-encoding"),
    (b"\r\nconnection:", "connection"),
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})(?:;[^\r\n]*)?")
_DIGITS = re.compile(r"[0-9]{1,15}")


class MalformedAnswerError(Exception):
    """The answer is not HTTP/1.1 we can read (a broken or hostile peer)."""


class Headers(Mapping[str, str]):
    """An answer's headers, looked up by name in any case; parsed on first use (most
    answers are read for their body alone). Repeated names are joined with ``", "``."""

    __slots__ = ("_block", "_fields")

    def __init__(self, block: bytes) -> None:
        self._block = block  # checked already: ``name: value`` lines, CRLF between
        self._fields: dict[str, str] | None = None

    def _parsed(self) -> dict[str, str]:
        fields = self._fields
        if fields is None:
            fields = {}
            for line in self._block.split(b"\r\n") if self._block else ():
                name, _, value = line.partition(b":")
                key = name.decode("ascii").lower()
                text = value.strip(b" \t").decode("latin-1")
                found = fields.get(key)
                fields[key] = text if found is None else f"{found}, {text}"
            self._fields = fields  # only once whole: another thread may be reading too
        return fields

    def get(self, name: str, default: Any = None) -> Any:
        return self._parsed().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._parsed()[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._parsed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


class ParsedAnswer:
    """A parsed answer: status, headers, body, and whether the connection may be reused."""

    __slots__ = ("body", "headers", "reason", "reusable", "status")

    def __init__(self, status: int, reason: str, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = b""
        self.reusable = True


def _fields(block: bytes) -> tuple[Headers, dict[str, str]]:
    """A head's header lines (``block``, CRLF between them) as :class:`Headers`, and
    the ones that frame the body (``content-length``, ``transfer-encoding``,
    ``connection``), by lower-cased name.

    Raises:
        MalformedAnswerError: A line that is not ``name: value`` (a bare CR or LF in a
            value included: never read as two lines).
    """
    if block and _HEADER_BLOCK.fullmatch(block) is None:
        raise MalformedAnswerError("a malformed header line")
    framing: dict[str, str] = {}
    lines = b"\r\n" + block.lower()  # offsets in it are 2 past the block's own
    for needle, key in _FRAMING:
        at = lines.find(needle)
        while at >= 0:
            start = at + len(needle)
            end = lines.find(b"\r\n", start)
            # The value from the block itself (lower-casing may not touch it), stripped
            # in Python: a lazy regex value before optional blanks backtracks badly.
            value = block[start - 2 : end - 2 if end >= 0 else len(block)]
            text = value.strip(b" \t").decode("latin-1")
            found = framing.get(key)
            framing[key] = text if found is None else f"{found}, {text}"
            at = lines.find(needle, end) if end >= 0 else -1
    return Headers(block), framing


class AnswerParser:
    """One connection's answers, parsed as their bytes arrive: append what the socket
    gave to :attr:`buffer`, then call :meth:`parse`. One answer at a time: call
    :meth:`expect` before each request."""

    __slots__ = (
        "_answer",
        "_body",
        "_chunked",
        "_interim",
        "_length",
        "_no_body",
        "_scanned",
        "_trailers",
        "buffer",
    )

    def __init__(self) -> None:
        #: Bytes received and not yet parsed (left over after an answer: unasked for).
        self.buffer = bytearray()
        self.expect(head_only=False)

    def expect(self, *, head_only: bool) -> None:
        """Get ready for the next answer (``head_only``: a HEAD's, which has no body)."""
        self._answer: ParsedAnswer | None = None
        self._length: int | None = None  # body bytes expected; None: chunked or to close
        self._chunked = False
        self._body = bytearray()  # a chunked body so far
        self._trailers = False  # the last chunk is in: its trailers are due
        self._no_body = head_only
        self._interim = 0  # 1xx heads skipped so far
        # How far the buffer is known to hold no blank line: a head or trailers that
        # arrive a byte at a time are searched once, not once per byte.
        self._scanned = 0

    @property
    def head_done(self) -> bool:
        """Whether the answer's status line and headers are in."""
        return self._answer is not None

    def parse(self, eof: bool) -> ParsedAnswer | None:
        """The answer, once whole (then no longer held here); None while more bytes are
        due (``eof``: the peer has closed its end, so none will come).

        Raises:
            MalformedAnswerError: What arrived is not an answer secureml reads.
        """
        answer = self._parsed_so_far(eof)
        if answer is not None:
            # The caller's now: kept here, a kept-alive connection would hold its body
            # (a secret, a token) until its next request.
            self._answer = None
        return answer

    def _parsed_so_far(self, eof: bool) -> ParsedAnswer | None:
        if self._answer is None and not self._parse_head():
            return None
        answer = self._answer
        assert answer is not None  # noqa: S101 - set by _parse_head
        if self._chunked:
            return self._parse_chunks(answer)
        if self._length is None:  # framed by the close (HTTP/1.0 style)
            if len(self.buffer) > MAX_ANSWER_BYTES:
                raise MalformedAnswerError("an answer larger than secureml reads")
            if not eof:
                return None
            answer.body, answer.reusable = bytes(self.buffer), False
            self.buffer.clear()
            return answer
        if len(self.buffer) < self._length:
            return None
        if len(self.buffer) > self._length:
            raise MalformedAnswerError("more bytes than the answer's Content-Length")
        answer.body = bytes(self.buffer)
        self.buffer.clear()
        return answer

    def _parse_head(self) -> bool:
        """Whether the head is in (parsed into ``_answer``); 1xx heads are skipped."""
        buffer = self.buffer
        while True:
            end = buffer.find(b"\r\n\r\n", self._scanned)
            if end < 0 or end > MAX_HEAD_BYTES:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedAnswerError("an answer's head larger than 64 KiB")
                self._scanned = max(0, len(buffer) - 3)
                return False
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            self._scanned = 0
            first, _, block = head.partition(b"\r\n")
            status_line = _STATUS_LINE.fullmatch(first)
            if status_line is None:
                raise MalformedAnswerError("not an HTTP/1.x status line")
            status = int(status_line[1])
            if status >= 200:  # 100 Continue and the like: the real answer follows
                break
            self._interim += 1
            if self._interim > MAX_INTERIM_HEADS:  # a flood, each parsed on the loop
                raise MalformedAnswerError("too many 1xx heads before an answer")
        headers, framing = _fields(block)
        answer = ParsedAnswer(status, (status_line[2] or b"").decode("latin-1"), headers)
        field = framing.get  # by lower-cased name
        # A list of options ("keep-alive, close"), or several lines joined into one.
        options = (field("connection") or "").lower()
        if first.startswith(b"HTTP/1.0") or (
            "close" in options and "close" in {o.strip() for o in options.split(",")}
        ):
            answer.reusable = False
        self._answer = answer
        self._frame(answer, field)
        return True

    def _frame(self, answer: ParsedAnswer, field: Callable[[str], str | None]) -> None:
        """How the body ends: no body, chunks, a length, or the connection's close."""
        if self._no_body or answer.status in (204, 304):
            self._length = 0
        elif (coding := field("transfer-encoding")) is not None:
            if coding.lower() != "chunked":
                raise MalformedAnswerError("a transfer coding other than chunked")
            self._chunked = True
            if field("content-length") is not None:
                answer.reusable = False  # both framings: read as chunked, then closed
        elif (length := field("content-length")) is not None:
            # ASCII digits only ("10, 10" and "²" too are refused: never guessed).
            if _DIGITS.fullmatch(length) is None:
                raise MalformedAnswerError("a malformed Content-Length")
            self._length = int(length)
            if self._length > MAX_ANSWER_BYTES:
                raise MalformedAnswerError("an answer larger than secureml reads")
        else:
            answer.reusable = False

    def _parse_chunks(self, answer: ParsedAnswer) -> ParsedAnswer | None:
        """The chunked body, once its last chunk and trailers are in; each chunk is
        taken out of the buffer as it completes (so a body of tiny chunks costs its
        length, not its square)."""
        buffer = self.buffer
        while True:
            if self._trailers:
                return self._after_trailers(answer)
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise MalformedAnswerError("a malformed chunk size line")
                return None
            size_line = _CHUNK_SIZE.fullmatch(bytes(buffer[:line_end]))
            if size_line is None:
                raise MalformedAnswerError("a malformed chunk size line")
            size = int(size_line[1], 16)
            if size == 0:
                del buffer[: line_end + 2]
                self._trailers = True
                continue
            if len(self._body) + size > MAX_ANSWER_BYTES:
                raise MalformedAnswerError("an answer larger than secureml reads")
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None
            if buffer[start + size : start + size + 2] != b"\r\n":
                raise MalformedAnswerError("a chunk without its line end")
            self._body += buffer[start : start + size]
            del buffer[: start + size + 2]

    def _after_trailers(self, answer: ParsedAnswer) -> ParsedAnswer | None:
        """The answer once the trailers after the last chunk are in (if any)."""
        buffer = self.buffer
        if buffer[:2] == b"\r\n":  # no trailers
            taken = 2
        else:
            taken = buffer.find(b"\r\n\r\n", self._scanned) + 4
            if taken < 4:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedAnswerError("trailers larger than 64 KiB")
                self._scanned = max(0, len(buffer) - 3)
                return None
        del buffer[:taken]
        if buffer:
            raise MalformedAnswerError("bytes after the answer's last chunk")
        answer.body, self._body = bytes(self._body), bytearray()
        return answer


# -- the request -------------------------------------------------------------------

#: Header values that would end the header early (a line break): refused, not quoted.
_LINE_BREAK = re.compile(r"[\r\n]")
#: Methods whose request says its (perhaps empty) body's length, as urllib3 does.
_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})
#: What a request target may hold unescaped (RFC 3986); anything else is escaped as
#: urllib3 would.
_TARGET_SAFE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")


@functools.lru_cache(maxsize=64)
def _host_header(scheme: str, netloc: str) -> str:
    """The ``Host`` header for a URL's origin (the port only when it is not the
    scheme's own), as http.client sends it."""
    parts = urlsplit(f"{scheme}://{netloc}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != (443 if scheme == "https" else 80):
        host = f"{host}:{parts.port}"
    return host


def _encoded_target(target: str) -> str:
    """``target`` (a path and query) with what a request line cannot carry escaped."""
    if _TARGET_SAFE.fullmatch(target):
        return target
    from urllib3.util.url import _encode_target

    return str(_encode_target(target))


def _broken_name(headers: dict[str, str]) -> str:
    """The (first line of the) name of the first header whose name or value holds a
    line break, for a message that never shows a value."""
    for name, value in headers.items():
        # Their text as join sent it: no method of a str subclass is called.
        shown, sent = "".join((name,)), "".join((value,))
        if _LINE_BREAK.search(shown) or _LINE_BREAK.search(sent):
            lines = shown.splitlines()
            return lines[0] if lines else ""
    return "?"


def request_bytes(
    method: str, parts: SplitResult, target: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    """The whole request: its line, ``Host``, ``Accept-Encoding: identity``, ``headers``
    and ``Content-Length`` (when there is a body, or the method expects one), then the body.

    Raises:
        UnicodeEncodeError: A header value outside Latin-1 (as http.client), with
            nothing of the text in it (it would be the token).
        ValueError: A header name or value with a line break (its value is not quoted).
    """
    method = method.upper()
    # Joined, never formatted or added: join takes each str's own text, calling none of
    # its methods (a subclass's __format__ or __radd__ could hand back other text than
    # the one checked below), and a name or value that is not a str is a TypeError
    # that does not show it.
    if type(headers) is not dict:  # a mapping whose items() may not be pairs
        headers = dict(headers)
    fields = "\r\n".join(map(": ".join, headers.items()))
    if headers:
        fields += "\r\n"  # the join's own str: adding to it calls no subclass's method
    # Each field ends in one CR LF: any other CR or LF is in a name or value, and would
    # end it early. (Two counts: cheaper than searching the names and values.)
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError(f"the {_broken_name(headers)!r} header holds a line break")
    if body is not None or method in _EXPECTING_BODY:
        fields += f"Content-Length: {len(body or b'')}\r\n"
    host = _host_header(parts.scheme, parts.netloc)
    text = (
        f"{method} {_encoded_target(target)} HTTP/1.1\r\nHost: {host}\r\n"
        f"Accept-Encoding: identity\r\n{fields}\r\n"
    )
    try:
        head = text.encode("latin-1")
    except UnicodeEncodeError:
        # A fresh one: the codec's own holds the whole text, token and all.
        raise UnicodeEncodeError("latin-1", "", 0, 1, "a header outside Latin-1") from None
    return head + body if body else head
