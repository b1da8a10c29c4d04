"""The tasks process (seed: Master tasks): a child of the master, beside the workers,
running the jobs that are not requests: the mail outbox (lorebase.mail) and the S3
mirror queue (lorebase.files.s3). The master restarts it if it dies; it picks up where
it stopped, because every job waits in Redis until it is done."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from . import mail, procs
from .notify import notify
from .procs import die_with_parent


class DurableQueue:
    """A Redis list of JSON jobs worked at least once: LMOVE to `<name>:doing` while a job
    runs, LREM when done; a failure waits in the `<name>:retry` sorted set (score: when to
    try again) with exponential backoff, and after `max_tries` goes to `<name>:dead`."""

    def __init__(self, db: aioredis.Redis, queue: str, run: Callable[[dict[str, Any]], str],
                 backoff: Callable[[int], float], max_tries: int | None,
                 after: Callable[[dict[str, Any], str], Awaitable[None]] | None = None):
        self.db = db
        self.after = after
        self.queue = queue
        self.name = queue.split(":")[0]
        self.doing = f"{self.name}:doing" if self.name != "mail" else mail.SENDING
        self.retry = f"{self.name}:retry"
        self.dead = f"{self.name}:dead"
        self.run = run
        self.backoff = backoff
        self.max_tries = max_tries

    async def requeue_interrupted(self) -> None:
        """Jobs a crash left half-done go back to the queue."""
        while await self.db.lmove(self.doing, self.queue, "RIGHT", "RIGHT") is not None:
            pass

    async def work(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.requeue_interrupted()
                break
            except aioredis.RedisError:
                await asyncio.sleep(1)
        while not stopping.is_set():
            try:
                raw = await self.db.blmove(self.queue, self.doing, 1, "RIGHT", "LEFT")
            except aioredis.RedisError:
                await asyncio.sleep(1)
                continue
            if raw is None:
                continue
            job = json.loads(raw)
            try:
                outcome = await asyncio.to_thread(self.run, job)
                if self.after is not None:
                    await self.after(job, outcome)
                notify(f"{self.name} done", job={k: v for k, v in job.items() if k not in ("text",)}, outcome=outcome)
            except Exception as error:  # noqa: BLE001 - any failure: retry later
                job["tries"] = int(job.get("tries", 0)) + 1
                if job["tries"] == 1 or job["tries"] % 10 == 0:
                    notify(f"{self.name} failed", job={k: v for k, v in job.items() if k not in ("text",)},
                           error=str(error)[:500])
                if self.max_tries is not None and job["tries"] >= self.max_tries:
                    await self.db.lpush(self.dead, json.dumps(job))
                else:
                    await self.db.zadd(self.retry, {json.dumps(job): time.time() + self.backoff(job["tries"])})
            await self.db.lrem(self.doing, 1, str(raw))

    async def promote(self, stopping: asyncio.Event) -> None:
        """Moves due retries back onto the queue."""
        while not stopping.is_set():
            try:
                for raw in map(str, await self.db.zrangebyscore(self.retry, "-inf", time.time(), start=0, num=100)):
                    if await self.db.zrem(self.retry, raw):
                        await self.db.lpush(self.queue, raw)
            except aioredis.RedisError:
                pass
            await asyncio.sleep(0.5)


class Tasks:
    def __init__(self, config: Any):
        self.config = config
        self.db = aioredis.Redis.from_url(config.REDIS_URL, decode_responses=True, socket_timeout=5,
                                          socket_connect_timeout=2)
        self.stopping = asyncio.Event()
        sender = mail.Sender(config.MAIL_URL or "console://", config.MAIL_FROM, config)
        self.queues = [DurableQueue(self.db, mail.QUEUE, _send_mail(sender),
                                    lambda n: min(5 * 2 ** (n - 1), 3600), mail.MAX_TRIES)]
        if config.S3_BUCKET:
            from .files import s3

            s3_client = s3.client(config)
            data_dir = Path(config.DATA_DIR)
            self.queues.append(DurableQueue(self.db, "s3:queue",
                                            lambda job: s3.run_job(config, s3_client, job, data_dir),
                                            lambda n: min(2 ** n, 30), None, self.mirrored))

    async def mirrored(self, job: dict[str, Any], outcome: str) -> None:
        if outcome == "put":  # only if the file was not deleted meanwhile
            await self.db.eval("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 's3', 1) end",
                               1, f"file:{job['id']}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        notify.attach_async(_Adapter(self.db))
        jobs = [asyncio.create_task(q.work(self.stopping)) for q in self.queues]
        jobs += [asyncio.create_task(q.promote(self.stopping)) for q in self.queues]
        await self.stopping.wait()
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await notify.close()
        await self.db.aclose()


def _send_mail(sender: mail.Sender) -> Callable[[dict[str, Any]], str]:
    def send(item: dict[str, Any]) -> str:
        sender.send(item)
        return f"sent to {item['to']}"
    return send


class _Adapter:
    """notify's batch writer speaks our pipeline(); give it redis-py's."""

    def __init__(self, db: aioredis.Redis):
        self.db = db

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.db.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())


def serve(config: Any) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        die_with_parent()
        notify._sync = None
        notify.setup(config.ENV, "tasks", config.LOG_STREAM_MAX)
        procs.title("tasks", config.ENV)
        asyncio.run(Tasks(config).run())
        code = 0
    except BaseException as error:  # noqa: BLE001
        notify.exception("tasks exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
