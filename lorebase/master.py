"""The master (seed: Master node): starts the embedded Redis when no REDIS_URL is set,
binds the listening socket, forks one worker per CPU, restarts a worker or Redis that
dies (and notifies), and on SIGTERM/SIGINT stops the workers, then Redis, and exits 0.

Signals, as uvicorn's supervisor: TERM/INT stop, HUP restarts the workers one by one,
TTIN/TTOU add or remove a worker. The master itself runs no event loop and serves no
request, so it has nothing that can wedge.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time
from typing import Any

import redis

from . import __version__, db, procs, tasks, worker
from .notify import notify
from .redisserver import EmbeddedRedis

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Master:
    def __init__(self, config: Any):
        self.config = config
        self.workers: dict[int, int] = {}  # pid → index
        self.target = config.WORKERS
        self.redis: EmbeddedRedis | None = None
        self.sock: socket.socket | None = None
        self.stopping = False
        self.crashes: list[float] = []  # recent unexpected exits, for backoff
        self.redis_up = True
        self.tasks_pid: int | None = None

    # -- start --------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        notify.setup(config.ENV, "master", config.LOG_STREAM_MAX, config.LOG_URL, config.LOG_BUFFER)
        procs.title("master", config.ENV)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in SIGNALS:
            signal.signal(sig, lambda *_: None)  # a handler, so the wakeup fd is written
        try:
            if config.embedded_redis:
                self.redis = EmbeddedRedis(config)
                self.redis.start()
            notify.attach_sync(db.connect_sync(config, 0.5, retry=False))
            self.sock = bind(config.HOST, config.PORT)
        except Exception as error:  # noqa: BLE001
            notify("start failed", error=str(error))
            if self.redis:
                self.redis.stop()
            return 1
        for index in range(self.target):
            self.spawn(index)
        self.spawn_tasks()
        notify("start", version=__version__, host=config.HOST, port=config.PORT, workers=self.target,
               redis="embedded" if self.redis else "external", base_url=config.BASE_URL)
        try:
            self.loop(wake_r)
        finally:
            self.shutdown()
        return 0

    def spawn(self, index: int) -> None:
        assert self.sock is not None
        pid = os.fork()
        if pid == 0:
            os.close(0)
            worker.serve(self.config, self.sock, index)
        self.workers[pid] = index

    def spawn_tasks(self) -> None:
        pid = os.fork()
        if pid == 0:
            os.close(0)
            if self.sock is not None:
                self.sock.close()
            tasks.serve(self.config)
        self.tasks_pid = pid

    # -- supervise ----------------------------------------------------------------------

    def loop(self, wake_r: int) -> None:
        last_check = 0.0
        while not self.stopping:
            try:
                select.select([wake_r], [], [], 1.0)
            except InterruptedError:
                pass
            try:
                data = os.read(wake_r, 64)
            except BlockingIOError:
                data = b""
            for signum in data:
                self.handle(signum)
            self.reap()
            if time.monotonic() - last_check >= 1.0:
                last_check = time.monotonic()
                self.check_redis()

    def handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            notify("stopping", signal=signal.Signals(signum).name)
            self.stopping = True
        elif signum == signal.SIGHUP:
            self.restart_workers()
        elif signum == signal.SIGTTIN:
            self.target += 1
            self.spawn(self._free_index())
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
            pid = max(self.workers, key=lambda p: self.workers[p])
            os.kill(pid, signal.SIGTERM)

    def _free_index(self) -> int:
        used = set(self.workers.values())
        return next(i for i in range(len(used) + 1) if i not in used)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.tasks_pid:
                self.tasks_pid = None
                if not self.stopping:
                    notify("tasks exit", code=os.waitstatus_to_exitcode(status))
                    time.sleep(0.5)  # a crash loop must not spin
                    self.spawn_tasks()
                continue
            if pid not in self.workers:
                if self.redis is not None and self.redis.proc is not None and pid == self.redis.pid:
                    self.redis.proc.returncode = os.waitstatus_to_exitcode(status)
                continue  # check_redis restarts it
            index = self.workers.pop(pid)
            if self.stopping:
                continue
            if len(self.workers) >= self.target:
                continue  # shrunk on purpose (TTOU) or replaced during a restart
            code = os.waitstatus_to_exitcode(status)
            notify("worker exit", worker=index, worker_pid=pid, code=code)
            now = time.monotonic()
            self.crashes = [t for t in self.crashes if now - t < 10] + [now]
            if len(self.crashes) > 5:
                time.sleep(min(len(self.crashes) * 0.5, 5.0))  # a crash loop: slow it down
            self.spawn(index)

    def check_redis(self) -> None:
        if self.redis is not None and not self.redis.alive():
            code = self.redis.proc.returncode if self.redis.proc else None
            notify("redis exit", code=code)
            try:
                self.redis.start()
                notify("redis restarted")
            except Exception as error:  # noqa: BLE001 - try again next second
                notify("redis restart failed", error=str(error))
            return
        try:
            up = bool(notify._sync.ping())
        except redis.RedisError:
            up = False
        if up != self.redis_up:
            self.redis_up = up
            notify("redis up" if up else "redis down", url=db.address(self.config).split("@")[-1])

    def restart_workers(self) -> None:
        """One by one, so the socket always has a worker serving it."""
        for pid, index in list(self.workers.items()):
            self.workers.pop(pid)
            self.spawn(index)
            os.kill(pid, signal.SIGTERM)
            self._wait_for(pid, self.config.SHUTDOWN_GRACE + 2)
        notify("workers restarted", workers=len(self.workers))

    def _wait_for(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    # -- stop ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        if self.tasks_pid is not None:
            self.workers[self.tasks_pid] = -1  # stopped and awaited like a worker
            self.tasks_pid = None
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.SHUTDOWN_GRACE + 2
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                continue
            self.workers.pop(pid, None)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.workers.clear()
        if self.sock is not None:
            self.sock.close()
        notify("stop")
        if self.redis is not None:
            notify._sync = None
            self.redis.stop()
        notify.close_forwarder()


def serve(config: Any) -> int:
    try:
        return Master(config).run()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            notify("start failed", error=f"port {config.PORT} is in use")
            return 1
        raise
