"""Tasks that run on an interval, once per cluster (seed: Master tasks): every lorebase node
runs this scheduler in its tasks process, and a Redis lock decides which one runs a task.

For each task: `task:{<name>}` hash {last (unix ms the last run started), done (unix ms it
ended), took (ms), ok (1/0), outcome, error, node, requested} says when it last ran and how,
so whichever node holds the lock next knows whether the task is due; `requested` (unix ms)
is an admin's "run it now" (`request_run`), due at once and removed when a run starts;
`lock:{<name>}` string, the holder's random token, with an expiry of LOCK_TTL seconds (the
task's name is the hash tag of both keys, so a step over them is one slot). A node sets the
lock only if it is free (SET NX PX), renews it every third of its TTL while the task runs
(only if the token is still its own), and deletes it when done (only if its own).
A run that loses its lock (Redis lost it, or a renewal came too late) is
cancelled: two nodes never run a task at once. A node that dies holding a lock frees it within
LOCK_TTL; another node then runs the task once it is due: within LOCK_TTL plus one interval.

Every Redis call is inside the loop's retry (see queue.Outage): no Redis error stops it.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..db import Client
from ..notify import notify
from .queue import REDIS_ERRORS, Outage

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: the task's state, its lock. ARGV: now (unix ms). 0 while a run holds the lock or a
# request is pending (not yet started), else records the request: 1.
_REQUEST = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HEXISTS', KEYS[1], 'requested') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'requested', ARGV[1])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lock_key(name: str) -> str:
    """The task's lock; with `state_key`, under the task's own hash tag (task names are ours:
    `[a-z_]`), so a step over both is one slot on a Redis Cluster."""
    return f"lock:{{{name}}}"


def state_key(name: str) -> str:
    return f"task:{{{name}}}"


@dataclass
class Task:
    name: str
    every: float  # seconds between the starts of two runs
    run: Callable[[], Awaitable[str]]  # what it did, in a few words (notified)
    quiet: bool = False  # notify only its failures (a task that runs every minute)
    # also run when the tasks process starts, unless a run (of any node) started within these
    # seconds: a deploy or a crash loop of N nodes runs it once, not N times per restart
    at_start: float | None = None


class LockLost(Exception):
    pass


class Scheduler:
    def __init__(self, db: Client, tasks: list[Task], lock_ttl: float, node: str | None = None):
        self.db = db
        self.tasks = tasks
        self.ttl_ms = int(lock_ttl * 1000)
        self.node = node or f"{socket.gethostname()}:{secrets.token_hex(3)}"

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.gather(*(self.loop(task, stopping) for task in self.tasks))

    async def loop(self, task: Task, stopping: asyncio.Event) -> None:
        outage = Outage(f"task {task.name}")
        starting = True
        while not stopping.is_set():
            wait = 1.0
            try:
                wait = await self.step(task, starting)
                starting = False
                outage.ok()
            except REDIS_ERRORS as error:
                await outage.failed(error, stopping)
                continue
            try:
                await asyncio.wait_for(stopping.wait(), max(0.05, min(wait, 1.0)))
            except TimeoutError:
                pass

    async def step(self, task: Task, starting: bool = False) -> float:
        """Runs `task` if it is due and the lock is free; the seconds until it is due again.
        `starting`: the first step of this process (see Task.at_start)."""
        last, requested = await self.db.call("HMGET", state_key(task.name), "last", "requested")
        now = time.time()
        gap = task.every
        if requested:  # an admin asked for a run now
            gap, last = 0, last or 0
        elif starting and task.at_start is not None:
            gap = min(task.every, task.at_start)
            last = last or 0
        elif not last:  # never ran: the first run is one interval after the first start
            await self.db.call("HSETNX", state_key(task.name), "last", int(now * 1000))
            return task.every
        due = int(last) / 1000 + gap
        if due > now:
            return due - now
        token = secrets.token_hex(16)
        if not await self.db.call("SET", lock_key(task.name), token, "NX", "PX", self.ttl_ms):
            return 1.0  # another node runs it
        try:
            await self.db.multi([("HSET", state_key(task.name), "last", int(now * 1000), "node", self.node),
                                 ("HDEL", state_key(task.name), "requested")])
            await self._run_holding(task, token)
        finally:
            try:
                await self.db.script(_RELEASE, [lock_key(task.name)], [token])
            except REDIS_ERRORS:
                pass  # it expires by itself
        return task.every

    async def _run_holding(self, task: Task, token: str) -> None:
        started = time.monotonic()
        work = asyncio.ensure_future(task.run())
        keeper = asyncio.ensure_future(self._keep(task, token, work))
        error = ""
        outcome = ""
        try:
            outcome = await work
        except asyncio.CancelledError:
            if not keeper.done():
                raise
            error = "lost its lock"
        except Exception as failure:  # noqa: BLE001 - a task's failure is notified, never the loop's
            error = f"{type(failure).__name__}: {failure}"[:500]
        finally:
            keeper.cancel()
        took = int((time.monotonic() - started) * 1000)
        await self.db.call("HSET", state_key(task.name), "took", took, "done", int(time.time() * 1000),
                           "ok", 0 if error else 1, "outcome", "" if error else str(outcome)[:500], "error", error)
        if error:
            notify(f"task {task.name} failed", error=error, took_ms=took)
        elif not task.quiet:
            notify(f"task {task.name}", outcome=outcome, took_ms=took)

    async def _keep(self, task: Task, token: str, work: asyncio.Future[Any]) -> None:
        """Renews the lock every third of its TTL; cancels the work when it is no longer ours."""
        renewed = time.monotonic()
        while not work.done():
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                kept = await self.db.script(_RENEW, [lock_key(task.name)], [token, self.ttl_ms])
            except REDIS_ERRORS:
                # one missed renewal is survivable; two third-TTLs without one, and the lock
                # may be gone before the next: stop while it is surely still ours
                if time.monotonic() - renewed < self.ttl_ms / 1000 * 2 / 3:
                    continue
                kept = 0
            if not kept:
                work.cancel()
                return
            renewed = time.monotonic()


async def request_run(db: Client, name: str) -> bool:
    """Asks the scheduler (of whichever node gets the lock first) to run `name` now, within a
    second; False if a run holds its lock or an earlier request has not started yet."""
    return bool(await db.script(_REQUEST, [state_key(name), lock_key(name)], [int(time.time() * 1000)]))


async def results(db: Client, names: list[str]) -> dict[str, dict[str, Any]]:
    """The last result of each task that has ended a run: {at (unix ms it ended), ok,
    outcome or error, took (ms), node}; `running` / `requested` when one is under way."""
    replies = await db.pipeline([cmd for name in names for cmd in (
        ("HGETALL", state_key(name)), ("EXISTS", lock_key(name)))])
    out: dict[str, dict[str, Any]] = {}
    for name, raw, locked in zip(names, replies[::2], replies[1::2], strict=True):
        state = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else dict(raw or {})
        if "ok" not in state:
            if locked or state.get("requested"):
                out[name] = {"at": None, "running": bool(locked), "requested": bool(state.get("requested"))}
            continue
        ok = state["ok"] == "1"
        at = int(state.get("done") or int(state.get("last") or 0) + int(state.get("took") or 0))
        result: dict[str, Any] = {"at": at, "ok": ok, "took": int(state.get("took") or 0),
                                  "node": state.get("node", "")}
        result["outcome" if ok else "error"] = state.get("outcome", "") if ok else state.get("error", "")
        result["running"], result["requested"] = bool(locked), bool(state.get("requested"))
        out[name] = result
    return out
