"""Redis from the master's side: the embedded redis-server (lorebase/redisserver.py) started
when no REDIS_URL is set, or adopted from the master before a re-exec, and started again if
it dies; whichever Redis serves, `redis down`/`redis up` notified on a change.

The watching runs on a thread of its own: a ping or a restart of Redis can take seconds, and
the main loop must keep accepting meanwhile. The restart itself is the main loop's (`step`):
a child's death-with-parent signal follows the thread that started it, and the keeper thread
ends at a re-exec.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from .. import db
from ..notify import notify
from ..redisserver import EmbeddedRedis


class RedisKeeper:
    def __init__(self, config: Any):
        self.config = config
        self.redis: EmbeddedRedis | None = None  # None: an external Redis (REDIS_URL)
        self.up = True
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.respawn = False  # the thread found the embedded Redis dead: the loop starts it
        self.respawned = False  # the loop started it: the thread waits for it to answer

    def start(self, inherited: int | None = None) -> None:
        """The embedded Redis, if this config has one: started, or the pid a re-exec handed over adopted."""
        if not self.config.embedded_redis:
            return
        self.redis = EmbeddedRedis(self.config)
        if inherited:
            self.redis.adopt(int(inherited))
        else:
            self.redis.start()

    def handover(self) -> int | None:
        """The embedded Redis's pid for the master after a re-exec, if it runs."""
        return self.redis.pid if self.redis is not None and self.redis.alive() else None

    def stop(self) -> None:
        """The embedded Redis stopped (last, after every child that wrote to it)."""
        if self.redis is not None:
            self.redis.stop()

    # -- the thread -----------------------------------------------------------------------

    def watch(self) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.keep, name="lorebase-redis-keeper", daemon=True)
        self.thread.start()

    def halt(self) -> None:
        """The thread stops at its next second (`join` waits for it)."""
        self.stop_event.set()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(20)  # a wait for the embedded Redis in progress ends first

    def keep(self) -> None:
        """Once a second until halted."""
        while not self.stop_event.wait(1.0):
            try:
                self.check()
            except Exception as error:  # noqa: BLE001 - the next second tries again
                notify.exception("redis check failed", error)

    def check(self) -> None:
        """On the thread: a dead embedded Redis is marked for the loop to start, one it
        started is waited for, and a change of Redis up or down is notified."""
        if self.redis is not None and self.respawned:
            self.respawned = False
            try:
                self.redis.wait_ready()
                notify("redis restarted")
            except Exception as error:  # noqa: BLE001 - the next second tries again
                notify("redis restart failed", error=str(error))
            return
        if self.redis is not None and not self.redis.alive() and not self.respawn:
            notify("redis exit", code=self.redis.returncode)
            self.respawn = True
            return
        try:
            up = bool(notify._sync.ping())
        except redis.RedisError:
            up = False
        if up != self.up:
            self.up = up
            notify("redis up" if up else "redis down", url=db.address(self.config).split("@")[-1])

    # -- on the main loop -----------------------------------------------------------------

    def step(self) -> None:
        """The embedded Redis started again, if the thread found it dead."""
        if self.respawn and self.redis is not None:
            self.respawn = False
            try:
                self.redis.spawn()
                self.respawned = True  # the keeper thread waits for it to answer
            except Exception as error:  # noqa: BLE001 - the keeper finds it dead again next second
                notify("redis restart failed", error=str(error))

    def reaped(self, pid: int, code: int) -> bool:
        """A child that exited, if it was the embedded Redis (the thread notices it and the loop restarts it)."""
        if self.redis is None or pid != self.redis.pid:
            return False
        self.redis.exited(code)
        return True
