"""The master (seed: Master node): starts the embedded Redis when no REDIS_URL is set,
binds the listening socket, starts one worker per CPU and the tasks process (each a new
interpreter, lorebase/child.py: the master runs threads, and a fork would copy their locks), and
supervises them; on SIGTERM/SIGINT it stops the workers, then Redis, and exits 0.

The master accepts every connection itself and hands it to a worker over that worker's
channel (a unix socketpair, the descriptor passed with SCM_RIGHTS), choosing the worker
holding the fewest connections. So the load is spread evenly (a shared accept socket let
one worker take 48 of 64 connections), a worker being replaced gets no new connection
while it finishes its own (a SIGHUP drops nothing), and a worker that stopped answering
gets none either. Over the same channel each worker pings once every PING seconds from its
event loop, with its count of open connections; one silent for WORKER_TIMEOUT seconds is
stuck (an endless loop in a handler, say): it is killed and replaced, notified `worker hung`.
The tasks process beats the same way, over a pipe of its own (tasks.BEAT): one silent for
TASKS_TIMEOUT seconds is killed and replaced, notified `tasks stuck`: a stuck loop would
otherwise stop mail, the S3 mirror, backups and checks without a word.

Signals, one `handle_<name>` method each (as uvicorn's supervisor reads): TERM/INT stop, HUP
loads the code on disk (the master re-executes itself in place, keeping its pid, socket and
Redis; new workers start; the old ones finish and exit), TTIN/TTOU add or remove one. A
handler only changes state; the main loop does the work a step at a time (reaping,
accepting, pings, retiring the old workers), so nothing waits on anything else: a worker
dying meanwhile is replaced, and a TERM stops everything cleanly. The master runs no event loop and serves no request.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from . import __version__, child, db, procs
from .notify import notify
from .redisserver import EmbeddedRedis
from .worker import MESSAGE, PING

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)
START_TIMEOUT = 60.0  # seconds a new worker may take to start serving
UNACKED_FOR = 0.5  # a worker that has not taken a handed connection for this long gets no more
REEXEC = "LOREBASE_REEXEC"  # what a master hands the one it re-executes into (JSON)
CODE = Path(__file__).resolve().parent  # the package this master runs (under a release's directory)


def state_path(config: Any) -> Path:
    return Path(config.DATA_DIR) / "master.json"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


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


class Master:
    def __init__(self, config: Any):
        self.config = config
        self.workers: dict[int, Worker] = {}
        self.target = config.WORKERS
        self.timeout = float(config.WORKER_TIMEOUT)
        self.cap = int(config.WORKER_CONNECTIONS)  # past it a worker gets none; all full: they wait
        self.redis: EmbeddedRedis | None = None
        self.sock: socket.socket | None = None
        self.stopping = False
        self.crashes: list[float] = []  # recent unexpected exits, for backoff
        self.respawns: list[tuple[float, int]] = []  # (when, index): workers to start
        self.restarting = False  # a re-exec's new workers are replacing the old ones
        self.redis_up = True
        self.tasks_pid: int | None = None
        self.tasks_due: float | None = None  # when to start the tasks process again
        self.tasks_timeout = float(config.TASKS_TIMEOUT)
        self.tasks_beat: int | None = None  # the read end of the tasks process's beat pipe
        self.tasks_started = 0.0
        self.tasks_last_beat: float | None = None  # None: it has not beaten yet
        self.tasks_stuck = False  # killed for it: its exit is not a crash of its own
        # after a re-exec (SIGHUP): the workers and tasks process of the code before, pid → TERM deadline
        self.old: dict[int, float | None] = {}
        self.old_tasks: int | None = None
        self.refused = 0  # connections closed because no worker could take them
        self.handed = 0
        self.keeper_stop = threading.Event()
        self.keeper: threading.Thread | None = None
        self.announced = False  # STATE written: every worker serving is of this master's code
        self.respawn_redis = False  # the keeper found the embedded Redis dead: the loop starts it
        self.respawned_redis = False  # the loop started it: the keeper waits for it to answer

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
        inherited = json.loads(os.environ.pop(REEXEC, "") or "null")
        try:
            if config.embedded_redis:
                self.redis = EmbeddedRedis(config)
                if inherited and inherited.get("redis"):
                    self.redis.adopt(int(inherited["redis"]))
                else:
                    self.redis.start()
            notify.attach_sync(db.connect_sync(config, 0.5, retry=False))
            if inherited:
                self.sock = socket.socket(fileno=int(inherited["sock"]))
                self.sock.setblocking(False)
                self.sock.set_inheritable(False)
            else:
                self.sock = bind(config.HOST, config.PORT)
        except Exception as error:  # noqa: BLE001
            notify("start failed", error=str(error))
            print(f"lorebase: {error}", file=sys.stderr)  # for the person at the terminal, too
            if self.redis:
                self.redis.stop()
            return 1
        for index in range(self.target):
            self.spawn(index)
        if inherited:
            self.old = {int(pid): None for pid in inherited["workers"]}
            self.old_tasks = inherited.get("tasks")
            self.restarting = True
            if self.old_tasks:
                _term(self.old_tasks)  # the new one starts once it has exited
            else:
                self.spawn_tasks()
        else:
            self.spawn_tasks()
        self.keeper = threading.Thread(target=self.keep_redis, name="lorebase-redis-keeper", daemon=True)
        self.keeper.start()
        notify("reexec done" if inherited else "start", version=__version__, host=config.HOST, port=config.PORT,
               workers=self.target, redis="embedded" if self.redis else "external", base_url=config.BASE_URL)
        try:
            self.loop(wake_r)
        finally:
            self.shutdown()
        return 0

    def spawn(self, index: int) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = child.spawn(self.config, "worker", index, theirs.fileno())
        finally:
            theirs.close()
        ours.setblocking(False)
        self.workers[pid] = Worker(pid, index, ours, time.monotonic())
        return pid

    def spawn_tasks(self) -> None:
        self._close_tasks_beat()  # the last one's, if it is not closed yet
        beat, theirs = os.pipe()
        try:
            pid = child.spawn(self.config, "tasks", channel=theirs)
        except BaseException:
            os.close(beat)
            raise
        finally:
            os.close(theirs)
        os.set_blocking(beat, False)
        self.tasks_pid, self.tasks_beat = pid, beat
        self.tasks_started, self.tasks_last_beat, self.tasks_stuck = time.monotonic(), None, False

    def _close_tasks_beat(self) -> None:
        if self.tasks_beat is not None:
            os.close(self.tasks_beat)
            self.tasks_beat = None

    # -- the main loop ------------------------------------------------------------------

    def loop(self, wake_r: int) -> None:
        while not self.stopping:
            takers = self.takers()
            watched: list[Any] = [wake_r, *(w.chan for w in self.workers.values() if w.chan.fileno() >= 0)]
            if self.tasks_beat is not None:
                watched.append(self.tasks_beat)
            if takers and self.sock is not None:
                watched.append(self.sock)
            try:
                readable, _, _ = select.select(watched, [], [], self._pause())
            except InterruptedError:
                readable = []
            for item in readable:
                if item is wake_r:
                    self.signals(wake_r)
                elif item == self.tasks_beat:
                    self.hear_tasks()
                elif item is self.sock:
                    self.accept()
                else:
                    self.hear(item)
            self.reap()
            self.step()

    def _pause(self) -> float:
        pause = PING
        due = [t for t, _ in self.respawns] + ([self.tasks_due] if self.tasks_due is not None else [])
        if due:
            pause = min(pause, max(0.0, min(due) - time.monotonic()))
        return pause

    def step(self) -> None:
        """What the loop does each turn besides reading: due respawns, the old workers of a re-exec,
        stuck or overdue workers, Redis."""
        now = time.monotonic()
        for due in [r for r in self.respawns if r[0] <= now]:
            self.respawns.remove(due)
            if not self.stopping and self._active() < self.target:
                self.spawn(due[1])
        if self.respawn_redis and self.redis is not None:
            self.respawn_redis = False
            try:
                self.redis.spawn()
                self.respawned_redis = True  # the keeper thread waits for it to answer
            except Exception as error:  # noqa: BLE001 - the keeper finds it dead again next second
                notify("redis restart failed", error=str(error))
        if self.tasks_due is not None and now >= self.tasks_due and not self.stopping:
            self.tasks_due = None
            self.spawn_tasks()
        self.step_old(now)
        self.check_tasks(now)
        if not self.announced and not self.old and not self.stopping and \
                sum(1 for w in self.workers.values() if w.ready) >= self.target:
            self.announced = True
            self.write_state()
        for w in list(self.workers.values()):
            if w.stop_by is not None and now > w.stop_by:
                self._kill(w.pid)  # did not finish within SHUTDOWN_GRACE
            elif w.stop_by is None and not w.hung and self._silent(w, now):
                w.hung = True
                notify("worker hung", worker=w.index, worker_pid=w.pid, ready=w.ready,
                       silent_s=round(now - (w.last_ping if w.ready else w.started), 1))
                self._kill(w.pid)

    def hear_tasks(self) -> None:
        """The tasks process's beats (any bytes: each read is one beat)."""
        assert self.tasks_beat is not None
        try:
            data = os.read(self.tasks_beat, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # it exited: reaping replaces it (a closed pipe is not watched)
            self._close_tasks_beat()
            return
        self.tasks_last_beat = time.monotonic()

    def check_tasks(self, now: float) -> None:
        """A tasks process that stopped beating for TASKS_TIMEOUT (or never began within
        START_TIMEOUT) is killed; reaping starts another."""
        if self.tasks_pid is None or self.tasks_stuck or self.stopping:
            return
        since, limit = self.tasks_last_beat, self.tasks_timeout
        if since is None:
            since, limit = self.tasks_started, max(START_TIMEOUT, self.tasks_timeout)
        if now - since > limit:
            self.tasks_stuck = True
            notify("tasks stuck", tasks_pid=self.tasks_pid, beaten=self.tasks_last_beat is not None,
                   silent_s=round(now - since, 1))
            self._kill(self.tasks_pid)

    def write_state(self) -> None:
        """DATA_DIR/master.json, once every worker serving runs this master's code (at start, and
        after a re-exec once the old workers are gone): what deploy.sh reads to know which release
        serves. Written whole (a rename); removed at a clean stop."""
        path = state_path(self.config)
        state = {"pid": os.getpid(), "version": __version__, "code": str(CODE), "env": self.config.ENV,
                 "serving_since": round(time.time(), 3), "workers": self._active()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(state) + "\n")
            os.replace(tmp, path)
        except OSError as error:
            notify("state not written", path=str(path), error=str(error))

    def _silent(self, w: Worker, now: float) -> bool:
        """A serving worker that stopped pinging, or a new one that never started serving."""
        if w.ready:
            return now - w.last_ping > self.timeout
        return now - w.started > START_TIMEOUT

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
        """Load the code on disk without dropping a request: the master re-executes itself
        (same pid, same listening socket, same Redis), starts new workers, and once they all
        serve, the old ones finish what they hold and exit (see reexec)."""
        if self.stopping:
            return
        notify("workers restarting", workers=len(self.workers) + len(self.old))
        self.reexec()

    def reexec(self) -> None:
        assert self.sock is not None
        argv = _argv()
        # the code on disk must at least build its app before this master becomes it: a release
        # that cannot (an import error, a bad setting) is refused and the old code goes on serving
        trial = subprocess.run([*argv[:argv.index("serve")], "openapi", self.config.ENV], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
        if trial.returncode != 0:
            notify("reexec failed", argv=argv,
                   error=trial.stderr.decode(errors="replace").strip()[-600:] or f"exit {trial.returncode}")
            return
        state = {"sock": self.sock.fileno(), "workers": [*self.workers, *self.old],
                 "tasks": self.tasks_pid or self.old_tasks,
                 "redis": self.redis.pid if self.redis is not None and self.redis.alive() else None}
        self.keeper_stop.set()
        if self.keeper is not None:
            self.keeper.join(20)  # a wait for the embedded Redis in progress ends first
        notify.detach_sync()
        notify.close_forwarder()
        self.sock.set_inheritable(True)
        try:
            os.execve(argv[0], argv, {**os.environ, REEXEC: json.dumps(state)})  # noqa: S606 - ourselves
        except OSError as error:  # the code on disk cannot start: keep running the old one
            self.sock.set_inheritable(False)
            self._resume(argv, str(error))

    def _resume(self, argv: list[str], error: str) -> None:
        """An exec that failed: this master goes on as it was (its forwarder to LOG_URL, if
        any, stays closed)."""
        notify.attach_sync(db.connect_sync(self.config, 0.5, retry=False))
        notify("reexec failed", error=error, argv=argv)
        self.keeper_stop = threading.Event()
        self.keeper = threading.Thread(target=self.keep_redis, name="lorebase-redis-keeper", daemon=True)
        self.keeper.start()

    def handle_ttin(self) -> None:
        self.target += 1
        self.spawn(self._free_index())

    def handle_ttou(self) -> None:
        if self.target <= 1:
            return
        self.target -= 1
        active = [w for w in self.workers.values() if not w.leaving and w.stop_by is None]
        if len(active) > self.target:
            self.stop_worker(max(active, key=lambda w: w.index).pid)

    def handle_chld(self) -> None:
        pass  # the loop reaps every turn

    def _free_index(self) -> int:
        used = {w.index for w in self.workers.values() if not w.leaving}
        return next(i for i in range(len(used) + 1) if i not in used)

    def _active(self) -> int:
        return sum(1 for w in self.workers.values() if not w.leaving and w.stop_by is None)

    # -- connections --------------------------------------------------------------------

    def takers(self) -> list[Worker]:
        """Workers that may get a new connection: serving, staying, and taking what they get."""
        now = time.monotonic()
        return [w for w in self.workers.values() if w.ready and not w.leaving and w.stop_by is None
                and not w.hung and (not w.unacked or now - w.unacked_since < UNACKED_FOR)
                and (not self.cap or w.open < self.cap)]

    def accept(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # then the loop's other work gets its turn
            takers = self.takers()
            if not takers:
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: the backlog keeps them
                notify("accept failed", error=str(error))
                return
            self.hand(conn, takers)

    def hand(self, conn: socket.socket, takers: list[Worker]) -> None:
        """The connection to the worker holding the fewest; the next one if its channel is full."""
        try:
            for w in sorted(takers, key=lambda w: (w.unacked > 0, w.open, w.handed)):
                try:
                    socket.send_fds(w.chan, [b"C"], [conn.fileno()])
                except (BlockingIOError, OSError):
                    continue
                if not w.unacked:
                    w.unacked_since = time.monotonic()
                w.unacked += 1
                w.open += 1
                self.handed += 1
                w.handed = self.handed
                return
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                notify("connection refused", refused=self.refused, reason="no worker could take it")
        finally:
            conn.close()  # the worker has its own copy of the descriptor

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

    def stop_worker(self, pid: int) -> None:
        """No new connection, TERM (it finishes what it holds), killed if it outstays SHUTDOWN_GRACE."""
        w = self.workers.get(pid)
        if w is None or w.stop_by is not None:
            return
        w.leaving = True
        w.stop_by = time.monotonic() + float(self.config.SHUTDOWN_GRACE) + 2
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def step_old(self, now: float) -> None:
        """After a re-exec: once the new workers all serve, the old ones get TERM (they finish
        what they hold), and are killed if they outstay SHUTDOWN_GRACE."""
        if not self.old:
            if self.restarting:
                self.restarting = False
                notify("workers restarted", workers=self._active())
            return
        serving = sum(1 for w in self.workers.values() if w.ready and not w.leaving and w.stop_by is None)
        grace = float(self.config.SHUTDOWN_GRACE) + 2
        for pid, deadline in list(self.old.items()):
            if deadline is None and serving >= self.target:
                _term(pid)
                self.old[pid] = now + grace
            elif deadline is not None and now > deadline:
                self._kill(pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.tasks_pid:
                self.tasks_pid = None
                if not self.stopping:
                    notify("tasks exit", code=code, stuck=self.tasks_stuck)
                    self.tasks_due = time.monotonic() + 0.5  # a crash loop must not spin
                continue
            w = self.workers.pop(pid, None)
            if w is None:
                if self.redis is not None and pid == self.redis.pid:
                    self.redis.exited(code)
                elif pid in self.old:  # a worker of the code before a re-exec, done
                    self.old.pop(pid)
                elif pid == self.old_tasks:
                    self.old_tasks = None
                    if not self.stopping:
                        self.spawn_tasks()  # only now: one tasks process per node (its scheduled tasks and beat)
                continue  # check_redis restarts Redis
            w.chan.close()
            if self.stopping or w.stop_by is not None:
                continue  # stopped on purpose
            notify("worker exit", worker=w.index, worker_pid=pid, code=code, hung=w.hung)
            if w.leaving:
                continue  # its replacement is already there
            now = time.monotonic()
            self.crashes = [t for t in self.crashes if now - t < 10] + [now]
            # a crash loop is slowed down (0.5 s more per crash past 5 in 10 s, at most 5 s)
            delay = 0.0 if len(self.crashes) <= 5 else min((len(self.crashes) - 5) * 0.5, 5.0)
            self.respawns.append((now + delay, w.index))

    def keep_redis(self) -> None:
        """A thread of its own (a ping or a restart of Redis can take seconds; the loop must
        keep accepting meanwhile): once a second, the embedded Redis restarted if it died,
        and `redis down`/`redis up` notified on a change."""
        while not self.keeper_stop.wait(1.0):
            try:
                self.check_redis()
            except Exception as error:  # noqa: BLE001 - the next second tries again
                notify.exception("redis check failed", error)

    def check_redis(self) -> None:
        """On the keeper thread. A dead embedded Redis is started again by the main loop (a
        child's death-with-parent signal follows the thread that started it, and this thread
        ends at a re-exec); this thread waits for it to answer."""
        if self.redis is not None and self.respawned_redis:
            self.respawned_redis = False
            try:
                self.redis.wait_ready()
                notify("redis restarted")
            except Exception as error:  # noqa: BLE001 - the next second tries again
                notify("redis restart failed", error=str(error))
            return
        if self.redis is not None and not self.redis.alive() and not self.respawn_redis:
            notify("redis exit", code=self.redis.returncode)
            self.respawn_redis = True
            return
        try:
            up = bool(notify._sync.ping())
        except redis.RedisError:
            up = False
        if up != self.redis_up:
            self.redis_up = up
            notify("redis up" if up else "redis down", url=db.address(self.config).split("@")[-1])

    # -- stop ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.keeper_stop.set()
        try:
            state_path(self.config).unlink()
        except FileNotFoundError:
            pass
        if self.sock is not None:
            self.sock.close()  # no new connection from here on
            self.sock = None
        children = [*self.workers, *self.old]
        for pid in (self.tasks_pid, self.old_tasks):
            if pid is not None:
                children.append(pid)
        self.tasks_pid = self.old_tasks = None
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
        for w in self.workers.values():
            w.chan.close()
        self.workers.clear()
        self._close_tasks_beat()
        if self.keeper is not None:
            self.keeper.join(20)  # a restart of the embedded Redis in progress ends first
        notify("stop")
        notify.detach_sync()
        if self.redis is not None:
            self.redis.stop()
        notify.close_forwarder()


def _term(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _argv() -> list[str]:
    """How to start this master again: the console script as it was started (a `current` link
    in its path is followed anew, so a new release is what starts), else `python -m lorebase`."""
    script = sys.argv[0]
    if os.path.basename(script) == "lorebase" and os.access(script, os.X_OK):
        return [script, *sys.argv[1:]]
    return [sys.executable, "-m", "lorebase", *sys.argv[1:]]


def serve(config: Any) -> int:
    try:
        return Master(config).run()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            notify("start failed", error=f"port {config.PORT} is in use")
            return 1
        raise
