"""The HTTP/1.1 layer both wires share (backends/_http11.py), and the sync wire's own
exchange on a socket (backends/_vault_http._exchange_on). Hostile answers end to end,
through both wires, are in tests/integration/test_async_wire.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import urllib3

from secureml.key_management.backends._deadline import DeadlinePassedError
from secureml.key_management.backends._http11 import (
    MAX_INTERIM_HEADS,
    AnswerParser,
    Headers,
    MalformedAnswerError,
    ParsedAnswer,
    request_bytes,
)
from secureml.key_management.backends._vault_http import _exchange_on

BODY = b'{"data": {}}'


def parsed(answer: bytes, *, eof: bool = False) -> ParsedAnswer | None:
    parser = AnswerParser()
    parser.buffer += answer
    return parser.parse(eof)


def ok(*headers: bytes) -> bytes:
    head = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY


# -- answers -------------------------------------------------------------------------


def test_a_kept_alive_answer_is_reusable() -> None:
    answer = parsed(ok(b"Connection: keep-alive"))
    assert answer is not None
    assert (answer.status, answer.body, answer.reusable) == (200, BODY, True)


@pytest.mark.parametrize(
    "headers",
    [
        (b"Connection: close",),
        (b"Connection: Keep-Alive, Close",),
        (b"Connection: keep-alive", b"Connection: close"),
        (b"connection:  upgrade ,close ",),
    ],
    ids=["close", "in-a-list", "on-a-second-line", "padded"],
)
def test_close_anywhere_among_the_connection_options_ends_the_connection(
    headers: tuple[bytes, ...],
) -> None:
    answer = parsed(ok(*headers))
    assert answer is not None
    assert not answer.reusable, "the next request would go out on a closing connection"


def test_a_token_that_only_contains_close_is_not_close() -> None:
    answer = parsed(ok(b"Connection: closed-caption"))
    assert answer is not None
    assert answer.reusable


def test_a_head_that_arrives_a_byte_at_a_time_is_read() -> None:
    parser = AnswerParser()
    whole = ok(b"X-Pad: " + b"p" * 2000)
    found = None
    for i in range(len(whole)):
        parser.buffer += whole[i : i + 1]
        found = parser.parse(False)
        if i < len(whole) - 1:
            assert found is None
    assert found is not None
    assert found.body == BODY


def test_an_early_hint_before_the_answer_is_skipped() -> None:
    answer = parsed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok())
    assert answer is not None
    assert answer.status == 200


def test_a_few_interim_heads_are_skipped_but_a_flood_is_refused() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    answer = parsed(interim * MAX_INTERIM_HEADS + ok())
    assert answer is not None
    assert answer.status == 200
    with pytest.raises(MalformedAnswerError, match="too many 1xx"):
        parsed(interim * (MAX_INTERIM_HEADS + 1) + ok())


def test_surplus_bytes_after_the_body_are_refused() -> None:
    with pytest.raises(MalformedAnswerError):
        parsed(ok() + b"\r\n")


def test_headers_are_whole_when_another_thread_reads_them_first() -> None:
    block = b"\r\n".join(b"X-%d: v" % i for i in range(20_000)) + b"\r\nLocation: /there"
    for _ in range(5):
        headers = Headers(block)
        seen: list[object] = []

        def look(headers: Headers = headers, seen: list[object] = seen) -> None:
            seen.append(headers.get("location"))

        threads = [threading.Thread(target=look) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == ["/there"] * 4


# -- requests ------------------------------------------------------------------------

PARTS = urlsplit("http://127.0.0.1:8200/v1/x")


@pytest.mark.parametrize(
    "headers",
    [{"X-Vault-Token": "s.t\r\nX-Evil: 1"}, {"X-Vault-Token": "s.t\nX"}, {"Bad\r\nName": "v"}],
    ids=["crlf-in-a-value", "lf-in-a-value", "crlf-in-a-name"],
)
def test_a_line_break_in_any_header_is_refused_without_quoting_it(
    headers: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match="line break") as caught:
        request_bytes("GET", PARTS, "/v1/x", {"User-Agent": "secureml", **headers}, None)
    assert "s.t" not in str(caught.value)
    assert "Evil" not in str(caught.value)


class _Formatted(str):
    """A str whose formatting (not its text) carries a line break."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return "ok\r\nX-Evil: 1"


def test_a_str_subclass_is_sent_as_its_text_not_its_formatting() -> None:
    sent = request_bytes("GET", PARTS, "/v1/x", {"X-Vault-Token": _Formatted("s.t")}, None)
    assert b"X-Vault-Token: s.t\r\n" in sent
    assert b"X-Evil" not in sent


class _Unended(str):
    """What :class:`_Adding` hands back: drops the CR LF added after it."""

    __slots__ = ()

    def __add__(self, other: str) -> str:
        return str.__str__(self)


class _Adding(str):
    """A str whose addition (not its text) carries another header line."""

    __slots__ = ()

    def __radd__(self, other: str) -> str:
        return _Unended(other + str.__str__(self) + "\r\nX-Evil: 1")


class _NotText:
    """Not a str, but one that `+` would turn into one."""

    def __radd__(self, other: str) -> str:
        return other + "s.t"


def test_a_str_subclass_is_sent_as_its_text_not_its_addition() -> None:
    sent = request_bytes("POST", PARTS, "/v1/x", {"X-Vault-Token": _Adding("s.t")}, b"{}")
    assert b"X-Vault-Token: s.t\r\nContent-Length: 2\r\n\r\n{}" in sent
    assert b"X-Evil" not in sent


def test_a_value_that_only_adds_like_text_is_a_type_error_never_sent() -> None:
    with pytest.raises(TypeError) as caught:
        request_bytes("GET", PARTS, "/v1/x", {"X-Vault-Token": _NotText()}, None)  # type: ignore[dict-item]
    assert "s.t" not in str(caught.value)


def test_a_line_break_under_an_empty_name_is_refused_as_a_line_break() -> None:
    with pytest.raises(ValueError, match="line break") as caught:
        request_bytes("GET", PARTS, "/v1/x", {"": "s.t\r\nX-Evil: 1"}, None)
    assert "s.t" not in str(caught.value)


@pytest.mark.parametrize("value", [b"s.t", None, 7])
def test_a_header_value_that_is_not_text_is_a_type_error_never_sent(value: object) -> None:
    with pytest.raises(TypeError) as caught:
        request_bytes("GET", PARTS, "/v1/x", {"X-Vault-Token": value}, None)  # type: ignore[dict-item]
    assert "s.t" not in str(caught.value)


class _OddItems(dict[str, str]):
    """A mapping whose ``items()`` yields what is not a (name, value) pair."""

    def items(self) -> list[tuple[str, ...]]:  # type: ignore[override]
        return [("X-A", "b", "c"), ("X-Lonely",)]


def test_header_fields_come_in_name_value_pairs_whatever_the_mapping() -> None:
    sent = request_bytes("GET", PARTS, "/v1/x", _OddItems({"X-Vault-Token": "s.t"}), None)
    assert b"X-Vault-Token: s.t\r\n" in sent
    assert b"X-A" not in sent
    assert b"X-Lonely" not in sent


def test_a_header_outside_latin_1_is_refused_without_quoting_it() -> None:
    with pytest.raises(UnicodeEncodeError) as caught:
        request_bytes("GET", PARTS, "/v1/x", {"X-Vault-Token": "s.tök€n"}, None)
    assert "tök" not in str(caught.value)


def test_a_request_is_what_http_client_would_write() -> None:
    sent = request_bytes("post", PARTS, "/v1/x", {"X-Vault-Token": "s.t"}, b"{}")
    assert sent == (
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:8200\r\nAccept-Encoding: identity\r\n"
        b"X-Vault-Token: s.t\r\nContent-Length: 2\r\n\r\n{}"
    )


# -- the sync wire's exchange --------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def test_no_time_left_to_send_is_a_request_never_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Connecting used the deadline up: nothing went out, so a write is not reported as
    one that may have happened (the transport reads NOT_SENT errors as unprocessed)."""
    ours, theirs = pair
    with pytest.raises(urllib3.exceptions.ConnectTimeoutError):
        _exchange_on(ours, b"PUT / HTTP/1.1\r\n\r\n", False, 5.0, time.monotonic() - 0.01)
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(1)  # not a byte was sent


@pytest.mark.parametrize(
    "request_",
    [b"x" * (16 << 20), b"GET / HTTP/1.1\r\n\r\n"],
    ids=["a-send-the-peer-never-reads", "an-answer-that-never-comes"],
)
def test_a_wait_ends_at_the_deadline_not_the_timeout(
    request_: bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    started = time.monotonic()
    with pytest.raises(DeadlinePassedError):
        _exchange_on(ours, request_, False, 30.0, started + 0.3)
    assert time.monotonic() - started < 5


def test_a_timeout_before_the_deadline_is_a_read_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    with pytest.raises(TimeoutError):
        _exchange_on(ours, b"GET / HTTP/1.1\r\n\r\n", False, 0.2, time.monotonic() + 30)
