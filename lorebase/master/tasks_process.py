"""The tasks process from the master's side (lorebase/tasks/process.py: mail, the S3 mirror,
backups, checks, beat): one per node, a new interpreter like the workers, started again when
it exits.

It beats over a pipe of its own (process.BEAT): one silent for TASKS_TIMEOUT seconds (or that
never beat within START_TIMEOUT) is killed and replaced, notified `tasks stuck`: a stuck loop
would otherwise stop mail, the S3 mirror, backups and checks without a word. After a re-exec
the tasks process of the code before is stopped first and the new one starts once it has
exited: never two at once on a node.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import child
from ..notify import notify
from .pool import START_TIMEOUT, kill, term


class TasksProcess:
    def __init__(self, config: Any):
        self.config = config
        self.pid: int | None = None
        self.due: float | None = None  # when to start it again
        self.timeout = float(config.TASKS_TIMEOUT)
        self.beat: int | None = None  # the read end of its beat pipe
        self.started = 0.0
        self.last_beat: float | None = None  # None: it has not beaten yet
        self.stuck = False  # killed for it: its exit is not a crash of its own
        self.old: int | None = None  # after a re-exec: the one of the code before

    def spawn(self) -> None:
        self.close_beat()  # the last one's, if it is not closed yet
        beat, theirs = os.pipe()
        try:
            pid = child.spawn(self.config, "tasks", channel=theirs)
        except BaseException:
            os.close(beat)
            raise
        finally:
            os.close(theirs)
        os.set_blocking(beat, False)
        self.pid, self.beat = pid, beat
        self.started, self.last_beat, self.stuck = time.monotonic(), None, False

    def adopt_old(self, pid: int | None) -> None:
        """After a re-exec: the old one (if any) gets TERM, and this master's starts once it has exited."""
        self.old = pid
        if pid:
            term(pid)
        else:
            self.spawn()

    def handover(self) -> int | None:
        """Its pid for the master after a re-exec."""
        return self.pid or self.old

    def forget(self) -> list[int]:
        """At the stop: the pids to stop with the workers; none is supervised from here on."""
        pids = [pid for pid in (self.pid, self.old) if pid is not None]
        self.pid = self.old = None
        return pids

    def close_beat(self) -> None:
        if self.beat is not None:
            os.close(self.beat)
            self.beat = None

    def hear(self) -> None:
        """Its beats (any bytes: each read is one beat)."""
        assert self.beat is not None
        try:
            data = os.read(self.beat, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # it exited: reaping replaces it (a closed pipe is not watched)
            self.close_beat()
            return
        self.last_beat = time.monotonic()

    def step(self, now: float, stopping: bool) -> None:
        """Each turn of the loop: started again when due; killed if it stopped beating for
        TASKS_TIMEOUT (or never began within START_TIMEOUT), reaping then starts another."""
        if self.due is not None and now >= self.due and not stopping:
            self.due = None
            self.spawn()
        if self.pid is None or self.stuck or stopping:
            return
        since, limit = self.last_beat, self.timeout
        if since is None:
            since, limit = self.started, max(START_TIMEOUT, self.timeout)
        if now - since > limit:
            self.stuck = True
            notify("tasks stuck", tasks_pid=self.pid, beaten=self.last_beat is not None,
                   silent_s=round(now - since, 1))
            kill(self.pid)

    def reaped(self, pid: int, code: int, stopping: bool) -> bool:
        """A child that exited, if it was a tasks process (this master's or the old one)."""
        if pid == self.pid:
            self.pid = None
            if not stopping:
                notify("tasks exit", code=code, stuck=self.stuck)
                self.due = time.monotonic() + 0.5  # a crash loop must not spin
            return True
        if pid == self.old:
            self.old = None
            if not stopping:
                self.spawn()  # only now: one tasks process per node (its scheduled tasks and beat)
            return True
        return False
