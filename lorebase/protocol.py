"""The HTTP/1.1 protocol the workers serve: uvicorn's httptools protocol with deadlines for
each request's head and body. uvicorn closes a keep-alive connection that stays idle, but not
one that sends its request a byte at a time (slowloris): without nginx in front, a few
hundred such clients would hold every connection a worker has, and each unread body the
memory it holds.

- The head (request line and headers) must arrive within HEADER_TIMEOUT of the connection's
  start or of the head's first byte.
- The body must arrive within BODY_TIMEOUT of the head; a long upload earns BODY_TIMEOUT more
  with every 64 KiB that arrives, so a client has to keep sending at some 2 KiB/s, while a
  JSON body (at most 128 KiB) cannot be dripped for long. A body answered before it was read
  (403 `nocookie` to an anonymous 100 MB upload, 413 on its declared length) earns nothing:
  uvicorn drops what still arrives of it, and the connection is closed once BODY_TIMEOUT
  since its head has passed, unless the body ended and the next request began.

A request past its deadline gets 408 `{"error":"timeout"}` (unless its reply has begun) and
the connection closes; the route reading the body sees the client gone.

The same protocol serves the file server (`--role files`, fileserver.py), which has no master
to keep its connections under a cap: there a connection past the cap, once idle keep-alive
ones have made room, is closed the moment it is accepted (`refuse`).

Nothing runs per request for this: a sweep every SWEEP seconds looks at each open connection
of the worker and reads the state uvicorn keeps anyway (the request's scope before and after
its head, the cycle's `more_body`), so a deadline is late by up to SWEEP. Callbacks on every
request (a timer each, or hooks on the head's start and end) cost GET /auth/csrf 3-7 %.
Coupled to uvicorn's httptools protocol (`scope`, `cycle`), checked by the tests."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .notify import notify

SWEEP = 0.5
LAST_CALL = 0.5  # seconds an idle keep-alive connection stays open once its worker is stopping
EARN = 64 * 1024  # bytes of body that earn another BODY_TIMEOUT
TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                 b"content-length: 19\r\nconnection: close\r\n\r\n{\"error\":\"timeout\"}")


class _Watch:
    """What each open connection is waiting for (a head or a body), since when."""

    def __init__(self, header_timeout: float, body_timeout: float, cap: int = 0, refuse: bool = False):
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.cap = cap  # connections the worker holds at most (WORKER_CONNECTIONS; 0: no cap)
        self.refuse = refuse  # past the cap with no idle one to close: the new connection is closed
        self.refused = 0
        self.open: weakref.WeakSet[Any] = weakref.WeakSet()
        # connection → (what it waits for, the deadline, body bytes counted at the last extension)
        self.waiting: weakref.WeakKeyDictionary[Any, tuple[object, float, int]] = weakref.WeakKeyDictionary()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, protocol: Any) -> None:
        self.open.add(protocol)
        self.waiting[protocol] = (None, time.monotonic() + self.header_timeout, 0)
        if self.cap and len(self.open) > self.cap:
            self.make_room()
            if self.refuse and sum(1 for p in self.open if not p.transport.is_closing()) > self.cap:
                self.open.discard(protocol)
                self.waiting.pop(protocol, None)
                protocol.transport.close()
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    notify("connection refused", refused=self.refused, cap=self.cap,
                           reason="every connection is in the middle of a request")
                return
        if self.timer is None:
            self.timer = protocol.loop.call_later(SWEEP, self.sweep, protocol.loop)

    def make_room(self) -> None:
        """At the cap: close idle keep-alive connections (a reply sent, no new request begun, or
        one whose body was answered unread), down to half the cap. A connection in the middle of a request is never
        touched; the master stops handing this worker connections while it is full. (Read from
        uvicorn's state, like the sweep: a hook on every request to date each one costs W2.)"""
        excess = len(self.open) - self.cap // 2
        for protocol in list(self.open):
            if excess <= 0:
                break
            transport, cycle = protocol.transport, protocol.cycle
            idle = cycle is not None and cycle.response_complete and protocol.scope is cycle.scope
            if idle and transport is not None and not transport.is_closing():
                transport.close()
                excess -= 1

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = time.monotonic()
        if self.cap and len(self.open) >= self.cap * 19 // 20:
            self.make_room()  # idle ones go, so that the master hands this worker new ones again
        for protocol in list(self.open):
            transport = protocol.transport
            if transport is None or transport.is_closing():
                continue
            scope, cycle = protocol.scope, protocol.cycle
            earns = False  # more time for each EARN bytes that arrive
            if scope is None:  # a new connection: its first head is awaited
                what, timeout = None, self.header_timeout
            elif "method" not in scope:  # a head begun, not ended
                what, timeout = scope, self.header_timeout
            elif cycle is not None and cycle.scope is scope and cycle.more_body:
                # a body awaited, or one answered before it was read (a 403 to an anonymous upload):
                # uvicorn skips the rest of that body, and without this a client dripping it would
                # hold the connection for ever (no keep-alive timer runs while bytes arrive)
                what, timeout, earns = cycle, self.body_timeout, not cycle.response_complete
            else:  # a request being answered, or a connection idle between requests
                self.waiting.pop(protocol, None)
                continue
            seen, due, mark = self.waiting.get(protocol, (object(), 0.0, 0))
            if seen is not what:
                self.waiting[protocol] = (what, now + timeout, protocol.received)
                continue
            if earns and protocol.received - mark >= EARN:
                self.waiting[protocol] = (what, now + timeout, protocol.received)
                continue
            if due <= now:
                self.waiting.pop(protocol, None)
                if cycle is None or cycle.scope is not scope or not cycle.response_started:
                    transport.write(TIMEOUT_REPLY)
                transport.close()
        if self.open:
            self.timer = loop.call_later(SWEEP, self.sweep, loop)


def protocol_class(header_timeout: float, body_timeout: float, cap: int = 0,
                   refuse: bool = False) -> type[HttpToolsProtocol]:
    watch = _Watch(header_timeout, body_timeout, cap, refuse)

    class Protocol(HttpToolsProtocol):
        received = 0  # body bytes of this connection, for the upload's earned time

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            watch.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            watch.open.discard(self)  # at once: a closed one may wait for the collector to leave the set
            super().connection_lost(exc)

        def on_body(self, body: bytes) -> None:
            self.received += len(body)
            super().on_body(body)

        # A stopping worker (SIGHUP, TTOU) closes its keep-alive connections. uvicorn closes an
        # idle one at once, and a request the client has just written on it is lost (wrk and
        # browsers write the next request the moment a reply ends). Here an idle connection
        # gets LAST_CALL: a request arriving meanwhile is answered with `Connection: close`;
        # one still idle is then closed. So a rolling restart fails no request.
        closing = False

        def shutdown(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.closing = True
                self.loop.call_later(LAST_CALL, self._close_if_idle)
            else:
                self.cycle.keep_alive = False

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self.closing and self.cycle is not None:
                self.cycle.keep_alive = False

        # The parser refused bytes (bad framing or head). uvicorn writes its 400 and closes at
        # once, though a request pipelined before the bad bytes may still be awaiting its reply:
        # that reply was lost and the 400 read as the answer to it. Here such a request (and any
        # queued before it) is answered first and the connection closes after it; the bad one
        # gets no reply, which a client reads as "not served" (RFC 9112 9.3.2). Only on a bad
        # request, so nothing is added to the hot path.
        def send_400_response(self, msg: str) -> None:
            cycle = self.cycle
            if cycle is None or (cycle.response_complete and not cycle.more_body):
                super().send_400_response(msg)  # between requests: the 400 answers the bad one
            elif not cycle.more_body:  # its request is whole, its reply pending: it goes first
                cycle.keep_alive = False
            elif not cycle.response_started:  # its own body is malformed: the 400 answers it
                super().send_400_response(msg)
            else:  # a reply to it is already on the wire: another one would answer nothing
                self.transport.close()

        def _close_if_idle(self) -> None:
            if self.transport is None or self.transport.is_closing():
                return
            head_begun = self.scope is not None and "method" not in self.scope
            if head_begun or (self.cycle is not None and not self.cycle.response_complete):
                self.loop.call_later(LAST_CALL, self._close_if_idle)  # its reply closes it
                return
            self.transport.close()

    return Protocol
