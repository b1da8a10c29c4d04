"""HTTP/1.1 at the byte level: what a worker answers to each framing, head and connection
case, written on raw sockets (no HTTP client library normalizes anything) against a real
lorebase. The cases pin today's server (uvicorn's httptools protocol and lorebase/protocol.py)
so that the same module can judge a server that replaces it (issue 20): every case asserts
the exact reply (status line and error code) or that the connection is closed and that
nothing sent after the bad request was served.

Where today's behaviour is wrong by RFC 9112, the case says what is right and is marked
`xfail(strict=True)`, the reason naming the fault: a fix turns it into a failure to remove.

In production nginx stands in front (docs/operating/nginx.md) and already normalizes much of
this: it parses every request itself and speaks to lorebase with its own clean HTTP/1.1, so
conflicting Content-Length / Transfer-Encoding, obs-fold, bare CR, control bytes, bad
versions and a missing Host are refused by nginx (400), heads over
`large_client_header_buffers` (8 KiB a line) get 400/414, slow heads and bodies are cut by
`client_header_timeout` / `client_body_timeout`, and bodies over `client_max_body_size` get
413. lorebase must still be right on its own: `lorebase serve` in dev and every test run face
clients directly, the file server (`--role files`) is reached by the API nodes without nginx,
and a site may put another proxy (a cloud load balancer, HAProxy, Caddy) in front that
forwards what nginx would refuse: two parsers that disagree on where a request ends are how
requests are smuggled."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .identity_support import dedicated
from .lore import Lorebase

# uvicorn's reply to a request its parser refuses (its body is text, not lorebase's JSON shape;
# a replacing server may answer JSON: change these two lines)
BAD_STATUS = b"HTTP/1.1 400 Bad Request"
BAD_BODY = b"Invalid HTTP request received."

HOST = b"Host: lore\r\n"
PING = b"GET /ping HTTP/1.1\r\n" + HOST + b"\r\n"  # the request smuggled after a bad one
JSON_POST = b"POST /error HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
MESSAGE = b'{"message": "a"}'  # a body /error takes: 200 {}


@dataclass
class Reply:
    status: bytes  # the status line
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes

    @property
    def error(self) -> str:
        return str(json.loads(self.body)["error"])


class Conn:
    """One client connection: write bytes, read replies one at a time by their Content-Length."""

    def __init__(self, lore: Lorebase, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", lore.port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> Conn:
        self.sock.sendall(data)
        return self

    def _more(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            assert self._more(), f"closed before a whole reply head: {self.buffer[:300]!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            assert self._more(), f"closed in a reply body: {status!r} {self.buffer[:300]!r}"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    def closed(self) -> bytes:
        """Wait for the server to close (EOF or reset): whatever came meanwhile, which a test
        expects to be nothing (no reply to anything after the last one it read)."""
        while self._more():
            pass
        extra, self.buffer = self.buffer, b""
        return extra

    def assert_open(self) -> None:
        """The connection still serves: one more request gets its reply."""
        self.send(PING)
        assert self.reply().body == b'{"pong":true}'


def assert_bad_request_and_closed(lore: Lorebase, data: bytes) -> None:
    """`data` on a fresh connection: 400, `connection: close`, and the connection closed with
    nothing else answered (the GET /ping written after the bad request is never served)."""
    with Conn(lore) as conn:
        reply = conn.send(data + PING).reply()
        assert (reply.status, reply.body) == (BAD_STATUS, BAD_BODY), reply
        assert reply.headers[b"connection"] == b"close"
        assert conn.closed() == b""


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.fixture(scope="module")
def deadlined(tmp_path_factory, mail) -> Iterator[Lorebase]:
    """A lorebase whose heads and bodies get 1 s to arrive, for the deadline cases."""
    with dedicated(tmp_path_factory, mail, "protocol", HEADER_TIMEOUT=1, BODY_TIMEOUT=1) as lore:
        yield lore


# -- request smuggling: the body's length must be unambiguous ---------------------------------------

AMBIGUOUS_FRAMING = {
    "length-then-chunked": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "chunked-then-length": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "two-lengths": b"Content-Length: 5\r\nContent-Length: 40\r\n",
    "two-equal-lengths": b"Content-Length: 5\r\nContent-Length: 5\r\n",
    "length-list": b"Content-Length: 5, 5\r\n",
    "length-with-plus": b"Content-Length: +5\r\n",
    "negative-length": b"Content-Length: -5\r\n",
    "hex-length": b"Content-Length: 0x5\r\n",
    "length-past-64-bits": b"Content-Length: 99999999999999999999999\r\n",
    "chunked-then-identity": b"Transfer-Encoding: chunked, identity\r\n",
    "xchunked": b"Transfer-Encoding: xchunked\r\n",
    "chunked-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "space-before-colon": b"Transfer-Encoding : chunked\r\n",
    "obs-folded-coding": b"Transfer-Encoding:\r\n chunked\r\n",
    "nul-after-coding": b"Transfer-Encoding: chunked\x00\r\n",
}


@pytest.mark.parametrize("framing", AMBIGUOUS_FRAMING.values(), ids=AMBIGUOUS_FRAMING.keys())
def test_ambiguous_body_framing_is_400_and_the_connection_closes(server, framing):
    assert_bad_request_and_closed(server, JSON_POST + framing + b"\r\n" + chunked(b"{}"))


LENIENT_CHUNKED = {
    "tab-before-value": b"Transfer-Encoding:\tchunked\r\n",
    "upper-case": b"Transfer-Encoding: CHUNKED\r\n",
    "identity-then-chunked": b"Transfer-Encoding: identity, chunked\r\n",
}


@pytest.mark.parametrize("framing", LENIENT_CHUNKED.values(), ids=LENIENT_CHUNKED.keys())
def test_a_coding_list_ending_in_chunked_is_read_as_chunked(server, framing):
    """Chunked is last in each: every parser ends the body at the same byte, so the request
    after it is a request of its own."""
    with Conn(server) as conn:
        conn.send(JSON_POST + framing + b"\r\n" + chunked(MESSAGE) + PING)
        assert conn.reply().body == b"{}"
        assert conn.reply().body == b'{"pong":true}'


def test_chunked_http_1_0_request_is_served_then_the_connection_closes(server):
    """RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; the message may be
    processed, but the connection must close after it."""
    with Conn(server) as conn:
        conn.send(b"POST /error HTTP/1.0\r\n" + HOST + b"Content-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunked(MESSAGE) + PING)
        reply = conn.reply()
        assert (reply.status, reply.body, reply.headers[b"connection"]) == (b"HTTP/1.1 200 OK", b"{}", b"close")
        assert conn.closed() == b""


def test_a_get_with_a_body_has_the_body_skipped_and_the_next_request_served(server):
    with Conn(server) as conn:
        conn.send(b"GET /ping HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nGET /" + PING)
        assert conn.reply().body == b'{"pong":true}'
        assert conn.reply().body == b'{"pong":true}'


# -- the head: line endings, folding, bytes a header may not hold ------------------------------------

MALFORMED_HEADS = {
    "obs-fold-space": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\r\n\tb\r\n\r\n",
    "first-header-indented": b"GET /ping HTTP/1.1\r\n Host: lore\r\n\r\n",
    "bare-lf-throughout": b"GET /ping HTTP/1.1\nHost: lore\n\n",
    "bare-lf-one-header": b"GET /ping HTTP/1.1\r\nHost: lore\nX-A: b\r\n\r\n",
    "bare-lf-ending-head": b"GET /ping HTTP/1.1\r\nHost: lore\r\n\n",
    "bare-cr-between-headers": b"GET /ping HTTP/1.1\r\nHost: lore\rX-A: b\r\n\r\n",
    "bare-cr-in-value": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\rb\r\n\r\n",
    "nul-in-value": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\x00b\r\n\r\n",
    "control-byte-in-value": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\x01b\r\n\r\n",
    "del-in-value": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A: a\x7fb\r\n\r\n",
    "nul-in-name": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-\x00A: b\r\n\r\n",
    "space-before-colon": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-A : b\r\n\r\n",
    "space-in-name": b"GET /ping HTTP/1.1\r\nHost: lore\r\nX A: b\r\n\r\n",
    "line-without-colon": b"GET /ping HTTP/1.1\r\nHost: lore\r\nXA\r\n\r\n",
    "lower-case-method": b"get /ping HTTP/1.1\r\nHost: lore\r\n\r\n",
    "mixed-case-method": b"Get /ping HTTP/1.1\r\nHost: lore\r\n\r\n",
    "unknown-method": b"FETCH /ping HTTP/1.1\r\nHost: lore\r\n\r\n",
    "300-letter-method": b"G" * 300 + b" /ping HTTP/1.1\r\nHost: lore\r\n\r\n",
    "version-1.2": b"GET /ping HTTP/1.2\r\nHost: lore\r\n\r\n",
    "lower-case-version": b"GET /ping http/1.1\r\nHost: lore\r\n\r\n",
    "100-kib-target": b"GET /" + b"a" * 100 * 1024 + b" HTTP/1.1\r\nHost: lore\r\n\r\n",
}


@pytest.mark.parametrize("head", MALFORMED_HEADS.values(), ids=MALFORMED_HEADS.keys())
def test_a_malformed_head_is_400_and_the_connection_closes(server, head):
    assert_bad_request_and_closed(server, head)


@pytest.mark.xfail(strict=True, reason="RFC 9112 2.3/RFC 9110 15.6.6: a version other than 1.x is "
                   "served as HTTP/1.1 today (llhttp takes 0.9 and 2.0, and a request line without one); "
                   "it should be refused (505 or 400) and the connection closed")
@pytest.mark.parametrize("line", [b"GET /ping HTTP/2.0\r\n", b"GET /ping HTTP/0.9\r\n", b"GET /ping\r\n"],
                         ids=["2.0", "0.9", "no-version"])
def test_a_version_other_than_1_x_is_refused(server, line):
    with Conn(server) as conn:
        reply = conn.send(line + HOST + b"\r\n").reply()
        assert reply.status.split(b" ")[1] in (b"400", b"505"), reply
        assert conn.closed() == b""


@pytest.mark.xfail(strict=True, reason="RFC 9112 3.2: an HTTP/1.1 request without a Host, or with two, "
                   "must be 400; today it is served (lorebase never reads Host, nginx always sends one)")
@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["none", "two"])
def test_an_http_1_1_request_without_exactly_one_host_is_400(server, hosts):
    with Conn(server) as conn:
        reply = conn.send(b"GET /ping HTTP/1.1\r\n" + hosts + b"\r\n").reply()
        assert reply.status == BAD_STATUS, reply


@pytest.mark.parametrize("target", [b"http://lore/ping", b"http://elsewhere.example/ping"])
def test_an_absolute_form_target_is_routed_by_its_path(server, target):
    """RFC 9112 3.2.2: the target's authority replaces Host; lorebase routes on the path alone."""
    with Conn(server) as conn:
        assert conn.send(b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\n").reply().body == b'{"pong":true}'
        conn.assert_open()


def test_options_asterisk_is_404_notfound(server):
    with Conn(server) as conn:
        reply = conn.send(b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n").reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 404 Not Found", "notfound")
        conn.assert_open()


# -- sizes of the head ---------------------------------------------------------------------------------


def test_a_target_over_2048_bytes_is_414_url(server):
    with Conn(server) as conn:
        reply = conn.send(b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\n" + HOST + b"\r\n").reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 414 Request-URI Too Long", "url")


def test_8_kib_of_headers_is_served(server):
    """What nginx passes by default (large_client_header_buffers 8k a line)."""
    with Conn(server) as conn:
        head = b"GET /ping HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 8000 + b"\r\n\r\n"
        assert conn.send(head).reply().body == b'{"pong":true}'


HUGE_HEADS = {
    "one-line-of-1-mib": b"X-Big: " + b"a" * 1024 * 1024 + b"\r\n",
    "20000-headers": b"".join(b"X-%d: a\r\n" % i for i in range(20000)),
}


@pytest.mark.xfail(strict=True, reason="no limit on a head's size: a 1 MiB header or 20,000 headers are "
                   "buffered and served 200 (only HEADER_TIMEOUT bounds them, at any byte rate); the server "
                   "should refuse a head past a limit (431) and close, as nginx does at 8 KiB a line")
@pytest.mark.parametrize("headers", HUGE_HEADS.values(), ids=HUGE_HEADS.keys())
def test_a_head_over_the_limit_is_431_and_the_connection_closes(server, headers):
    with Conn(server) as conn:
        reply = conn.send(b"GET /ping HTTP/1.1\r\n" + HOST + headers + b"\r\n").reply()
        assert reply.status.startswith(b"HTTP/1.1 431 "), reply
        assert conn.closed() == b""


# -- connections: keep-alive, close, pipelining, half-close -----------------------------------------


def test_keep_alive_serves_request_after_request_on_one_connection(server):
    with Conn(server) as conn:
        for _ in range(3):
            reply = conn.send(PING).reply()
            assert reply.body == b'{"pong":true}' and b"connection" not in reply.headers


@pytest.mark.parametrize("head", [b"GET /ping HTTP/1.0\r\n\r\n",
                                  b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                                  b"GET /ping HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"],
                         ids=["http-1.0", "http-1.0-keep-alive", "connection-close"])
def test_the_connection_closes_after_the_reply(server, head):
    with Conn(server) as conn:
        reply = conn.send(head + PING).reply()
        assert (reply.status, reply.body, reply.headers[b"connection"]) == (b"HTTP/1.1 200 OK", b'{"pong":true}',
                                                                          b"close")
        assert conn.closed() == b""


def test_three_pipelined_gets_are_answered_in_order(server):
    with Conn(server) as conn:
        conn.send(PING + b"GET /health HTTP/1.1\r\n" + HOST + b"\r\nGET /nowhere HTTP/1.1\r\n" + HOST + b"\r\n")
        assert conn.reply().body == b'{"pong":true}'
        assert conn.reply().body == b'{"redis":"ok"}'
        last = conn.reply()
        assert (last.status, last.error) == (b"HTTP/1.1 404 Not Found", "notfound")
        conn.assert_open()


def test_a_pipelined_post_with_its_body_then_a_get_are_both_answered(server):
    with Conn(server) as conn:
        conn.send(JSON_POST + b"Content-Length: %d\r\n\r\n" % len(MESSAGE) + MESSAGE + PING)
        assert conn.reply().body == b"{}"
        assert conn.reply().body == b'{"pong":true}'


PIPELINED_BAD = {
    "malformed-head": MALFORMED_HEADS["space-before-colon"],
    "length-and-chunked": JSON_POST + AMBIGUOUS_FRAMING["length-then-chunked"] + b"\r\n" + chunked(b"{}"),
}


@pytest.mark.parametrize("bad", PIPELINED_BAD.values(), ids=PIPELINED_BAD.keys())
def test_a_bad_request_pipelined_after_a_good_one_closes_after_the_good_ones_reply(server, bad):
    """RFC 9112 9.3.2: replies go in the order of the requests. The good request is answered;
    the bad one gets no reply of its own and the connection closes (a client knows the requests
    past the last reply were not served)."""
    with Conn(server) as conn:
        reply = conn.send(PING + bad + PING).reply()
        assert (reply.status, reply.body) == (b"HTTP/1.1 200 OK", b'{"pong":true}'), reply
        assert conn.closed() == b""


def test_a_half_closed_client_still_gets_its_reply(server):
    with Conn(server) as conn:
        conn.send(PING)
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.reply().body == b'{"pong":true}'


# -- 100-continue ----------------------------------------------------------------------------------


def test_expect_100_continue_gets_the_interim_reply_then_the_final_one(server):
    with Conn(server) as conn:
        conn.send(JSON_POST + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(MESSAGE))
        interim = conn.reply()
        assert (interim.status, interim.headers, interim.body) == (b"HTTP/1.1 100 Continue", {}, b"")
        final = conn.send(MESSAGE).reply()
        assert (final.status, final.body) == (b"HTTP/1.1 200 OK", b"{}")


def test_expect_100_continue_refused_by_the_gatekeeper_gets_403_and_no_100(deadlined):
    """The anonymous private POST is answered before its body: no 100, and since the body will
    not come, the connection is closed at the body deadline."""
    with Conn(deadlined) as conn:
        began = time.monotonic()
        conn.send(b"POST /notes HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
                  b"Content-Length: 16\r\nExpect: 100-continue\r\n\r\n")
        reply = conn.reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 403 Forbidden", "nocookie")
        assert conn.closed() == b""
        assert time.monotonic() - began < 4


def test_expect_100_continue_with_a_length_over_the_limit_gets_413_and_no_100(server):
    with Conn(server) as conn:
        conn.send(JSON_POST + b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
        reply = conn.reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 413 Request Entity Too Large", "size")


# -- chunked bodies ----------------------------------------------------------------------------------

BAD_CHUNKS = {
    "non-hex-size": b"zz\r\n{}\r\n0\r\n\r\n",
    "negative-size": b"-2\r\n{}\r\n0\r\n\r\n",
    "size-past-64-bits": b"f" * 18 + b"\r\n{}\r\n0\r\n\r\n",
    "no-crlf-after-data": b"2\r\n{}XX0\r\n\r\n",
    "bare-lf-chunk-lines": b"2\n{}\n0\n\n",
}


@pytest.mark.parametrize("body", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_a_bad_chunk_is_400_and_the_connection_closes(server, body):
    assert_bad_request_and_closed(server, JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n" + body)


@pytest.mark.parametrize("body", [b"10;name=value\r\n" + MESSAGE + b"\r\n0\r\n\r\n",
                                  b"10\r\n" + MESSAGE + b"\r\n0\r\nX-Trailer: t\r\n\r\n"],
                         ids=["chunk-extension", "trailer"])
def test_chunk_extensions_and_trailers_are_read_past(server, body):
    with Conn(server) as conn:
        conn.send(JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n" + body + PING)
        assert conn.reply().body == b"{}"
        assert conn.reply().body == b'{"pong":true}'


def test_a_chunk_of_the_largest_size_waits_for_its_bytes_and_is_408_at_the_body_deadline(deadlined):
    with Conn(deadlined) as conn:
        reply = conn.send(JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 16 + b"\r\n{}").reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 408 Request Timeout", "timeout")
        assert conn.closed() == b""


# -- deadlines -----------------------------------------------------------------------------------------


def drip(conn: Conn, data: bytes, every: float = 0.1) -> float:
    """Send `data` a byte every `every` s until the server answers or closes: the seconds that took."""
    began = time.monotonic()
    conn.sock.settimeout(every)
    for byte in data:
        try:
            conn.sock.sendall(bytes([byte]))
            if not conn._more():
                break
            break  # a reply began
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    spent = time.monotonic() - began
    conn.sock.settimeout(10)
    return spent


def test_slowloris_head_is_cut_with_408_at_the_head_deadline(deadlined):
    """A byte of the head every 0.1 s never ends it: 408 and the close about HEADER_TIMEOUT
    (1 s, plus up to the 0.5 s sweep) after the connection opened, long before the head would end."""
    with Conn(deadlined) as conn:
        spent = drip(conn, b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n")
        assert 0.9 < spent < 3, spent
        reply = conn.reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 408 Request Timeout", "timeout")
        assert conn.closed() == b""


def test_a_body_sent_slower_than_the_body_deadline_is_cut_with_408(deadlined):
    with Conn(deadlined) as conn:
        conn.send(JSON_POST + b"Content-Length: 100\r\n\r\n")
        spent = drip(conn, b"{" + b" " * 98 + b"}")
        assert 0.9 < spent < 3, spent
        reply = conn.reply()
        assert (reply.status, reply.error) == (b"HTTP/1.1 408 Request Timeout", "timeout")
        assert conn.closed() == b""
