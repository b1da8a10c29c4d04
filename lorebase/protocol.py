"""The HTTP/1.1 protocol the workers serve: uvicorn's httptools protocol with a deadline for
each request's head. uvicorn closes a keep-alive connection that stays idle, but not one that
sends its request line and headers a byte at a time (slowloris): without nginx in front, a
few hundred such clients would hold every connection a worker has. Here a head that has not
arrived HEADER_TIMEOUT seconds after the connection opened, or after its first byte, gets
408 and the connection closes. Bodies have their own deadline (BODY_TIMEOUT, in the chain).

One sweeping timer per worker keeps the deadlines (a dict entry per request, no timer each)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP = 0.5
TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                 b"content-length: 19\r\nconnection: close\r\n\r\n{\"error\":\"timeout\"}")


class _Heads:
    """Connections whose request head is awaited, and when it is due."""

    def __init__(self) -> None:
        self.due: dict[HttpToolsProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def wait(self, protocol: HttpToolsProtocol, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        self.due[protocol] = time.monotonic() + seconds
        if self.timer is None:
            self.timer = loop.call_later(SWEEP, self.sweep, loop)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = time.monotonic()
        for protocol, when in list(self.due.items()):
            if when <= now:
                del self.due[protocol]
                transport = protocol.transport
                if transport is not None and not transport.is_closing():
                    transport.write(TIMEOUT_REPLY)
                    transport.close()
        if self.due:
            self.timer = loop.call_later(SWEEP, self.sweep, loop)


def protocol_class(header_timeout: float) -> type[HttpToolsProtocol]:
    heads = _Heads()

    class Protocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            heads.wait(self, header_timeout, self.loop)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            heads.wait(self, header_timeout, self.loop)

        def on_headers_complete(self) -> None:
            heads.due.pop(self, None)
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            heads.due.pop(self, None)
            super().connection_lost(exc)

    return Protocol
