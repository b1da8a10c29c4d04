"""A durable job queue in Redis, worked at least once, that no failure stops.

`<queue>` a list of JSON jobs. Each worker (one per queue in every tasks process, on every
node) has its own doing list, `<doing>:<worker>`, and an entry in `<workers>` (a hash: worker
→ the Redis time, unix s, until which it counts as alive), renewed every HEARTBEAT seconds.
The worker takes a job with BLMOVE into its doing list and runs it; then one step ends it:
done → LREM; failed → into `<retry>` (a sorted set, score: when to try again, with backoff)
or, after `max_tries`, into `<dead>`. Due retries go back to the queue in one step too. So a
job is in exactly one of the queue, a doing list, retry and dead whenever no script is running,
whatever process dies when.

A worker whose entry has lapsed (EXPIRY seconds without a heartbeat: its process was killed,
its node lost, or it froze) is dead: any other worker (they all look every HEARTBEAT seconds)
puts its doing list back on the queue and drops its entry, in one step. A worker that stops
cleanly does so for itself. So a job interrupted by a crash runs again within about EXPIRY +
HEARTBEAT seconds, on whichever node is up (at least once, never zero times), and a node
starting touches no other node's jobs. A worker looks for dead ones only once its own beats
have gone through for HEARTBEAT + PAUSE_MAX seconds: after a Redis outage every entry has
lapsed, and the live workers need that long to beat again. A worker that was only frozen and comes back finds its
job gone: ending it then does nothing (the job ran twice, which at least once allows).
`<doing>` itself, the shared doing list of releases before per-worker lists, is put back at
every start: only jobs taken before the upgrade can be in it.

Every Redis call is inside the loop's retry: a Redis that fails, restarts or answers
LOADING costs a pause with backoff (notified once per outage, and once when it is back),
never the loop. The step that ends a job is retried until Redis takes it, the job held in
memory meanwhile. A job that is not JSON goes to `<dead>` as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
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

# KEYS: workers. ARGV: the worker, EXPIRY. Its entry: alive until Redis's clock + EXPIRY.
_BEAT = """
redis.call('HSET', KEYS[1], ARGV[1], tonumber(redis.call('TIME')[1]) + tonumber(ARGV[2]))
"""

# KEYS: workers, the worker's doing list, queue. ARGV: the worker, '1' to reap it even if alive
# (its own clean stop). Its jobs back on the queue and its entry dropped, if it has lapsed
# (by Redis's clock: the nodes' clocks may disagree); how many jobs went back, -1 if alive.
_REAP = """
local alive = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if ARGV[2] ~= '1' and alive >= tonumber(redis.call('TIME')[1]) then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do moved = moved + 1 end
redis.call('HDEL', KEYS[1], ARGV[1])
return moved
"""

REDIS_ERRORS = (RedisError, Unavailable)
HEARTBEAT = 5.0  # seconds between a worker's heartbeats, and its looks for dead workers
EXPIRY = 30  # seconds without a heartbeat after which a worker is dead (a job's run may take 20 s)
BLOCK = 1  # seconds a worker's BLMOVE waits for a job (its connection's timeout must be longer)
PAUSE_MIN, PAUSE_MAX = 0.5, 5.0


def names(queue: str) -> dict[str, str]:
    """The keys of a queue named `<name>:queue`: queue, doing (the prefix of the workers' doing
    lists), retry, dead, workers. The name is a hash tag (`{s3}:queue` → `{s3}:doing`, ...), so
    a queue's keys share one slot and every move between them (BLMOVE, the scripts above) is
    one step on a Redis Cluster too."""
    name = queue.split(":")[0]
    return {"queue": queue, "doing": f"{name}:doing", "retry": f"{name}:retry", "dead": f"{name}:dead",
            "workers": f"{name}:workers"}


def durable(extra: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """Every durable queue's keys, by name: the mail outbox (its doing lists are
    `{mail}:sending:<worker>`), the S3 mirror, then the applications' (`extra`: their queue
    keys, `{<name>}:queue`; extension.app_queues)."""
    from .. import mail
    from ..files.keys import S3_QUEUE

    found = {"mail": {"queue": mail.QUEUE, "doing": mail.SENDING, "retry": mail.RETRY, "dead": mail.DEAD,
                      "workers": mail.WORKERS},
             "s3": names(S3_QUEUE)}
    for key in extra:
        found.setdefault(key.split(":")[0].strip("{}"), names(key))
    return found


def doing_of(keys: dict[str, str], worker: str) -> str:
    return f"{keys['doing']}:{worker}"


def doing_lists(db: Any, keys: dict[str, str]) -> list[str]:
    """Every doing list of a queue (redis-py): the shared one of older releases, then each
    worker's."""
    return [keys["doing"], *(doing_of(keys, w) for w in sorted(db.hkeys(keys["workers"])))]


def new_worker() -> str:
    """A worker's name: its host and pid (for a person reading the keys) and 6 random hex
    digits (a pid reused after a restart is another worker)."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


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
    def __init__(self, db: Client, queue: str, run: Callable[[dict[str, Any]], str] | None,
                 backoff: Callable[[int], float], max_tries: int | None,
                 after: Callable[[dict[str, Any], str], Awaitable[None]] | None = None,
                 doing: str | None = None, run_async: Callable[[dict[str, Any]], Awaitable[str]] | None = None):
        self.db = db
        self.keys = names(queue)
        if doing:
            self.keys["doing"] = doing
        self.name = queue.split(":")[0].strip("{}")  # `{s3}:queue` → s3, as notify names it
        self.run = run  # a blocking job, run in a thread (mail, S3)
        self.run_async = run_async  # or one on this loop (an application's queue)
        self.after = after
        self.backoff = backoff
        self.max_tries = max_tries
        self.worker = new_worker()
        self.doing = doing_of(self.keys, self.worker)

    async def requeue_interrupted(self) -> int:
        """The jobs of older releases' shared doing list go back to the queue; how many."""
        count = 0
        while await self.db.call("LMOVE", self.keys["doing"], self.keys["queue"], "RIGHT", "RIGHT") is not None:
            count += 1
        return count

    async def beat(self) -> None:
        await self.db.script(_BEAT, [self.keys["workers"]], [self.worker, EXPIRY])

    async def reap(self, worker: str, force: bool = False) -> int:
        """Puts a lapsed worker's jobs back on the queue (force: this worker's own, as it
        stops); how many went back, -1 if the worker is alive."""
        return int(await self.db.script(_REAP, [self.keys["workers"], doing_of(self.keys, worker),
                                                self.keys["queue"]], [worker, "1" if force else ""]))

    async def reap_lapsed(self) -> int:
        """Puts every lapsed worker's jobs back on the queue; how many."""
        moved = 0
        for worker in await self.db.call("HKEYS", self.keys["workers"]):
            if worker != self.worker:
                count = await self.reap(worker)
                if count > 0:
                    notify(f"{self.name} requeued", worker=worker, jobs=count)
                moved += max(count, 0)
        return moved

    async def watch(self, stopping: asyncio.Event) -> None:
        """Beats for this worker and looks for dead ones, every HEARTBEAT seconds, until
        `stopping`; then puts back this worker's own unfinished jobs and leaves."""
        outage = Outage(f"{self.name} heartbeat")
        steady = 0.0  # since when this worker's beats have gone through
        while not stopping.is_set():
            try:
                await self.beat()
                steady = steady or time.monotonic()
                # after an outage (of Redis, or of this worker's link to it) every live worker
                # beats within a pause or two: until then, a lapsed entry may be a live one
                if time.monotonic() - steady >= HEARTBEAT + PAUSE_MAX:
                    await self.reap_lapsed()
                outage.ok()
            except REDIS_ERRORS as error:
                steady = 0.0
                await outage.failed(error, stopping)
                continue
            try:
                await asyncio.wait_for(stopping.wait(), HEARTBEAT)
            except TimeoutError:
                pass

    async def leave(self) -> None:
        """This worker's unfinished jobs back on the queue, its entry gone (its clean stop)."""
        await self.reap(self.worker, force=True)

    async def work(self, stopping: asyncio.Event) -> None:
        """Takes and runs jobs until `stopping`; survives any Redis error."""
        outage = Outage(f"{self.name} queue")
        started = False
        ending: tuple[str, str | None, float | None] | None = None  # a job whose end Redis has not taken yet
        while not stopping.is_set():
            try:
                if not started:
                    await self.beat()  # before its first job: a doing list always has its entry
                    await self.requeue_interrupted()
                    started = True
                if ending is not None:
                    await self._end(*ending)
                    ending = None
                raw = await self.db.call("BLMOVE", self.keys["queue"], self.doing, "RIGHT", "LEFT", BLOCK)
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
        shown = {k: v for k, v in job.items() if k not in ("text", "sealed")}
        try:
            if self.run_async is not None:
                outcome = await self.run_async(job)
            else:
                assert self.run is not None
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
            await self.db.call("LREM", self.doing, 1, raw)
            return
        await self.db.script(_FAIL, [self.doing, self.keys["retry"], self.keys["dead"]],
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
