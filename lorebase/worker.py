"""A worker: a forked child of the master serving HTTP on the master's listening socket
with uvicorn (httptools + uvloop, with deadlines for request heads and bodies: protocol.py), the
chain as its ASGI app. It opens its own Redis connection after the fork, so no connection
is ever shared between processes."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import uvicorn

from . import procs
from .app import create_app
from .notify import notify
from .protocol import protocol_class


def serve(config: Any, sock: socket.socket, index: int) -> None:
    """Runs in the child; never returns."""
    code = 1
    try:
        procs.become_child(config, f"worker{index}")

        def uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
            notify.exception("worker exception", error)

        sys.excepthook = uncaught
        app = create_app(config)
        server = uvicorn.Server(uvicorn.Config(
            # proxy_headers off: the chain reads X-Real-IP itself, and only from TRUSTED_PROXIES
            app, loop="uvloop", lifespan="on", access_log=False, proxy_headers=False,
            http=protocol_class(float(config.HEADER_TIMEOUT), float(config.BODY_TIMEOUT)),
            server_header=False, log_level="warning", timeout_graceful_shutdown=int(config.SHUTDOWN_GRACE),
            timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024))
        server.run(sockets=[sock])
        code = 0 if server.started else 3
    except BaseException as error:  # noqa: BLE001 - report, then exit non-zero
        notify.exception("worker exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
