"""notify: the one funnel for everything worth knowing (seed: Notification).

Each event becomes one JSON line on standard output (the journal in prod, the terminal in
dev) and one entry in the capped Redis stream `log`, which the admin UI reads. Before
either, secrets are redacted: passwords, cookies, CSRF, reset and verify tokens.

Events: `start`, `stop`, `worker exit`, `redis down`/`redis up`, `redis exit`,
`reply` (every reply >= 400), `client error` (POST /error), `error` (an exception).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sys
import time
import traceback
from typing import Any

import msgspec

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

    def setup(self, env: str, role: str, maxlen: int) -> None:
        self.env, self.role, self.maxlen = env, role, maxlen

    def attach_async(self, db: Any) -> None:
        """In a worker's event loop: entries go to Redis in batches from a background task."""
        self._db = db
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def attach_sync(self, client: Any) -> None:
        self._sync = client

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
        if self._sync is not None:
            try:
                self._sync.xadd(STREAM, {"json": line}, maxlen=self.maxlen, approximate=True)
            except Exception:  # noqa: BLE001 - Redis down: the line above is the record
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

    async def close(self) -> None:
        """Flush what is queued (bounded), then stop the background task."""
        for _ in range(50):
            if not self._queue:
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            self._task = None


notify = Notifier()
