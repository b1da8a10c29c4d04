"""The file server (seed: Architecture C, "a node server must act as a filesystem server"):
`lorebase serve [ENV] --role files` serves the bytes of this box's DATA_DIR (LocalBlobs) to
the API nodes whose FILES_URL points here, on FILES_HOST:FILES_PORT.

Every request must carry `X-Files-Secret: <FILES_SECRET>` (compared in constant time);
without it, or with another, 403 and no body, whatever the path. Ids are store.ID (23 hex),
matched on the whole decoded path: no client-chosen path ever reaches the disk.

  PUT    /blobs/<id>           the body (Content-Length) to tmp/, fsynced, then renamed into
                               files/ (204); a body cut short leaves nothing; 507 storage
  GET    /blobs/<id>           the bytes (Range: bytes=a-b → 206), streamed; X-Size, X-Mtime-Ns
  HEAD   /blobs/<id>           X-Size and X-Mtime-Ns only (the API node's ETag)
  DELETE /blobs/<id>           the bytes and a trashed copy (204, also when there were none)
  POST   /blobs/<id>/trash     files/ → trash/ (204; 404 none) until the S3 trash has them
  POST   /blobs/<id>/untrash   back (204; 404 none)
  GET    /blobs/<id>/sha256    the SHA-256 of the bytes, hex (for `files check --verify`)
  POST   /blobs/<id>/fetch     {"user", "sha256"}: fetch the bytes back from S3 (204; 503 s3)
  GET    /blobs?in=files|trash one line per blob: `<id> <size> <mtime_ns>`

The same process runs the S3 mirror (its queue in Redis) and the beat for the bytes it holds,
when REDIS_URL is set (tasks/process.py, role "files"); the API nodes then run neither.

It holds what an API worker holds (protocol.py): HEADER_TIMEOUT and BODY_TIMEOUT for each
request, and at most FILES_CONNECTIONS connections (past it, with no idle one to close, a new
connection is closed at once). It accepts its connections itself (Listener): with its
descriptors used up, asyncio's own accept loop logs a traceback per attempt, some two
thousand a second; here accepting pauses for ACCEPT_PAUSE and one `accept failed` line per
ACCEPT_NOTIFY_EVERY seconds at most says how many attempts failed since the one before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from . import procs
from .errors import DomainError, api_error
from .files.blobs import WHERE, LocalBlobs, StorageFull
from .files.remote import HEADER
from .http import ApiError
from .identity.keys import USERNAME
from .notify import notify
from .protocol import protocol_class

_PATH = re.compile(r"/blobs/([0-9a-f]{23})(?:/(trash|untrash|sha256|fetch))?")
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{1,19})")
_HEADER = HEADER.encode()
FETCH_LIMIT = 4096  # bytes of a fetch request's JSON body
ACCEPT_PAUSE = 0.5  # seconds accepting pauses when the process is out of descriptors (or memory)
ACCEPT_NOTIFY_EVERY = 10.0  # seconds between two `accept failed` lines while it goes on


class BlobServer:
    """The file server as a raw ASGI app over LocalBlobs."""

    def __init__(self, config: Any):
        self.blobs = LocalBlobs(config)
        self.secret = str(config.FILES_SECRET).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        given = b""
        for name, value in scope["headers"]:
            if name == _HEADER:
                given = value
        if not hmac.compare_digest(given, self.secret):
            await _reply(send, 403)
            return
        try:
            await self.route(scope, receive, send)
        except ApiError as error:
            await _reply(send, error.status, error.code)
        except DomainError as error:  # the disk full, S3 down: the status and code errors.TABLE gives
            reply = api_error(error)
            await _reply(send, reply.status, reply.code)

    async def route(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method, path = scope["method"], scope["path"]
        if path == "/blobs" and method == "GET":
            await self.list(scope, send)
            return
        match = _PATH.fullmatch(path)
        if match is None:
            await _reply(send, 404, "notfound")
            return
        file_id, verb = match.group(1), match.group(2)
        if verb is None and method == "PUT":
            await self.put(file_id, scope, receive, send)
        elif verb is None and method in ("GET", "HEAD"):
            await self.get(file_id, scope, send)
        elif verb is None and method == "DELETE":
            await self.blobs.delete(file_id)
            await _reply(send, 204)
        elif verb in ("trash", "untrash") and method == "POST":
            moved = await (self.blobs.trash if verb == "trash" else self.blobs.untrash)(file_id)
            await _reply(send, 204 if moved else 404, "" if moved else "notfound")
        elif verb == "sha256" and method == "GET":
            digest = await self.blobs.digest(file_id)
            if digest is None:
                await _reply(send, 404, "notfound")
            else:
                await _send(send, 200, [(b"content-type", b"text/plain")], digest.encode())
        elif verb == "fetch" and method == "POST":
            await self.fetch(file_id, receive, send)
        else:
            await _reply(send, 405, "method")

    async def put(self, file_id: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The body to a temp file, renamed into place only once complete and fsynced. A
        write the disk refuses stops the writing, not the reading: the rest of the body is
        read and dropped, so the API node reads our 507 instead of a connection reset."""
        declared = _header(scope, b"content-length")
        if declared is None or not declared.isdigit():
            await _reply(send, 411, "length")
            return
        expected = int(declared)
        tmp = self.blobs.temp()
        f = None
        failed: OSError | None = None
        try:
            try:
                f = open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            except OSError as error:
                failed = error
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # cut: the finally removes the temp file
                chunk = message.get("body", b"")
                received += len(chunk)
                if failed is None and f is not None:
                    try:
                        f.write(chunk)
                    except OSError as error:
                        failed = error
                if not message.get("more_body"):
                    break
            if received != expected:
                await _reply(send, 400, "length")
                return
            if failed is None and f is not None:
                try:
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
                    f.close()
                    self.blobs.place(tmp, file_id)
                except OSError as error:
                    failed = error
            if failed is not None:
                notify.exception("storage", failed, file=file_id)
                raise StorageFull(str(failed))
        finally:
            if f is not None and not f.closed:
                with contextlib.suppress(OSError):
                    f.close()
            tmp.unlink(missing_ok=True)
        await _reply(send, 204)

    async def get(self, file_id: str, scope: dict[str, Any], send: Any) -> None:
        stat = await self.blobs.stat(file_id)
        if stat is None:
            await _reply(send, 404, "notfound")
            return
        start, length, status = 0, stat.size, 200
        wanted = _header(scope, b"range")
        span = _RANGE.fullmatch(wanted) if wanted else None
        if span is not None:
            first, last = int(span.group(1)), int(span.group(2))
            if first >= stat.size or last < first:
                await _reply(send, 416, "range")
                return
            start, length, status = first, min(last, stat.size - 1) - first + 1, 206
        headers = [(b"x-size", str(stat.size).encode()), (b"x-mtime-ns", str(stat.mtime_ns).encode()),
                   (b"content-length", str(length).encode()), (b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "GET":
            try:
                async for chunk in self.blobs.read(file_id, start, length):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except FileNotFoundError:
                return  # deleted between the stat and the open: the reply ends short (cut)
        await send({"type": "http.response.body", "body": b""})

    async def fetch(self, file_id: str, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > FETCH_LIMIT:
                await _reply(send, 413, "size")
                return
            if not message.get("more_body"):
                break
        try:
            asked = json.loads(body)
            user, digest = asked["user"], asked["sha256"]
            if not (isinstance(user, str) and USERNAME.fullmatch(user) and isinstance(digest, str)
                    and re.fullmatch(r"[0-9a-f]{64}|", digest)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            await _reply(send, 400, "validation")
            return
        if not self.blobs.s3:
            await _reply(send, 404, "notfound")
            return
        await self.blobs.fetch_back({"id": file_id, "user": user, "sha256": digest})
        await _reply(send, 204)

    async def list(self, scope: dict[str, Any], send: Any) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        where = query.removeprefix("in=") if query.startswith("in=") else "files"
        if where not in WHERE:
            await _reply(send, 400, "validation")
            return
        found = await self.blobs.listing(where)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        lines = [f"{i} {s.size} {s.mtime_ns}\n" for i, s in found.items()]
        for n in range(0, len(lines), 1000):
            await send({"type": "http.response.body", "body": "".join(lines[n:n + 1000]).encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _reply(send: Any, status: int, code: str = "") -> None:
    """A bare status (403: nothing said); an error code also in `X-Error` and a JSON body."""
    if not code:
        await _send(send, status, [], b"")
        return
    await _send(send, status, [(b"content-type", b"application/json"), (b"x-error", code.encode())],
                json.dumps({"error": code}).encode())


class Listener:
    """Stands where uvicorn keeps its listening servers (as worker.Handoff does in a worker):
    accepts each connection and hands it to a uvicorn protocol. Out of descriptors, it stops
    accepting for ACCEPT_PAUSE (the backlog holds the clients meanwhile) and notifies
    `accept failed` at most once per ACCEPT_NOTIFY_EVERY, with the attempts that failed since
    the line before (the first of them included)."""

    def __init__(self, sock: socket.socket, create_protocol: Callable[[], asyncio.Protocol]):
        self.sock = sock
        self.create_protocol = create_protocol
        self.loop = asyncio.get_running_loop()
        self.failed = 0  # attempts failed since the last line
        self.notified = -math.inf
        self.resume: asyncio.TimerHandle | None = None
        self.handing: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):  # then the loop's other work gets its turn
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory
                self._failed(error)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self._serve(conn))
            self.handing.add(task)
            task.add_done_callback(self.handing.discard)

    def _failed(self, error: OSError) -> None:
        self.failed += 1
        now = time.monotonic()
        if now - self.notified >= ACCEPT_NOTIFY_EVERY:
            notify("accept failed", error=str(error), failures=self.failed)
            self.notified, self.failed = now, 0
        self.loop.remove_reader(self.sock.fileno())
        self.resume = self.loop.call_later(ACCEPT_PAUSE, self.loop.add_reader, self.sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.create_protocol, conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        """No new connection (uvicorn's shutdown): the listening socket closes."""
        if self.resume is not None:
            self.resume.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self) -> None:
        return None


class _Server(uvicorn.Server):
    """uvicorn with its connections from a Listener, and without its own signal handling:
    serve() below owns SIGTERM/SIGINT, so the tasks running beside the server stop with it."""

    bind_error: Exception | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            self.should_exit = True
            return
        config = self.config
        try:
            sock = procs.listen(config.host, config.port, "FILES_PORT")
        except (OSError, procs.PortTaken) as error:
            self.bind_error = error
            await self.lifespan.shutdown()
            self.should_exit = True
            return

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state)

        self.servers = [Listener(sock, create_protocol)]  # type: ignore[list-item]
        self.started = True


async def _main(config: Any) -> None:
    server = _Server(uvicorn.Config(
        BlobServer(config), host=str(config.FILES_HOST), port=int(config.FILES_PORT), lifespan="on",
        http=protocol_class(float(config.HEADER_TIMEOUT), float(config.BODY_TIMEOUT), int(config.FILES_CONNECTIONS),
                            refuse=True),
        access_log=False, proxy_headers=False, server_header=False, date_header=False, log_level="warning",
        timeout_keep_alive=30, timeout_graceful_shutdown=int(config.SHUTDOWN_GRACE)))
    tasks = None
    if config.REDIS_URL:
        from .tasks.process import Tasks

        tasks = Tasks(config, role="files")
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.should_exit = True
        if tasks is not None:
            tasks.stopping.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    notify("start", role="files", host=config.FILES_HOST, port=config.FILES_PORT, mirror=bool(tasks))
    running = [asyncio.create_task(server.serve())]
    if tasks is not None:
        running.append(asyncio.create_task(tasks.run(signals=False)))
    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)  # either ending stops the other
    stop()
    await asyncio.gather(*running)
    if isinstance(server.bind_error, procs.PortTaken):
        raise server.bind_error
    if not server.started:
        raise RuntimeError(f"the file server could not listen on {config.FILES_HOST}:{config.FILES_PORT}"
                           + (f": {server.bind_error}" if server.bind_error else ""))
    notify("stop", role="files")


def serve(config: Any) -> int:
    """`lorebase serve --role files`: runs until SIGTERM/SIGINT; 0 on a clean stop."""
    notify.setup(config.ENV, "files", config)
    procs.title("files", config.ENV)
    try:
        asyncio.run(_main(config))
    except procs.PortTaken as error:
        notify("start failed", role="files", error=str(error))
        print(f"lorebase: {error}", file=sys.stderr)  # for the person at the terminal
        return 1
    except Exception as error:  # noqa: BLE001 - report, then exit non-zero
        notify.exception("files exception", error)
        return 1
    return 0
