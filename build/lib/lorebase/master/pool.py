"""The workers: one per index, each a new interpreter (lorebase/child.py), its channel to the
master a unix socketpair.

Over its channel a worker pings once every PING seconds from its event loop, with its count
of open connections, and acknowledges the connections it took. One silent for
WORKER_TIMEOUT seconds is stuck (an endless loop in a handler, say), and one that never
begins serving within START_TIMEOUT never will: either is killed and replaced, notified
`worker hung`. One that dies is started again, a crash loop slowed down. A worker leaving
(TTOU, a re-exec) gets no new connection and TERM, and is killed if it outstays
SHUTDOWN_GRACE. After a re-exec the workers of the code before are `old`: each gets TERM
once the new ones all serve.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .. import child
from ..notify import notify
from ..worker import MESSAGE

START_TIMEOUT = 60.0  # seconds a new worker (or tasks process) may take to start serving


@dataclass
class Worker:
    pid: int
    index: int
    chan: socket.socket  # the master's end of the worker's channel
    started: float
    last_ping: float = 0.0
    ready: bool = False  # it has pinged: it serves
    leaving: bool = False  # being replaced or removed: no new connection
    stop_by: float | None = None  # TERM sent: killed if still alive then
    hung: bool = False
    open: int = 0  # connections it holds (its last ping, plus those handed since)
    handed: int = 0  # when it last got one (a sequence number): ties go to the longest waiting
    unacked: int = 0  # connections handed that it has not taken yet
    unacked_since: float = 0.0
    inbox: bytes = field(default=b"", repr=False)


class Pool:
    def __init__(self, config: Any):
        self.config = config
        self.workers: dict[int, Worker] = {}
        self.target = config.WORKERS
        self.timeout = float(config.WORKER_TIMEOUT)
        self.crashes: list[float] = []  # recent unexpected exits, for backoff
        self.respawns: list[tuple[float, int]] = []  # (when, index): workers to start
        # after a re-exec (SIGHUP): the workers of the code before, pid → TERM deadline
        self.old: dict[int, float | None] = {}
        self.restarting = False  # a re-exec's new workers are replacing the old ones

    def spawn(self, index: int) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = child.spawn(self.config, "worker", index, theirs.fileno())
        finally:
            theirs.close()
        ours.setblocking(False)
        self.workers[pid] = Worker(pid, index, ours, time.monotonic())
        return pid

    def adopt_old(self, pids: list[int]) -> None:
        """The workers a re-exec handed over: they serve until the new ones all do."""
        self.old = {int(pid): None for pid in pids}
        self.restarting = True

    # -- what the loop asks -------------------------------------------------------------

    def channels(self) -> list[socket.socket]:
        return [w.chan for w in self.workers.values() if w.chan.fileno() >= 0]

    def next_due(self) -> float | None:
        """When the next respawn is due, if one is."""
        return min((t for t, _ in self.respawns), default=None)

    def active(self) -> int:
        """Workers staying (not leaving, not stopped), serving or not yet."""
        return sum(1 for w in self.workers.values() if not w.leaving and w.stop_by is None)

    def ready(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready)

    def pids(self) -> list[int]:
        """Every worker still running: this master's and, after a re-exec, the old ones."""
        return [*self.workers, *self.old]

    # -- the channels -------------------------------------------------------------------

    def hear(self, chan: socket.socket) -> None:
        """A worker's pings and acknowledgements."""
        w = next((w for w in self.workers.values() if w.chan is chan), None)
        if w is None:
            return
        while True:
            try:
                data = chan.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone; reaping replaces it (a closed channel is not watched)
                chan.close()
                return
            if len(data) != MESSAGE.size:
                continue
            kind, count = MESSAGE.unpack(data)
            now = time.monotonic()
            if kind == b"P":
                w.last_ping = now
                w.open = count + w.unacked
                if not w.ready:
                    w.ready = True
            elif kind == b"A":
                w.unacked = max(0, w.unacked - count)
                w.unacked_since = now

    # -- workers coming and going ---------------------------------------------------------

    def grow(self) -> None:
        """One worker more (TTIN)."""
        self.target += 1
        self.spawn(self._free_index())

    def shrink(self) -> None:
        """One worker fewer (TTOU), never none: the one of the highest index leaves."""
        if self.target <= 1:
            return
        self.target -= 1
        active = [w for w in self.workers.values() if not w.leaving and w.stop_by is None]
        if len(active) > self.target:
            self.stop_worker(max(active, key=lambda w: w.index).pid)

    def _free_index(self) -> int:
        used = {w.index for w in self.workers.values() if not w.leaving}
        return next(i for i in range(len(used) + 1) if i not in used)

    def stop_worker(self, pid: int) -> None:
        """No new connection, TERM (it finishes what it holds), killed if it outstays SHUTDOWN_GRACE."""
        w = self.workers.get(pid)
        if w is None or w.stop_by is not None:
            return
        w.leaving = True
        w.stop_by = time.monotonic() + float(self.config.SHUTDOWN_GRACE) + 2
        term(pid)

    def step(self, now: float, stopping: bool) -> None:
        """Each turn of the loop: due respawns, the old workers of a re-exec, stuck or overdue workers."""
        for due in [r for r in self.respawns if r[0] <= now]:
            self.respawns.remove(due)
            if not stopping and self.active() < self.target:
                self.spawn(due[1])
        self._step_old(now)
        for w in list(self.workers.values()):
            if w.stop_by is not None and now > w.stop_by:
                kill(w.pid)  # did not finish within SHUTDOWN_GRACE
            elif w.stop_by is None and not w.hung and self._silent(w, now):
                w.hung = True
                notify("worker hung", worker=w.index, worker_pid=w.pid, ready=w.ready,
                       silent_s=round(now - (w.last_ping if w.ready else w.started), 1))
                kill(w.pid)

    def _silent(self, w: Worker, now: float) -> bool:
        """A serving worker that stopped pinging, or a new one that never started serving."""
        if w.ready:
            return now - w.last_ping > self.timeout
        return now - w.started > START_TIMEOUT

    def _step_old(self, now: float) -> None:
        """After a re-exec: once the new workers all serve, the old ones get TERM (they finish
        what they hold), and are killed if they outstay SHUTDOWN_GRACE."""
        if not self.old:
            if self.restarting:
                self.restarting = False
                notify("workers restarted", workers=self.active())
            return
        serving = sum(1 for w in self.workers.values() if w.ready and not w.leaving and w.stop_by is None)
        grace = float(self.config.SHUTDOWN_GRACE) + 2
        for pid, deadline in list(self.old.items()):
            if deadline is None and serving >= self.target:
                term(pid)
                self.old[pid] = now + grace
            elif deadline is not None and now > deadline:
                kill(pid)

    def reaped(self, pid: int, code: int, stopping: bool) -> bool:
        """A child that exited, if it was a worker (this master's or an old one): replaced
        unless it was stopped on purpose or already has its replacement."""
        w = self.workers.pop(pid, None)
        if w is None:
            if pid not in self.old:
                return False
            del self.old[pid]  # a worker of the code before a re-exec, done
            return True
        w.chan.close()
        if stopping or w.stop_by is not None:
            return True  # stopped on purpose
        notify("worker exit", worker=w.index, worker_pid=pid, code=code, hung=w.hung)
        if w.leaving:
            return True  # its replacement is already there
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < 10] + [now]
        # a crash loop is slowed down (0.5 s more per crash past 5 in 10 s, at most 5 s)
        delay = 0.0 if len(self.crashes) <= 5 else min((len(self.crashes) - 5) * 0.5, 5.0)
        self.respawns.append((now + delay, w.index))
        return True

    def close(self) -> None:
        """At the stop, once every worker has exited: the channels closed."""
        for w in self.workers.values():
            w.chan.close()
        self.workers.clear()


def term(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
