"""The embedded Redis of dev (and of a one-box prod that wants it): a redis-server child
of the master, on a unix socket in DATA_DIR/redis, with RDB and AOF on, no eviction,
and no TCP port at all, so nothing outside the box can reach it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from .db import connect_sync
from .procs import die_with_parent


class EmbeddedRedisError(Exception):
    pass


class EmbeddedRedis:
    def __init__(self, config: Any):
        self.dir: Path = config.redis_dir
        self.fsync = config.REDIS_APPENDFSYNC
        self.socket: Path = config.redis_socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("redis-server")
        self.adopted: int | None = None  # the pid of a Redis this process did not start (a re-exec)
        self.adopted_exit: int | None = None  # its exit code, once the master reaped it

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def conf(self) -> str:
        d = self.dir
        return "\n".join([
            "# written by lorebase at every start; edit lorebase/redisserver.py instead",
            "port 0",  # no TCP: only the unix socket below
            f"unixsocket {d / 'redis.sock'}",
            "unixsocketperm 700",
            "bind 127.0.0.1 -::1",  # loopback only, should a port ever be set
            "protected-mode yes",
            f"dir {d}",
            "dbfilename dump.rdb",
            "save 3600 1 300 100 60 10000",
            "appendonly yes",
            f"appendfsync {self.fsync}",
            "maxmemory-policy noeviction",
            "daemonize no",
            f"pidfile {d / 'redis.pid'}",
            f"logfile {d / 'redis.log'}",
            "",
        ])

    def client(self, timeout: float = 0.5) -> redis.Redis:
        # a probe: no retries (redis-py's default backoff spends ~4 s on a dead socket, which
        # is what a crashed Redis leaves behind for the restart to find)
        return connect_sync(self.url, timeout, retry=False)

    def running_elsewhere(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.client(0.3).ping())
        except redis.RedisError:
            return False

    def start(self, wait: float = 15.0) -> None:
        """Start it and wait until it answers (or raise EmbeddedRedisError)."""
        self.spawn()
        self.wait_ready(wait)

    def spawn(self) -> None:
        """Start redis-server, without waiting for it. Call it from the process's main thread:
        its death-with-parent signal follows the thread that started it."""
        self.adopted = None
        if self.running_elsewhere():
            raise EmbeddedRedisError(f"a Redis already serves {self.socket}: is another lorebase "
                                     f"running with this DATA_DIR?")
        if self.binary is None:
            raise EmbeddedRedisError(
                "redis-server is not installed (not on PATH): install it with `sudo apt-get install redis-server` "
                "(scripts/dev does), or set REDIS_URL to a Redis that runs elsewhere")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        conf = self.dir / "redis.conf"
        conf.write_text(self.conf())
        if self.socket.exists():
            self.socket.unlink()
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)

    def wait_ready(self, wait: float = 15.0) -> None:
        """Until it answers PING (loading its AOF can take a while), or raise."""
        assert self.proc is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited with {self.proc.returncode}; "
                                         f"see {self.dir / 'redis.log'}")
            try:
                if self.socket.exists() and self.client(0.5).ping():
                    return
            except redis.BusyLoadingError:
                pass  # loading the AOF: wait
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server did not answer within {wait}s; see {self.dir / 'redis.log'}")

    def adopt(self, pid: int) -> None:
        """Take over the Redis the master started before it re-executed itself (still its child)."""
        self.adopted, self.adopted_exit = pid, None

    def exited(self, code: int) -> None:
        """The master reaped it (waitpid(-1) takes every child's exit)."""
        if self.proc is not None:
            self.proc.returncode = code
        elif self.adopted is not None:
            self.adopted_exit = code

    def alive(self) -> bool:
        if self.proc is None and self.adopted is not None:
            return self.adopted_exit is None
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else self.adopted_exit

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self.adopted

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: Redis flushes the AOF, writes the RDB and exits."""
        if self.proc is None and self.adopted is not None:
            self._stop_adopted(self.adopted, timeout)
            return
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _stop_adopted(self, pid: int, timeout: float) -> None:
        if self.adopted_exit is not None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                self.adopted_exit = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
