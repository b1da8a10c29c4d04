"""The tasks process (seed: Master tasks): a child of the master, beside the workers,
running the jobs that are not requests. Today: sending the mail outbox (lorebase.mail).
It is restarted by the master if it dies, and picks up where it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from . import mail
from .notify import notify
from .procs import die_with_parent


class Tasks:
    def __init__(self, config: Any):
        self.config = config
        self.db = aioredis.Redis.from_url(config.REDIS_URL, decode_responses=True, socket_timeout=5,
                                          socket_connect_timeout=2)
        self.sender = mail.Sender(config.MAIL_URL or "console://", config.MAIL_FROM, config)
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        notify.attach_async(_Adapter(self.db))
        await self._requeue_interrupted()
        jobs = [asyncio.create_task(self.mail_loop()), asyncio.create_task(self.retry_loop())]
        await self.stopping.wait()
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await notify.close()
        await self.db.aclose()

    async def _requeue_interrupted(self) -> None:
        while True:
            try:
                moved = await self.db.lmove(mail.SENDING, mail.QUEUE, "RIGHT", "RIGHT")
            except aioredis.RedisError:
                await asyncio.sleep(1)
                continue
            if moved is None:
                return

    async def mail_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                raw = await self.db.blmove(mail.QUEUE, mail.SENDING, 1, "RIGHT", "LEFT")
            except aioredis.RedisError:
                await asyncio.sleep(1)
                continue
            if raw is None:
                continue
            item = json.loads(raw)
            try:
                await asyncio.to_thread(self.sender.send, item)
                notify("mail sent", to=item["to"], subject=item["subject"])
            except Exception as error:  # noqa: BLE001 - any failure: retry later
                item["tries"] = int(item.get("tries", 0)) + 1
                notify("mail failed", to=item["to"], subject=item["subject"], tries=item["tries"], error=str(error))
                if item["tries"] >= mail.MAX_TRIES:
                    await self.db.lpush(mail.DEAD, json.dumps(item))
                else:
                    delay = min(5 * 2 ** (item["tries"] - 1), 3600)
                    await self.db.zadd(mail.RETRY, {json.dumps(item): time.time() + delay})
            await self.db.lrem(mail.SENDING, 1, str(raw))

    async def retry_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                due = await self.db.zrangebyscore(mail.RETRY, "-inf", time.time(), start=0, num=100)
                for raw in map(str, due):
                    if await self.db.zrem(mail.RETRY, raw):
                        await self.db.lpush(mail.QUEUE, raw)
            except aioredis.RedisError:
                pass
            await asyncio.sleep(1)


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
        asyncio.run(Tasks(config).run())
        code = 0
    except BaseException as error:  # noqa: BLE001
        notify.exception("tasks exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
