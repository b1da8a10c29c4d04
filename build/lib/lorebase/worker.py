"""A worker: a child of the master (a new interpreter, child.py) serving HTTP with uvicorn (httptools + uvloop,
with deadlines for request heads and bodies: protocol.py), the chain as its ASGI app. It
gets its connections from the master over its channel (see master/broker.py), pings the master
from its event loop, and opens its own Redis connection, so no connection is ever shared
between processes."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from typing import Any

import uvicorn

from . import procs
from .app import create_app
from .notify import notify
from .protocol import protocol_class

PING = 0.5  # seconds between two pings of a worker to its master
MESSAGE = struct.Struct("!cI")  # worker → master: b"P" + open connections, or b"A" + connections taken


class Handoff:
    """Stands where uvicorn keeps its listening servers: connections arrive from the master as
    descriptors, each served by a uvicorn protocol; pings go back from this event loop, so a
    loop that is stuck stops pinging."""

    def __init__(self, chan: socket.socket, create_protocol: Any, state: Any):
        self.chan = chan
        self.create_protocol = create_protocol
        self.state = state
        self.loop = asyncio.get_running_loop()
        chan.setblocking(False)
        self.loop.add_reader(chan.fileno(), self._receive)
        self.timer: asyncio.TimerHandle | None = None
        self._ping()

    def _send(self, kind: bytes, count: int) -> None:
        try:
            self.chan.send(MESSAGE.pack(kind, count))
        except OSError:
            pass  # the master is gone or busy: the next ping says it again

    def _ping(self) -> None:
        self._send(b"P", len(self.state.connections))
        self.timer = self.loop.call_later(PING, self._ping)

    def _receive(self) -> None:
        taken = 0
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.chan, 16, 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the master closed the channel
                self.loop.remove_reader(self.chan.fileno())
                break
            for fd in fds:
                taken += 1
                self.loop.create_task(self._serve(socket.socket(fileno=fd)))
        if taken:
            self._send(b"A", taken)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.create_protocol, sock)
        except OSError:
            sock.close()

    def close(self) -> None:
        """Stop taking connections (uvicorn's shutdown); the pings stop with it."""
        try:
            self.loop.remove_reader(self.chan.fileno())
        except (ValueError, OSError):
            pass
        if self.timer is not None:
            self.timer.cancel()
        self.chan.close()

    async def wait_closed(self) -> None:
        return None


class Server(uvicorn.Server):
    """uvicorn's server with its connections from the master (Handoff) instead of a socket."""

    def __init__(self, config: uvicorn.Config, chan: socket.socket):
        super().__init__(config)
        self.chan = chan

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop)

        self.servers = [Handoff(self.chan, create_protocol, self.server_state)]  # type: ignore[list-item]
        self.started = True


def serve(config: Any, chan: socket.socket, index: int) -> None:
    """Runs in the child; never returns."""
    code = 1
    try:
        procs.become_child(config, f"worker{index}")

        def uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
            notify.exception("worker exception", error)

        sys.excepthook = uncaught
        app = create_app(config)
        server = Server(uvicorn.Config(
            # proxy_headers off: the chain reads X-Real-IP itself, and only from TRUSTED_PROXIES
            app, loop="uvloop", lifespan="on", access_log=False, proxy_headers=False,
            http=protocol_class(float(config.HEADER_TIMEOUT), float(config.BODY_TIMEOUT),
                                int(config.WORKER_CONNECTIONS)),
            server_header=False, log_level="warning", timeout_graceful_shutdown=int(config.SHUTDOWN_GRACE),
            timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024), chan)
        server.run()
        code = 0 if server.started else 3
    except BaseException as error:  # noqa: BLE001 - report, then exit non-zero
        notify.exception("worker exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
