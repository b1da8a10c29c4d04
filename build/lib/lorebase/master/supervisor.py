"""The Master: the parts started in order, one loop that serves them all, and the parts
stopped in order.

Signals, one `handle_<name>` method each (as uvicorn's supervisor reads): TERM/INT stop, HUP
loads the code on disk (reexec.py), TTIN/TTOU add or remove one worker. A handler only
changes state; the main loop does the work a step at a time (reaping, accepting, pings,
beats, retiring the old workers), so nothing waits on anything else: a worker dying meanwhile
is replaced, and a TERM stops everything cleanly. The master runs no event loop and serves
no request.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time
from typing import Any

from .. import __version__, db, procs
from ..notify import notify
from ..worker import PING
from . import reexec
from .broker import Broker
from .pool import Pool
from .redis_keeper import RedisKeeper
from .tasks_process import TasksProcess

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)


class Master:
    def __init__(self, config: Any):
        self.config = config
        self.pool = Pool(config)
        self.broker = Broker(self.pool, int(config.WORKER_CONNECTIONS))
        self.keeper = RedisKeeper(config)
        self.tasks = TasksProcess(config)
        self.stopping = False
        self.announced = False  # master.json written: every worker serving is of this master's code

    # -- start --------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        notify.setup(config.ENV, "master", config)
        procs.title("master", config.ENV)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in SIGNALS:
            signal.signal(sig, lambda *_: None)  # a handler, so the wakeup fd is written
        inherited = reexec.inherited()
        try:
            self.keeper.start(inherited.get("redis") if inherited else None)
            notify.attach_sync(db.connect_sync(config, 0.5, retry=False))
            self.broker.open(config.HOST, config.PORT, int(inherited["sock"]) if inherited else None)
        except Exception as error:  # noqa: BLE001
            notify("start failed", error=str(error))
            print(f"lorebase: {error}", file=sys.stderr)  # for the person at the terminal, too
            self.keeper.stop()
            return 1
        for index in range(self.pool.target):
            self.pool.spawn(index)
        if inherited:
            self.pool.adopt_old(inherited["workers"])
            self.tasks.adopt_old(inherited.get("tasks"))
        else:
            self.tasks.spawn()
        self.keeper.watch()
        notify("reexec done" if inherited else "start", version=__version__, host=config.HOST, port=config.PORT,
               workers=self.pool.target, redis="embedded" if self.keeper.redis else "external",
               base_url=config.BASE_URL)
        try:
            self.loop(wake_r)
        finally:
            self.shutdown()
        return 0

    # -- the main loop ------------------------------------------------------------------

    def loop(self, wake_r: int) -> None:
        while not self.stopping:
            watched: list[Any] = [wake_r, *self.pool.channels()]
            if self.tasks.beat is not None:
                watched.append(self.tasks.beat)
            if self.broker.sock is not None and self.broker.takers():
                watched.append(self.broker.sock)
            try:
                readable, _, _ = select.select(watched, [], [], self._pause())
            except InterruptedError:
                readable = []
            for item in readable:
                if item is wake_r:
                    self.signals(wake_r)
                elif item == self.tasks.beat:
                    self.tasks.hear()
                elif item is self.broker.sock:
                    self.broker.accept()
                else:
                    self.pool.hear(item)
            self.reap()
            self.step()

    def _pause(self) -> float:
        due = [t for t in (self.pool.next_due(), self.tasks.due) if t is not None]
        return min(PING, max(0.0, min(due) - time.monotonic())) if due else PING

    def step(self) -> None:
        """What the loop does each turn besides reading: the workers' (due respawns, the old
        ones of a re-exec, stuck or overdue ones), Redis's, the tasks process's, master.json."""
        now = time.monotonic()
        self.pool.step(now, self.stopping)
        self.keeper.step()
        self.tasks.step(now, self.stopping)
        if not self.announced and not self.pool.old and not self.stopping and \
                self.pool.ready() >= self.pool.target:
            self.announced = True
            reexec.write_state(self.config, self.pool.active())

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if not self.pool.reaped(pid, code, self.stopping) and not self.tasks.reaped(pid, code, self.stopping):
                self.keeper.reaped(pid, code)  # the keeper's thread notices it, the loop starts it again

    # -- signals ------------------------------------------------------------------------

    def signals(self, wake_r: int) -> None:
        try:
            data = os.read(wake_r, 64)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name[3:].lower()
            handler = getattr(self, f"handle_{name}", None)
            if handler is not None:
                handler()

    def handle_term(self, name: str = "SIGTERM") -> None:
        notify("stopping", signal=name)
        self.stopping = True

    def handle_int(self) -> None:
        self.handle_term("SIGINT")

    def handle_hup(self) -> None:
        """Load the code on disk without dropping a request (reexec.py)."""
        if self.stopping:
            return
        notify("workers restarting", workers=len(self.pool.pids()))
        reexec.reexec(self.config, self.broker, self.pool, self.tasks, self.keeper)

    def handle_ttin(self) -> None:
        self.pool.grow()

    def handle_ttou(self) -> None:
        self.pool.shrink()

    def handle_chld(self) -> None:
        pass  # the loop reaps every turn

    # -- stop ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.keeper.halt()
        reexec.remove_state(self.config)
        self.broker.close()
        self._stop_children([*self.pool.pids(), *self.tasks.forget()])
        self.pool.close()
        self.tasks.close_beat()
        self.keeper.join()  # a restart of the embedded Redis in progress ends first
        notify("stop")
        notify.detach_sync()
        self.keeper.stop()
        notify.close_forwarder()

    def _stop_children(self, children: list[int]) -> None:
        """TERM to each (a worker finishes what it holds), then whoever outstays SHUTDOWN_GRACE killed."""
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        left = set(children)
        deadline = time.monotonic() + float(self.config.SHUTDOWN_GRACE) + 2
        while left and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            left.discard(pid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def serve(config: Any) -> int:
    try:
        return Master(config).run()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            notify("start failed", error=f"port {config.PORT} is in use")
            return 1
        raise
