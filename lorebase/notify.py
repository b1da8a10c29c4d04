"""notify: the one funnel for everything worth knowing (seed: Notification).

Each event becomes one JSON line on standard output (the journal in prod, the terminal in
dev) and one entry in a capped Redis stream, which the admin UI reads: admin actions and
security events in `audit`, everything else (request errors first of all) in `log`, so a
flood of anonymous requests fills `log`, not the admin's record. Before either, secrets are
redacted: passwords, cookies, CSRF, reset, verify and invite tokens.

The streams are sampled, stdout is not: past LOG_RATE request-error lines from one client
address in a window (LOG_WINDOW, a minute), a process writes no more of them to `log` and ends
the window with one `flood` line counting what it left out; the anonymous-reachable security
events (`tampered`,
`signup`, lockouts) go to `audit` at most AUDIT_ANONYMOUS_RATE a window per kind, then one
`flood` line. The counting is in the process's memory: past the limit a request costs no
Redis work at all.

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
import ipaddress
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
_SECRET_KEY = re.compile(r"pass|cookie|csrf|token|secret|authorization|session|\binvite\b", re.I)
_SECRET_IN_TEXT = re.compile(
    r"((?:token|csrf|password|secret|session|cookie|invite)[\"']?\s*[=:]\s*[\"']?)([^\s&\"';,]+)", re.I)
# a Cookie or Authorization header holds several values ("a=1; lorebase=..."; "Bearer ..."):
# everything to the end of the line or the closing quote goes
_SECRET_HEADER = re.compile(r"((?:set-)?cookie|authorization)([\"']?\s*[=:]\s*[\"']?)([^\r\n\"']+)", re.I)
_encode = msgspec.json.Encoder().encode
STREAM = "log"  # request errors and the processes' own events
AUDIT = "audit"  # admin actions and security events
STREAMS = (AUDIT, STREAM)
# the events kept apart in `audit`, by how their names start (so an event added later with
# such a name, `lockout` or `restore refused`, is placed with its kind)
_AUDITED = re.compile(r"admin|tampered|signup|login|destroy|password|email|sessions ended|invite|lock|unlock|"
                      r"restor|backup|task backup|task restore|migrat|.*\block")
# of those, the ones anyone can cause without an account (a lockout: failed logins), or with any
# account (a login in a loop): sampled per kind
_ANONYMOUS = re.compile(r"tampered|signup|login|lock|.*\block")
# request errors: sampled per client address
REQUEST_ERRORS = frozenset({"reply", "client error", "error"})
ADDRESSES_MAX = 10000  # client addresses one window tells apart; the rest count together as "*"


def stream_of(event: str) -> str:
    return AUDIT if _AUDITED.match(event) else STREAM


def _address(ip: str) -> str:
    """The sampling key of a client address: an IPv6 address counts as its /64 (one host
    usually holds the whole /64)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    except ValueError:
        return ip[:64]


class Sampler:
    """Which lines go to the streams, per window of `window` seconds: `rate` request-error lines
    per client address, `anonymous_rate` per kind of anonymous-reachable security event; what
    is left out is counted and told by one `flood` line per address (or kind) at the window's
    end. 0: no limit."""

    def __init__(self, rate: int, anonymous_rate: int, window: float = 60.0):
        self.rate, self.anonymous_rate, self.seconds = rate, anonymous_rate, window
        self.window = 0  # the current window's number (time // seconds)
        self.seen: dict[tuple[str, str], int] = {}  # (event, address or "") → lines this window
        self.left: dict[tuple[str, str], dict[str, int]] = {}  # → what was left out, by status or address

    def admit(self, event: str, fields: dict[str, Any], now: float) -> tuple[bool, list[tuple[str, dict[str, Any]]]]:
        """Whether the line goes to its stream, and the `flood` lines of a window that has just
        ended, to write first (usually none)."""
        if event in REQUEST_ERRORS:
            limit, key = self.rate, (event, _address(str(fields.get("ip") or "")))
        elif self.anonymous_rate and _ANONYMOUS.match(event):
            limit, key = self.anonymous_rate, (event, "")
        else:
            return True, []
        if not limit:
            return True, []
        ended = self.roll(now)
        seen = self.seen
        count = seen.get(key)
        if key[1] and count is None and len(seen) >= ADDRESSES_MAX:
            key = (event, "*")
            count = seen.get(key)
        count = (count or 0) + 1
        seen[key] = count
        if count <= limit:
            return True, ended
        left = self.left.setdefault(key, {})
        what = (f"{fields.get('status', '')} {fields.get('error', '')}".strip() if key[1] else
                _address(str(fields.get("ip") or "?")))
        if len(left) < 20 or what in left:
            left[what] = left.get(what, 0) + 1
        else:
            left["other"] = left.get("other", 0) + 1
        return False, ended

    def roll(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """The `flood` lines of the window before `now`'s, once it has ended (then forgotten)."""
        window = int(now // self.seconds)
        if window == self.window:
            return []
        start, self.window = self.window, window
        left, self.left, self.seen = self.left, {}, {}
        lines = []
        for (event, address), counts in left.items():
            fields: dict[str, Any] = {"of": event, "count": sum(counts.values()),
                                      "since": round(start * self.seconds, 3), "seconds": self.seconds}
            if address:
                fields["ip"] = address
                fields["statuses"] = counts
            else:
                fields["addresses"] = counts
            lines.append((stream_of(event), fields))
        return lines


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
                return 200 <= int(reply.status) < 300
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
        self.maxlen = {STREAM: 10000, AUDIT: 100000}
        self.sampler = Sampler(0, 0)
        self._roll_at: Any = None  # the timer that writes a window's `flood` lines (workers)
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=10000)
        self._db: Any = None  # the async client (workers)
        self._sync: Any = None  # a redis-py client (master, tasks)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = 0  # entries dropped because Redis was unreachable
        self.forwarder: Forwarder | None = None

    def setup(self, env: str, role: str, config: Any) -> None:
        """Who this process is, the streams' caps and rates (LOG_STREAM_MAX, AUDIT_STREAM_MAX,
        LOG_RATE, AUDIT_ANONYMOUS_RATE, LOG_WINDOW); with LOG_URL, its own forwarder (each process
        runs its own thread)."""
        self.env, self.role = env, role
        self.maxlen = {STREAM: config.LOG_STREAM_MAX, AUDIT: config.AUDIT_STREAM_MAX}
        self.sampler = Sampler(config.LOG_RATE, config.AUDIT_ANONYMOUS_RATE, float(config.LOG_WINDOW))
        log_url, log_buffer = config.LOG_URL, config.LOG_BUFFER
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
        self._sync_lines: collections.deque[tuple[str, bytes]] = collections.deque()
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
                    for stream, line in batch:
                        pipe.xadd(stream, {"json": line}, maxlen=self.maxlen[stream], approximate=True)
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
        now = time.time()
        try:
            entry = {"t": round(now, 3), "ev": event, "env": self.env, "role": self.role,
                     "pid": os.getpid()}
            entry.update(redact(fields))
            line = _encode(entry)
        except Exception as error:  # noqa: BLE001 - notify must never be the thing that fails
            line = _encode({"t": now, "ev": "notify failed", "error": repr(error)})
        self._emit(line)
        if self._sync is None and self._wake is None:
            return
        try:
            admitted, ended = self.sampler.admit(event, fields, now)
        except Exception:  # noqa: BLE001 - as above: the line is written unsampled
            admitted, ended = True, []
        if ended:
            self._floods(ended)
        if admitted:
            self._store(stream_of(event), line)
        elif self._roll_at is None and self._wake is not None:
            # a window with lines left out: its `flood` lines are written when it ends, even if
            # nothing else comes (workers; the master and the tasks process serve no requests)
            try:
                seconds = self.sampler.seconds
                self._roll_at = asyncio.get_running_loop().call_later(seconds - now % seconds + 0.01, self._roll)
            except RuntimeError:  # another thread: the window's next line writes them
                pass

    async def record(self, db: Client, event: str, **fields: Any) -> None:
        """One event written straight to its stream and awaited, not printed: for a command
        (`lorebase admin add`) whose standard output is its own words, and which ends right
        after. Raises what Redis raises (the command says so)."""
        entry = {"t": round(time.time(), 3), "ev": event, "env": self.env, "role": self.role, "pid": os.getpid()}
        entry.update(redact(fields))
        stream = stream_of(event)
        await db.call("XADD", stream, "MAXLEN", "~", self.maxlen[stream], "*", "json", _encode(entry))

    def _roll(self) -> None:
        self._roll_at = None
        self._floods(self.sampler.roll(time.time()))

    def _floods(self, lines: list[tuple[str, dict[str, Any]]]) -> None:
        for stream, fields in lines:
            entry = {"t": round(time.time(), 3), "ev": "flood", "env": self.env, "role": self.role,
                     "pid": os.getpid(), **fields}
            line = _encode(entry)
            self._emit(line)
            self._store(stream, line)

    def _emit(self, line: bytes) -> None:
        """Every line, sampled or not: standard output, and LOG_URL's forwarder if any."""
        try:
            os.write(sys.stdout.fileno(), line + b"\n")
        except (OSError, ValueError):
            pass
        if self.forwarder is not None:
            self.forwarder.put(line)

    def _store(self, stream: str, line: bytes) -> None:
        """To Redis, from the background writer of this process."""
        if self._sync is not None:
            if len(self._sync_lines) < 10000:
                self._sync_lines.append((stream, line))
                self._sync_wake.set()
            else:
                self.lost += 1
        elif self._wake is not None:
            self._queue.append((stream, line))
            self._wake.set()

    def exception(self, event: str, error: BaseException, **fields: Any) -> None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self(event, error=repr(error), trace=trace[-6000:], **fields)

    async def _drain(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch: list[tuple[str, bytes]] = []
            while self._queue and len(batch) < 500:
                batch.append(self._queue.popleft())
            if not batch:
                continue
            try:
                await self._db.pipeline([("XADD", stream, "MAXLEN", "~", self.maxlen[stream], "*", "json", line)
                                         for stream, line in batch])
            except Exception:  # noqa: BLE001 - Redis down: stdout has them
                self.lost += len(batch)
            if self._queue:
                self._wake.set()

    def close_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()

    async def close(self) -> None:
        """Write the `flood` lines of the window so far, flush what is queued (bounded), then
        stop the background task."""
        if self._roll_at is not None:
            self._roll_at.cancel()
            self._roll_at = None
            self._floods(self.sampler.roll(time.time() + self.sampler.seconds))
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


async def read(db: Client, start: str, end: str, count: int, newest_first: bool = True,
               stream: str = STREAM) -> list[tuple[str, str]]:
    """Up to `count` entries of the stream `log` (or `audit`) between the ids `start` and `end`
    (XRANGE's syntax: `-`, `+`, a unix ms, `(<id>` for exclusive), as (id, the JSON line); newest
    first (`start` is then the newer end) or oldest first. Entries without a `json` field are
    returned with an empty line."""
    command = ("XREVRANGE", stream, start, end) if newest_first else ("XRANGE", stream, start, end)
    out = []
    for entry_id, fields in await db.call(*command, "COUNT", count) or []:
        values = dict(zip(fields[::2], fields[1::2], strict=False))
        out.append((str(entry_id), str(values.get("json", ""))))
    return out


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class Merged:
    """The entries of several streams between two ids as one sequence in id order (newest or
    oldest first), each stream read `step` entries at a time: (id, stream, the JSON line).
    Two streams can hold the same id; those come out one after the other."""

    def __init__(self, db: Client, streams: tuple[str, ...], start: str, end: str, newest_first: bool,
                 step: int):
        self.db, self.end, self.newest_first, self.step = db, end, newest_first, step
        self.start = dict.fromkeys(streams, start)
        self.pending: dict[str, collections.deque[tuple[str, str]]] = {s: collections.deque() for s in streams}
        self.done = dict.fromkeys(streams, False)

    async def peek(self) -> tuple[str, str, str] | None:
        best: tuple[str, str, str] | None = None
        for stream, pending in self.pending.items():
            if not pending and not self.done[stream]:
                batch = await read(self.db, self.start[stream], self.end, self.step, self.newest_first, stream)
                pending.extend(batch)
                self.done[stream] = len(batch) < self.step
                if batch:
                    self.start[stream] = f"({batch[-1][0]}"
            if pending:
                entry_id, line = pending[0]
                newer = id_key(entry_id) > id_key(best[0]) if best is not None else True
                if best is None or (newer == self.newest_first and entry_id != best[0]):
                    best = (entry_id, stream, line)
        return best

    async def next(self) -> tuple[str, str, str] | None:
        entry = await self.peek()
        if entry is not None:
            self.pending[entry[1]].popleft()
        return entry
