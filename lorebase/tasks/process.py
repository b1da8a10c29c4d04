"""The tasks process (seed: Master tasks): a child of the master, beside the workers (child.py
starts it with `serve`; the file server runs its S3 queue with `Tasks(role="files")`),
running the jobs that are not requests: the mail outbox (lorebase.mail), the S3
mirror queue (lorebase.files.s3), the scheduled tasks (schedule.py) and the beat (beat.py).
The master restarts it if it dies; it picks up where it stopped, because every job waits in
Redis until it is done. Its event loop beats to the master over a pipe every BEAT seconds: a
loop that stops (stuck, or the process stopped) is killed and replaced (master/tasks_process.py)."""

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from .. import db, mail, procs, stats
from ..extension import TaskContext, load_apps
from ..notify import notify
from . import backup
from .beat import Beat
from .queue import BLOCK, REDIS_ERRORS, DurableQueue
from .schedule import Scheduler, Task

# the start-up check is skipped if one (of any node) started within this many seconds
CHECK_AT_START = 3600.0
BEAT = 0.5  # seconds between two beats of the tasks process to its master


class Tasks:
    def __init__(self, config: Any, role: str = "api"):
        self.config = config
        self.db = db.connect(config, timeout=5)
        # each queue blocks on its own connection (BLMOVE): one connection each, waiting longer
        self.clients = [self.db]
        sender = mail.Sender(config.MAIL_URL or "console://", config.MAIL_FROM, config)
        self.queues = [] if role == "files" else [
            DurableQueue(self._blocking(), mail.QUEUE, _send_mail(sender), lambda n: min(5 * 2 ** (n - 1), 3600),
                         mail.MAX_TRIES, doing=mail.SENDING)]
        if config.S3_BUCKET and (role == "files" or not config.FILES_URL):  # where the bytes are
            from ..files import s3
            from ..files.keys import S3_QUEUE
            from ..files.store import Store

            self.store = Store(config)

            s3_client = s3.client(config)
            data_dir = Path(config.DATA_DIR)
            self.queues.append(DurableQueue(self._blocking(), S3_QUEUE,
                                            lambda job: s3.run_job(config, s3_client, job, data_dir),
                                            lambda n: min(2 ** n, 30), None, self.mirrored))

        # the applications' queues and scheduled tasks (Extension.queues, .schedule), on an API node
        apps = load_apps(config) if role == "api" else []
        context = TaskContext(config, self.db)
        for app_queue in (q for ext in apps for q in ext.queues):
            self.queues.append(DurableQueue(self._blocking(), app_queue.key, None, app_queue.backoff,
                                            app_queue.max_tries, run_async=partial(app_queue.run, context)))

        tasks = [Task(s.name, float(s.every), partial(s.run, context)) for ext in apps for s in ext.schedule]
        if config.STATS:
            tasks.append(Task("stats", 60, self.stocks, quiet=True))
        # always there, so that an admin's "back up now" (schedule.request_run) has a taker;
        # with BACKUP_EVERY 0 it runs only when asked
        every = float(config.BACKUP_EVERY)
        tasks.append(Task("backup", every if every > 0 else math.inf, self.alerting("backup", self.backup)))
        if float(config.CHECK_EVERY) > 0:
            tasks.append(Task("check", float(config.CHECK_EVERY), self.alerting("check", self.check),
                              at_start=CHECK_AT_START))
        self.scheduler = Scheduler(self.db, tasks, float(config.LOCK_TTL)) if role == "api" else None
        self.beat = Beat(self.db, config) if float(config.BEAT_EVERY) > 0 else None  # on every node
        self.stopping = asyncio.Event()

    def _blocking(self) -> db.Client:
        client = db.connect(self.config, timeout=BLOCK + 5)
        self.clients.append(client)
        return client

    async def stocks(self) -> str:
        return await stats.record_stocks(self.db, stats.queues(self.config), int(self.config.STATS_KEEP))

    async def backup(self) -> str:
        manifest = await asyncio.to_thread(backup.take, self.config, backup.redis_url(self.config))
        return f"backup {manifest['name']}: {manifest['keys']} keys, {manifest['size']} bytes"

    async def check(self) -> str:
        """The consistency check, reporting only (never repairing unattended): each problem
        notified as `check problem` (at most NOTIFY_MAX of them), then one `check`."""
        from .. import check as checkmod

        def run() -> checkmod.Report:
            client = db.connect_sync(self.config, timeout=30)
            try:
                return checkmod.check(self.config, client, out=io.StringIO(), progress=None)
            finally:
                client.close()

        report = await asyncio.to_thread(run)
        problems = report.problems
        for finding in problems[:checkmod.NOTIFY_MAX]:
            notify("check problem", key=finding.key, problem=finding.what)
        notify("check", problems=len(problems), unnotified=max(0, len(problems) - checkmod.NOTIFY_MAX),
               tidy=len(report.findings) - len(problems), summary=report.summary())
        return report.summary()

    def alerting(self, name: str, run: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
        """`run`, and a mail to every address in ADMINS when it fails."""
        async def wrapped() -> str:
            try:
                return await run()
            except Exception as error:
                for admin in self.config.ADMINS:
                    await mail.enqueue(self.db, self.config.COOKIE_SECRET, admin, f"lorebase: the {name} task failed",
                                       f"The {name} task of lorebase ({self.config.ENV}) failed:\n\n{error}\n")
                raise
        return wrapped

    async def mirrored(self, job: dict[str, Any], outcome: str) -> None:
        if outcome == "put":  # only if the file was not deleted meanwhile
            await self.store.mirrored(self.db, str(job["user"]), str(job["id"]))

    async def run(self, signals: bool = True) -> None:
        """Until `stopping` is set (by SIGTERM/SIGINT unless signals=False: the caller's)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if signals else ():
            loop.add_signal_handler(sig, self.stopping.set)
        notify.attach_async(self.db)
        working = [asyncio.create_task(q.work(self.stopping)) for q in self.queues]
        jobs = [asyncio.create_task(q.promote(self.stopping)) for q in self.queues]
        jobs += [asyncio.create_task(q.watch(self.stopping)) for q in self.queues]
        if self.scheduler is not None:
            jobs.append(asyncio.create_task(self.scheduler.run(self.stopping)))
        if self.beat is not None:
            jobs.append(asyncio.create_task(self.beat.run(self.stopping)))
        await self.stopping.wait()
        for job in jobs:
            job.cancel()
        # a job being run ends as it would (done, or its retry written) if it can within half
        # the grace; one that cannot goes back on the queue with the rest of the worker's
        await asyncio.wait(working, timeout=float(self.config.SHUTDOWN_GRACE) / 2)
        for job in working:
            job.cancel()
        await asyncio.gather(*jobs, *working, return_exceptions=True)
        for queue in self.queues:
            try:
                await asyncio.wait_for(queue.leave(), 2)
            except (*REDIS_ERRORS, TimeoutError) as error:  # its entry lapses; another node reaps it
                notify(f"{queue.name} leave failed", error=str(error)[:300])
        await notify.close()
        for client in self.clients:
            await client.close()


def _send_mail(sender: mail.Sender) -> Callable[[dict[str, Any]], str]:
    def send(item: dict[str, Any]) -> str:
        sender.send(item)
        return f"sent to {item['to']}"
    return send


def _beat(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """One byte to the master, then again in BEAT seconds, from this event loop."""
    try:
        os.write(fd, b".")
    except BlockingIOError:
        pass  # the master has not read the last ones yet: they say the same
    except OSError:
        return  # the master is gone (or has re-executed): nobody listens any more
    loop.call_later(BEAT, _beat, loop, fd)


async def _run(config: Any, beat: int | None) -> None:
    tasks = Tasks(config)
    if beat is not None:
        _beat(asyncio.get_running_loop(), beat)
    await tasks.run()


def serve(config: Any, beat: int | None = None) -> None:
    """Runs in the tasks process (a new interpreter, child.py); never returns. `beat`: the
    pipe to the master (non-blocking)."""
    code = 1
    try:
        procs.become_child(config, "tasks")
        asyncio.run(_run(config, beat))
        code = 0
    except BaseException as error:  # noqa: BLE001
        notify.exception("tasks exception", error)
    finally:
        sys.stdout.flush()
        os._exit(code)
