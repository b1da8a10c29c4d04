"""The HTTP/1.1 protocol the workers serve: uvicorn's httptools protocol with deadlines for
each request's head and body. uvicorn closes a keep-alive connection that stays idle, but not
one that sends its request a byte at a time (slowloris): without nginx in front, a few
hundred such clients would hold every connection a worker has, and each unread body the
memory it holds.

- The head (request line and headers) must arrive within HEADER_TIMEOUT of the connection's
  start or of the request's first byte.
- The body must arrive within BODY_TIMEOUT of the head; a long upload earns BODY_TIMEOUT more
  with every 64 KiB that arrives, so a client has to keep sending at some 2 KiB/s, while a
  JSON body (at most 128 KiB) cannot be dripped for long.

A request past its deadline gets 408 `{"error":"timeout"}` (unless its reply has begun) and
the connection closes; the route reading the body sees the client gone. One sweeping timer
per worker keeps the deadlines: a dict entry per request, no timer each (a timer per request,
`asyncio.timeout`, cost POST /notes ~7 µs under uvloop)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP = 0.25
EARN = 64 * 1024  # bytes of body that earn another BODY_TIMEOUT
TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                 b"content-length: 19\r\nconnection: close\r\n\r\n{\"error\":\"timeout\"}")


class _Deadlines:
    """Connections whose request (head or body) is awaited, and when it is due."""

    def __init__(self) -> None:
        self.due: dict[HttpToolsProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def set(self, protocol: HttpToolsProtocol, seconds: float) -> None:
        self.due[protocol] = time.monotonic() + seconds
        if self.timer is None:
            self.timer = protocol.loop.call_later(SWEEP, self.sweep, protocol.loop)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = time.monotonic()
        for protocol, when in list(self.due.items()):
            if when <= now:
                del self.due[protocol]
                transport = protocol.transport
                if transport is not None and not transport.is_closing():
                    cycle = protocol.cycle
                    if cycle is None or not cycle.response_started:
                        transport.write(TIMEOUT_REPLY)
                    transport.close()
        if self.due:
            self.timer = loop.call_later(SWEEP, self.sweep, loop)


def protocol_class(header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    deadlines = _Deadlines()

    class Protocol(HttpToolsProtocol):
        earned = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            deadlines.set(self, header_timeout)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            deadlines.set(self, header_timeout)

        def on_headers_complete(self) -> None:
            deadlines.due[self] = time.monotonic() + body_timeout  # the timer runs already
            self.earned = 0
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self.earned += len(body)
            if self.earned >= EARN:
                self.earned = 0
                deadlines.due[self] = time.monotonic() + body_timeout
            super().on_body(body)

        def on_message_complete(self) -> None:
            deadlines.due.pop(self, None)
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            deadlines.due.pop(self, None)
            super().connection_lost(exc)

    return Protocol
