"""A durable job queue in Redis, worked at least once, that no failure stops.

`<queue>` a list of JSON jobs. The worker takes one with BLMOVE into `<doing>` and runs it;
then one step ends it: done → LREM from `<doing>`; failed → from `<doing>` into `<retry>` (a
sorted set, score: when to try again, with backoff) or, after `max_tries`, into `<dead>`.
Due retries go back to the queue in one step too. So a job is in exactly one of the four
keys whenever no script is running, whatever process dies when; jobs left in `<doing>` by a
crash go back to the queue at start (one may run twice: at least once, never zero times).

Every Redis call is inside the loop's retry: a Redis that fails, restarts or answers
LOADING costs a pause with backoff (notified once per outage, and once when it is back),
never the loop. The step that ends a job is retried until Redis takes it, the job held in
memory meanwhile. A job that is not JSON goes to `<dead>` as it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..db import Client, RedisError, Unavailable
from ..notify import notify

# KEYS: doing, retry, dead. ARGV: the job as taken, the job as it goes on, the retry time
# (or '' for dead). 0 if the job was no longer in `doing`.
_FAIL = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] == '' then redis.call('LPUSH', KEYS[3], ARGV[2]) else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2]) end
return 1
"""

# KEYS: retry, queue. ARGV: now, how many at most. How many went back to the queue.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, raw in ipairs(due) do
  redis.call('ZREM', KEYS[1], raw)
  redis.call('LPUSH', KEYS[2], raw)
end
return #due
"""

REDIS_ERRORS = (RedisError, Unavailable)
BLOCK = 1  # seconds a worker's BLMOVE waits for a job (its connection's timeout must be longer)
PAUSE_MIN, PAUSE_MAX = 0.5, 5.0


def names(queue: str) -> dict[str, str]:
    """The keys of a queue named `<name>:queue`: queue, doing, retry, dead. The name is a hash
    tag (`{s3}:queue` → `{s3}:doing`, ...), so a queue's four keys share one slot and every move
    between them (BLMOVE, the scripts above) is one step on a Redis Cluster too."""
    name = queue.split(":")[0]
    return {"queue": queue, "doing": f"{name}:doing", "retry": f"{name}:retry", "dead": f"{name}:dead"}


def durable() -> dict[str, dict[str, str]]:
    """Every durable queue's keys, by name: the mail outbox (its doing list is `{mail}:sending`)
    and the S3 mirror."""
    from .. import mail
    from ..files.keys import S3_QUEUE

    return {"mail": {"queue": mail.QUEUE, "doing": mail.SENDING, "retry": mail.RETRY, "dead": mail.DEAD},
            "s3": names(S3_QUEUE)}


class Outage:
    """Pause after a Redis error, longer each time (PAUSE_MIN doubling to PAUSE_MAX); notified
    once when it starts and once when Redis answers again."""

    def __init__(self, what: str):
        self.what = what
        self.pause = 0.0
        self.since = 0.0

    async def failed(self, error: BaseException, stopping: asyncio.Event) -> None:
        if not self.pause:
            self.since = time.monotonic()
            notify(f"{self.what} redis error", error=str(error)[:300])
        self.pause = min(PAUSE_MAX, max(PAUSE_MIN, self.pause * 2))
        try:
            await asyncio.wait_for(stopping.wait(), self.pause)
        except TimeoutError:
            pass

    def ok(self) -> None:
        if self.pause:
            notify(f"{self.what} redis back", after=round(time.monotonic() - self.since, 1))
            self.pause = 0.0


class DurableQueue:
    def __init__(self, db: Client, queue: str, run: Callable[[dict[str, Any]], str],
                 backoff: Callable[[int], float], max_tries: int | None,
                 after: Callable[[dict[str, Any], str], Awaitable[None]] | None = None,
                 doing: str | None = None):
        self.db = db
        self.keys = names(queue)
        if doing:
            self.keys["doing"] = doing
        self.name = queue.split(":")[0].strip("{}")  # `{s3}:queue` → s3, as notify names it
        self.run = run
        self.after = after
        self.backoff = backoff
        self.max_tries = max_tries

    async def requeue_interrupted(self) -> int:
        """Jobs a crash left half-done go back to the queue; how many."""
        count = 0
        while await self.db.call("LMOVE", self.keys["doing"], self.keys["queue"], "RIGHT", "RIGHT") is not None:
            count += 1
        return count

    async def work(self, stopping: asyncio.Event) -> None:
        """Takes and runs jobs until `stopping`; survives any Redis error."""
        outage = Outage(f"{self.name} queue")
        started = False
        ending: tuple[str, str | None, float | None] | None = None  # a job whose end Redis has not taken yet
        while not stopping.is_set():
            try:
                if not started:
                    await self.requeue_interrupted()
                    started = True
                if ending is not None:
                    await self._end(*ending)
                    ending = None
                raw = await self.db.call("BLMOVE", self.keys["queue"], self.keys["doing"], "RIGHT", "LEFT", BLOCK)
                outage.ok()
                if raw is None:
                    continue
                ending = await self._run(str(raw))
                await self._end(*ending)
                ending = None
            except REDIS_ERRORS as error:
                await outage.failed(error, stopping)

    async def _run(self, raw: str) -> tuple[str, str | None, float | None]:
        """Runs one job: how to end it (the job as taken; None when done, else the job as it
        goes on; its retry time, None for dead)."""
        try:
            job = json.loads(raw)
            if not isinstance(job, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            notify(f"{self.name} dead", error="not a job", job=raw[:200])
            return raw, raw, None
        shown = {k: v for k, v in job.items() if k != "text"}
        try:
            outcome = await asyncio.to_thread(self.run, job)
            if self.after is not None:
                await self.after(job, outcome)
        except Exception as error:  # noqa: BLE001 - any failure: retry later
            job["tries"] = int(job.get("tries", 0)) + 1
            if job["tries"] == 1 or job["tries"] % 10 == 0:
                notify(f"{self.name} failed", job=shown, tries=job["tries"], error=str(error)[:500])
            if self.max_tries is not None and job["tries"] >= self.max_tries:
                notify(f"{self.name} dead", job=shown, tries=job["tries"])
                return raw, json.dumps(job), None
            return raw, json.dumps(job), time.time() + self.backoff(job["tries"])
        notify(f"{self.name} done", job=shown, outcome=outcome)
        return raw, None, None

    async def _end(self, raw: str, then: str | None, retry_at: float | None) -> None:
        if then is None:
            await self.db.call("LREM", self.keys["doing"], 1, raw)
            return
        await self.db.script(_FAIL, [self.keys["doing"], self.keys["retry"], self.keys["dead"]],
                             [raw, then, "" if retry_at is None else retry_at])

    async def promote(self, stopping: asyncio.Event) -> None:
        """Moves due retries back onto the queue, in one step each round."""
        outage = Outage(f"{self.name} retries")
        while not stopping.is_set():
            try:
                while await self.db.script(_PROMOTE, [self.keys["retry"], self.keys["queue"]],
                                           [time.time(), 100]) == 100:
                    pass
                outage.ok()
            except REDIS_ERRORS as error:
                await outage.failed(error, stopping)
                continue
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
            except TimeoutError:
                pass
