"""notify: the one funnel for everything worth knowing (seed: Notification).

Each event becomes one JSON line on standard output (the journal in prod, the terminal in
dev) and one entry in the capped Redis stream `log`, which the admin UI reads. Before
either, secrets are redacted: passwords, cookies, CSRF, reset and verify tokens.

Events: `start`, `stop`, `worker exit`, `redis down`/`redis up`, `redis exit`,
`reply` (every reply >= 400), `client error` (POST /error), `error` (an exception).

With LOG_URL set, every process also forwards its lines to that endpoint (the seed's
"Logging as a service"): a thread of its own POSTs them in batches as JSON lines, so no
request ever waits on it; while the endpoint is down the lines wait in a bounded buffer
(LOG_BUFFER), and what did not fit is counted and reported as a `log dropped` line.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sys
import threading
import time
import traceback
import urllib.request
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .db import Client

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"pass|cookie|csrf|token|secret|authorization|session", re.I)
_SECRET_IN_TEXT = re.compile(
    r"((?:token|csrf|password|secret|session|cookie)[\"']?\s*[=:]\s*[\"']?)([^\s&\"';,]+)", re.I)
# a Cookie or Authorization header holds several values ("a=1; lorebase=..."; "Bearer ..."):
# everything to the end of the line or the closing quote goes
_SECRET_HEADER = re.compile(r"((?:set-)?cookie|authorization)([\"']?\s*[=:]\s*[\"']?)([^\r\n\"']+)", re.I)
_encode = msgspec.json.Encoder().encode
STREAM = "log"


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secrets replaced, at any depth."""
    if depth > 8:
        return "[deep]"
    if isinstance(value, dict):
        return {str(k): (REDACTED if _SECRET_KEY.search(str(k)) else redact(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in value[:100]]
    if isinstance(value, str):
        if len(value) > 4000:
            value = value[:4000] + "…"
        value = _SECRET_HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, value)
        return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + REDACTED, value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact(str(value), depth + 1)


class Forwarder:
    """Lines to LOG_URL, from a daemon thread: a batch (at most BATCH lines) every EVERY
    seconds or sooner when one is full; a failed POST is retried with backoff, its lines
    kept while the buffer has room."""

    BATCH = 500
    EVERY = 1.0
    TIMEOUT = 5.0

    def __init__(self, url: str, buffer: int, env: str, role: str):
        self.url = url
        self.buffer = max(1, buffer)
        self.env, self.role = env, role
        self.lines: collections.deque[bytes] = collections.deque()
        self.dropped = 0  # lines that found the buffer full
        self.reported = 0  # of those, how many a `log dropped` line has told
        self.sent = 0
        self.failures = 0
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="lorebase-log-forward", daemon=True)
        self.thread.start()

    def put(self, line: bytes) -> None:
        """Never blocks: a full buffer drops the line (counted)."""
        if len(self.lines) >= self.buffer:
            self.dropped += 1
            return
        self.lines.append(line)
        if len(self.lines) >= self.BATCH:
            self.wake.set()

    def _run(self) -> None:
        pause = self.EVERY
        while True:
            self.wake.wait(pause)
            self.wake.clear()
            stopping = self.stopping
            pause = self.EVERY if self._send_all() else min(max(pause * 2, 1.0), 30.0)
            if stopping:
                return

    def _send_all(self) -> bool:
        """Sends what is buffered; False when the endpoint failed (the batch kept if it fits)."""
        while self.lines or self.dropped > self.reported:
            batch = [self.lines.popleft() for _ in range(min(self.BATCH, len(self.lines)))]
            missed = self.dropped - self.reported
            if missed:
                report = _encode({"t": round(time.time(), 3), "ev": "log dropped", "env": self.env,
                                  "role": self.role, "pid": os.getpid(), "count": missed, "url": _host(self.url)})
                batch.insert(0, report)
            if not self._post(batch):
                self.failures += 1
                kept = batch[1:] if missed else batch  # the report is made again, with the new count
                room = self.buffer - len(self.lines)
                self.dropped += max(0, len(kept) - room)
                self.lines.extendleft(reversed(kept[:max(0, room)]))
                return False
            self.reported += missed
            self.sent += len(batch)
        return True

    def _post(self, batch: list[bytes]) -> bool:
        # the operator's URL, checked to be http(s) by config
        request = urllib.request.Request(self.url, data=b"\n".join(batch) + b"\n", method="POST",  # noqa: S310
                                         headers={"content-type": "application/x-ndjson"})
        try:
            with urllib.request.urlopen(request, timeout=self.TIMEOUT) as reply:  # noqa: S310
                return 200 <= reply.status < 300
        except (OSError, ValueError):
            return False

    def close(self, timeout: float = 2.0) -> None:
        """One last send (bounded), then the thread ends."""
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout)


def _host(url: str) -> str:
    return url.split("@")[-1].split("/")[2] if "://" in url else url


class Notifier:
    """Call it: notify("event", key=value, ...). Never raises, never blocks on Redis."""

    def __init__(self) -> None:
        self.role = "cli"
        self.env = "dev"
        self.maxlen = 10000
        self._queue: collections.deque[bytes] = collections.deque(maxlen=10000)
        self._db: Any = None  # the async client (workers)
        self._sync: Any = None  # a redis-py client (master, tasks)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = 0  # entries dropped because Redis was unreachable
        self.forwarder: Forwarder | None = None

    def setup(self, env: str, role: str, maxlen: int, log_url: str = "", log_buffer: int = 10000) -> None:
        """Who this process is; with `log_url`, its own forwarder (a forked child never uses
        its parent's: that thread did not survive the fork)."""
        self.env, self.role, self.maxlen = env, role, maxlen
        self.forwarder = Forwarder(log_url, log_buffer, env, role) if log_url else None

    def attach_async(self, db: Any) -> None:
        """In a worker's event loop: entries go to Redis in batches from a background task."""
        self._db = db
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def attach_sync(self, client: Any) -> None:
        """In the master: entries go to Redis from a thread of their own, so no caller (the
        master's loop, which accepts every connection) ever waits on a slow Redis."""
        self._sync = client
        self._sync_lines: collections.deque[bytes] = collections.deque()
        self._sync_wake = threading.Event()
        self._sync_thread = threading.Thread(target=self._drain_sync, args=(client,), daemon=True,
                                             name="lorebase-notify")
        self._sync_thread.start()

    def _drain_sync(self, client: Any) -> None:
        while self._sync is client:
            self._sync_wake.wait(1.0)
            self._sync_wake.clear()
            while self._sync_lines:
                batch = [self._sync_lines.popleft() for _ in range(min(500, len(self._sync_lines)))]
                try:
                    pipe = client.pipeline(transaction=False)
                    for line in batch:
                        pipe.xadd(STREAM, {"json": line}, maxlen=self.maxlen, approximate=True)
                    pipe.execute()
                except Exception:  # noqa: BLE001 - Redis down: stdout has them
                    self.lost += len(batch)

    def detach_sync(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout`), then stop writing to Redis."""
        if self._sync is None:
            return
        deadline = time.monotonic() + timeout
        while self._sync_lines and time.monotonic() < deadline:
            self._sync_wake.set()
            time.sleep(0.01)
        self._sync = None
        self._sync_wake.set()

    def __call__(self, event: str, **fields: Any) -> None:
        try:
            entry = {"t": round(time.time(), 3), "ev": event, "env": self.env, "role": self.role,
                     "pid": os.getpid()}
            entry.update(redact(fields))
            line = _encode(entry)
        except Exception as error:  # noqa: BLE001 - notify must never be the thing that fails
            line = _encode({"t": time.time(), "ev": "notify failed", "error": repr(error)})
        try:
            os.write(sys.stdout.fileno(), line + b"\n")
        except (OSError, ValueError):
            pass
        if self.forwarder is not None:
            self.forwarder.put(line)
        if self._sync is not None:
            if len(self._sync_lines) < 10000:
                self._sync_lines.append(line)
                self._sync_wake.set()
            else:
                self.lost += 1
        elif self._wake is not None:
            self._queue.append(line)
            self._wake.set()

    def exception(self, event: str, error: BaseException, **fields: Any) -> None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self(event, error=repr(error), trace=trace[-6000:], **fields)

    async def _drain(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch: list[bytes] = []
            while self._queue and len(batch) < 500:
                batch.append(self._queue.popleft())
            if not batch:
                continue
            try:
                await self._db.pipeline([("XADD", STREAM, "MAXLEN", "~", self.maxlen, "*", "json", line)
                                         for line in batch])
            except Exception:  # noqa: BLE001 - Redis down: stdout has them
                self.lost += len(batch)
            if self._queue:
                self._wake.set()

    def close_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()

    async def close(self) -> None:
        """Flush what is queued (bounded), then stop the background task."""
        for _ in range(50):
            if not self._queue:
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.forwarder is not None:
            await asyncio.to_thread(self.close_forwarder)


notify = Notifier()


async def read(db: Client, start: str, end: str, count: int, newest_first: bool = True) -> list[tuple[str, str]]:
    """Up to `count` entries of the stream `log` between the ids `start` and `end` (XRANGE's
    syntax: `-`, `+`, a unix ms, `(<id>` for exclusive), as (id, the JSON line); newest first
    (`start` is then the newer end) or oldest first. Entries without a `json` field are
    returned with an empty line."""
    command = ("XREVRANGE", STREAM, start, end) if newest_first else ("XRANGE", STREAM, start, end)
    out = []
    for entry_id, fields in await db.call(*command, "COUNT", count) or []:
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        out.append((str(entry_id), str(values.get("json", ""))))
    return out
