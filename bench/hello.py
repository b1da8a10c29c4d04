"""A bare hello-world on lorebase's HTTP server stack, the floor bench/run.py measures the
chain against: the same 13-byte JSON body as lorebase's GET /ping, no routing, no headers
beyond content-type and content-length.

    python bench/hello.py --port 8001 --workers 2 --mode shared     # as lorebase's master
    python bench/hello.py --port 8001 --workers 2 --mode reuseport  # each worker binds its own
    python bench/hello.py --port 8001 --headers lorebase  # replying with lorebase's header set

--mode shared does what lorebase's master does: bind one listening socket in the parent,
fork the workers, and each runs uvicorn.Server(...).run(sockets=[sock]) on the inherited
socket (uvicorn, httptools, uvloop, the same uvicorn.Config as lorebase/worker.py).
--mode reuseport: each forked worker binds its own socket with SO_REUSEPORT, so the kernel
spreads new connections over the workers instead of letting them race on one accept queue.

`app` (ASGI) and `rsgi_app` (granian's RSGI) are importable on their own, with no
dependency, for running the same app under granian:
    granian --interface asgi --workers 2 --working-dir bench hello:app
    granian --interface rsgi --workers 2 --working-dir bench hello:rsgi_app
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from typing import Any

BODY = b'{"pong":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI: every HTTP request gets 200 {"pong":true}."""
    if scope["type"] == "http":
        await send(START)
        await send(END)
    elif scope["type"] == "lifespan":  # uvicorn runs with lifespan off; granian may still ask
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def headers_app() -> Any:
    """The same app replying with the headers lorebase sends on GET /ping (its security
    headers, content-type, cache-control, an ETag, content-length): what the header set
    alone costs on this server stack, without the chain."""
    from lorebase.http import SECURITY_HEADERS

    start = {"type": "http.response.start", "status": 200, "headers": [
        *SECURITY_HEADERS, (b"content-type", b"application/json"), (b"cache-control", b"no-cache"),
        (b"etag", b'"ce7e7fe581202139bb54b0ee"'), (b"content-length", str(len(BODY)).encode())]}

    async def app_with_headers(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send(start)
            await send(END)

    return app_with_headers


RSGI_HEADERS = [("content-type", "application/json")]


class _RSGIApp:
    """The same reply through granian's RSGI interface (granian adds content-length)."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        protocol.response_bytes(200, RSGI_HEADERS, BODY)


rsgi_app = _RSGIApp()


# -- the server: a master forking workers, as lorebase/master.py --------------------------


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a worker gets SIGTERM when the master dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _listen(host: str, port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(args: argparse.Namespace, sock: socket.socket | None) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        import uvicorn

        if sock is None:  # reuseport: this worker's own socket
            sock = _listen(args.host, args.port, reuseport=True)
        asgi = headers_app() if args.headers == "lorebase" else app
        server = uvicorn.Server(uvicorn.Config(
            asgi, loop="uvloop", http="httptools", lifespan="off", access_log=False,
            server_header=False, log_level="warning", timeout_keep_alive=5))
        server.run(sockets=[sock])
        code = 0
    except BaseException as error:  # report, then exit non-zero
        print(f"hello worker {os.getpid()}: {error!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Stop(Exception):
    """SIGTERM or SIGINT in the master."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=("shared", "reuseport"), default="shared")
    p.add_argument("--headers", choices=("minimal", "lorebase"), default="minimal",
                   help="minimal: content-type and content-length; lorebase: the headers of lorebase's /ping")
    args = p.parse_args(argv)

    def stop(*_: Any) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    alive: set[int] = set()
    try:
        sock = _listen(args.host, args.port, reuseport=False) if args.mode == "shared" else None
        for _ in range(args.workers):
            pid = os.fork()
            if pid == 0:
                _worker(args, sock)
            alive.add(pid)
        print(f"hello: {args.mode} socket, {args.workers} workers on http://{args.host}:{args.port}/", flush=True)
        while alive:
            pid, _ = os.wait()
            alive.discard(pid)
    except (_Stop, ChildProcessError):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in alive:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
