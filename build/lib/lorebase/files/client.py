"""A lean asyncio HTTP/1.1 client over h11 (already here as uvicorn's), for one peer: the
file server. A small pool of kept-alive connections; every connect, read and write held to
`timeout` seconds (not a whole transfer: a large body moves as long as bytes keep moving);
bodies stream both ways, never held whole. Any failure to talk to the peer is `PeerError`;
a reply, whatever its status, is a `Response`.

A connection goes back to the pool only after a complete exchange; one the peer closed while
idle is noticed on reuse and the request is made once more on a new connection; a request
with a streamed body (which cannot be sent twice) always opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import h11

READ = 64 * 1024


class PeerError(Exception):
    """The peer could not be reached, closed the connection, or was too slow."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """The status and headers (lower-case names); the body read with `read()` or `stream()`,
    after which (or on `close()`) the connection goes back to the pool or away."""

    def __init__(self, pool: Pool, conn: _Conn, event: h11.Response):
        self.pool = pool
        self.conn: _Conn | None = conn
        self.status = event.status_code
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}

    async def stream(self) -> AsyncIterator[bytes]:
        conn = self.conn
        if conn is None:
            return
        try:
            while True:
                event = await self.pool.next_event(conn)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.conn = None
                    self.pool.release(conn, reuse=True)
                    return
                else:
                    raise PeerError(f"unexpected {type(event).__name__} in a reply body")
        finally:
            if self.conn is not None:  # not read to the end (an error, the reader gone)
                self.close()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream()])

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.pool.release(conn, reuse=False)


class Pool:
    def __init__(self, host: str, port: int, timeout: float, keep: int, limit: int, headers: dict[str, str],
                 tls: bool = False):
        self.host = host
        self.port = port
        self.tls = ssl.create_default_context() if tls else None  # https://: the system's CAs
        self.timeout = timeout
        self.keep = keep
        self.idle: list[_Conn] = []
        self.slots = asyncio.BoundedSemaphore(limit)  # bound to a loop on first use (3.10+)
        self.headers = [(k, v) for k, v in headers.items()]
        self.authority = f"{host}:{port}"

    async def _connect(self) -> _Conn:
        try:
            opening = asyncio.open_connection(self.host, self.port, ssl=self.tls)
            reader, writer = await asyncio.wait_for(opening, self.timeout)
        except (TimeoutError, OSError) as error:
            raise PeerError(f"connect to {self.authority}: {type(error).__name__} {error}") from None
        return _Conn(reader, writer)

    async def next_event(self, conn: _Conn) -> Any:
        try:
            while True:
                event = conn.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event
                data = await asyncio.wait_for(conn.reader.read(READ), self.timeout)
                conn.h11.receive_data(data)  # b"": the peer closed; h11 then raises or ends the body
        except (TimeoutError, OSError, h11.ProtocolError) as error:
            raise PeerError(f"read from {self.authority}: {type(error).__name__} {error}") from None

    async def _write(self, conn: _Conn, data: bytes | None) -> None:
        if data:
            conn.writer.write(data)
        try:
            await asyncio.wait_for(conn.writer.drain(), self.timeout)
        except (TimeoutError, OSError) as error:
            raise PeerError(f"write to {self.authority}: {type(error).__name__} {error}") from None

    def release(self, conn: _Conn, reuse: bool) -> None:
        self.slots.release()
        if reuse and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and conn.usable() \
                and len(self.idle) < self.keep:
            conn.h11.start_next_cycle()
            self.idle.append(conn)
        else:
            conn.close()

    async def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes | AsyncIterator[bytes] = b"") -> Response:
        """Sends the request (an async iterator body needs a content-length header) and reads
        the reply's head; the caller reads or closes the Response."""
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout)
        except TimeoutError:
            raise PeerError(f"no free connection to {self.authority}") from None
        try:
            return await self._exchange(method, target, headers or {}, body)
        except BaseException:
            self.slots.release()
            raise

    async def _exchange(self, method: str, target: str, headers: dict[str, str],
                        body: bytes | AsyncIterator[bytes]) -> Response:
        retry = isinstance(body, bytes)
        while True:
            # a streamed body (an upload) always gets a new connection: it cannot be sent twice,
            # so it must not meet one the peer closed while idle
            reused = bool(self.idle) and retry
            conn = self.idle.pop() if reused else await self._connect()
            if reused and not conn.usable():
                conn.close()
                continue
            sent = [*self.headers, ("host", self.authority), *headers.items()]
            if isinstance(body, bytes):
                sent.append(("content-length", str(len(body))))
            try:
                try:
                    await self._write(conn, conn.h11.send(h11.Request(method=method, target=target, headers=sent)))
                    if isinstance(body, bytes):
                        await self._write(conn, conn.h11.send(h11.Data(data=body)) if body else None)
                    else:
                        async for chunk in body:
                            await self._write(conn, conn.h11.send(h11.Data(data=chunk)))
                    await self._write(conn, conn.h11.send(h11.EndOfMessage()))
                except h11.LocalProtocolError as error:
                    raise PeerError(f"request to {self.authority}: {error}") from None
                while True:
                    event = await self.next_event(conn)
                    if isinstance(event, h11.Response):
                        return Response(self, conn, event)
                    if not isinstance(event, h11.InformationalResponse):
                        raise PeerError(f"unexpected {type(event).__name__} before a reply")
            except PeerError:
                conn.close()
                if reused and retry:  # closed by the peer while idle (its restart): once more, anew
                    retry = False
                    self.close()  # the other idle ones are as stale
                    continue
                raise
            except BaseException:
                conn.close()
                raise

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
