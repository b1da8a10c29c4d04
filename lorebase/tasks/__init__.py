"""The tasks process (seed: Master tasks): a child of the master, beside the workers,
running the jobs that are not requests: the mail outbox (lorebase.mail) and the S3
mirror queue (lorebase.files.s3). The master restarts it if it dies; it picks up where
it stopped, because every job waits in Redis until it is done."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from .. import mail, procs
from ..notify import notify
from . import backup
from .queue import DurableQueue
from .schedule import Scheduler, Task


class Tasks:
    def __init__(self, config: Any):
        self.config = config
        self.db = aioredis.Redis.from_url(config.REDIS_URL, decode_responses=True, socket_timeout=5,
                                          socket_connect_timeout=2)
        self.stopping = asyncio.Event()
        sender = mail.Sender(config.MAIL_URL or "console://", config.MAIL_FROM, config)
        self.queues = [DurableQueue(self.db, mail.QUEUE, _send_mail(sender),
                                    lambda n: min(5 * 2 ** (n - 1), 3600), mail.MAX_TRIES, doing=mail.SENDING)]
        if config.S3_BUCKET:
            from ..files import s3
            from ..files.store import S3_QUEUE

            s3_client = s3.client(config)
            data_dir = Path(config.DATA_DIR)
            self.queues.append(DurableQueue(self.db, S3_QUEUE,
                                            lambda job: s3.run_job(config, s3_client, job, data_dir),
                                            lambda n: min(2 ** n, 30), None, self.mirrored))

        tasks = []
        if float(config.BACKUP_EVERY) > 0:
            tasks.append(Task("backup", float(config.BACKUP_EVERY), self.alerting("backup", self.backup)))
        self.scheduler = Scheduler(self.db, tasks, float(config.LOCK_TTL))

    async def backup(self) -> str:
        manifest = await asyncio.to_thread(backup.take, self.config, self.config.REDIS_URL)
        return f"backup {manifest['name']}: {manifest['keys']} keys, {manifest['size']} bytes"

    def alerting(self, name: str, run: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
        """`run`, and a mail to every address in ADMINS when it fails."""
        async def wrapped() -> str:
            try:
                return await run()
            except Exception as error:
                for admin in self.config.ADMINS:
                    await mail.enqueue(self.db, admin, f"lorebase: the {name} task failed",
                                       f"The {name} task of lorebase ({self.config.ENV}) failed:\n\n{error}\n")
                raise
        return wrapped

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
        jobs.append(asyncio.create_task(self.scheduler.run(self.stopping)))
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
        procs.become_child(config, "tasks")
        asyncio.run(Tasks(config).run())
        code = 0
    except BaseException as error:  # noqa: BLE001
        notify.exception("tasks exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
