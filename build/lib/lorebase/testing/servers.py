"""Real processes on free loopback ports, for tests: a lorebase (`python -m lorebase serve`,
its own embedded Redis unless told otherwise), a file server (`--role files`) and a
standalone redis-server, each with its data in a directory the test gives.

Nothing here reaches into a running lorebase: a test talks HTTP to it and, where it is about
storage, reads its Redis as redis-cli would."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import redis

FILES_SECRET = "files-secret-of-the-tests-0123456789abcdef"  # >= 32 bytes, as the file server requires


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLUSTER_PORTS: set[int] = set()  # handed out by free_cluster_port in this process


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_cluster_port() -> int:
    """A free port a Redis Cluster node may take, its bus port (10000 above it) free too, both
    below the kernel's ephemeral range: a port picked from that range (bind to 0) can be taken
    by any outgoing connection's source port before the node binds it (it happened in CI).
    Never the same one twice in a test process."""

    top = _ephemeral_low() - 10000
    while True:
        port = random.randrange(10000, top)
        if port in _CLUSTER_PORTS:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        _CLUSTER_PORTS.add(port)
        return port


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy (that value); fail after `timeout`
    seconds with the last error it raised."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # kept for the timeout's message
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last_error!r}")


class RedisServer:
    """A standalone redis-server on a free port (the 'external Redis' of REDIS_URL).

    cluster=True: a one-node Redis Cluster (cluster mode, every slot assigned to itself). It
    serves every key, so a plain client works against it unchanged (no MOVED), but Redis
    refuses every CROSSSLOT command, MULTI and script as a real cluster does: the check that
    a key layout runs on a Cluster. Only db 0 exists there."""

    def __init__(self, data_dir: Path, password: str = "", cluster: bool = False):
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_cluster_port() if cluster else free_port()
        self.password = password  # requirepass, when set
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password or None, socket_timeout=2, decode_responses=True)

    def start(self) -> Self:
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
             *auth, *self._cluster_args()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), what="redis-server")
        if self.cluster:
            self.client().execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            wait_for(lambda: "cluster_state:ok" in self.client().execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "INFO"),
                     what="cluster_state:ok")
        return self

    def _cluster_args(self) -> list[str]:
        if not self.cluster:
            return []
        return ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ServerProcess:
    """A `lorebase serve` child process with LOREBASE_* overrides, its output in `log_path`:
    what FileServer and Lorebase share. Subclasses set data_dir, port, overrides, log_path,
    proc, wrapper and project, and define start().

    `project`: the project directory the server runs in (its working directory and
    LOREBASE_PROJECT: its config.py and APPS); None: the test process's own directory."""

    what = "lorebase"  # as messages name it
    data_dir: Path
    port: int
    overrides: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None
    wrapper: list[str]  # a command the server runs under, such as prlimit
    project: Path | None
    python = sys.executable  # the interpreter of `python -m lorebase` (another venv's, to test an install)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        """The environment of the server and of `command`: the test process's, without its
        LOREBASE_* variables, with this server's overrides. No secret.py is read (a developer's
        own would change what the tests see)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")}
        env["LOREBASE_SECRET_FILE"] = str(self.data_dir.parent / "no-secret.py")
        if self.project is not None:
            env["LOREBASE_PROJECT"] = str(self.project)
        # a test box runs its CPU flat out: machine alerts (mails to ADMINS) only where a test asks
        env.update({"LOREBASE_BEAT_CPU": "0", "LOREBASE_BEAT_MEMORY": "0", "LOREBASE_BEAT_DISK": "0"})
        env.update({f"LOREBASE_{k}": v for k, v in self.overrides.items()})
        return env

    def start(self, wait: bool = True) -> Self:
        raise NotImplementedError

    def _spawn(self, args: list[str]) -> None:
        """`python -m lorebase serve <args>`, under the wrapper, its output appended to the log."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.wrapper, self.python, "-m", "lorebase", "serve", *args],
                                         env=self.environ(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.project)

    def command(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`python -m lorebase ARGS` with this server's environment and project (`lorebase
        check`, `lorebase s3 setup`...): its exit code and output, whatever they are."""
        return subprocess.run([self.python, "-m", "lorebase", *args], env=self.environ(), cwd=self.project,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def _wait_up(self, path: str, headers: dict[str, str], timeout: float, what: str) -> None:
        """Until GET `path` answers 200; fails at once if the process exits."""
        def up() -> bool:
            self._alive()
            return httpx.get(self.url + path, headers=headers, timeout=2).status_code == 200
        wait_for(up, timeout, 0.05, what)

    def _alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.what} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit code (killed, and an AssertionError, past `timeout`)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.what} did not stop within {timeout:g} s of SIGTERM") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @contextmanager
    def running(self) -> Iterator[Self]:
        """Started for the block; stopped after it, which must exit 0."""
        self.start()
        try:
            yield self
        finally:
            code = self.stop()
            assert code == 0, f"{self.what} exited with {code}:\n{self.log_text()[-2000:]}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The notify lines of the log, parsed; only those of event `name` if given."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if name is None or entry.get("ev") == name:
                    out.append(entry)
        return out


class FileServer(ServerProcess):
    """`lorebase serve --role files` as a child process, with LOREBASE_* overrides."""

    what = "the file server"

    def __init__(self, data_dir: Path, port: int | None = None, project: Path | None = None, **overrides: Any):
        self.data_dir = data_dir
        self.port = port or free_port()  # a restart on the same port: FileServer(dir, port=old.port)
        self.project = project
        self.overrides = {"FILES_PORT": str(self.port), "FILES_HOST": "127.0.0.1", "DATA_DIR": str(data_dir),
                          "FILES_SECRET": FILES_SECRET, "SHUTDOWN_GRACE": "3", "BEAT_EVERY": "0"}
        self.overrides.update({k: str(v) for k, v in overrides.items()})
        self.log_path = data_dir.parent / f"{data_dir.name}-files.log"
        self.proc = None
        self.wrapper = []

    def start(self, wait: bool = True) -> Self:
        self._spawn(["dev", "--role", "files"])
        if wait:
            self._wait_up("/blobs", {"x-files-secret": FILES_SECRET}, 30, "the file server")
        return self


class Lorebase(ServerProcess):
    """`lorebase serve ENV` as a child process on a free port, two workers, its data (and its
    embedded Redis, unless REDIS_URL is given) in `data_dir`, with LOREBASE_* overrides as
    keyword arguments (`Lorebase(dir, MAIL_URL=sink.url)`)."""

    def __init__(self, data_dir: Path, env: str = "dev", project: Path | None = None, **overrides: Any):
        self.data_dir = data_dir
        self.redis_url = str(overrides.get("REDIS_URL", ""))  # '' : the embedded Redis
        self.project = project
        self.port = free_port()
        self.env_name = env
        self.overrides = {"PORT": str(self.port), "DATA_DIR": str(data_dir), "WORKERS": "2",
                          "BASE_URL": f"http://127.0.0.1:{self.port}", "SHUTDOWN_GRACE": "3",
                          # tests speak from a few addresses and wait for the stream entries of
                          # their requests: no sampling, unless a test sets the rates
                          "LOG_RATE": "0", "AUDIT_ANONYMOUS_RATE": "0"}
        self.overrides.update({k: str(v) for k, v in overrides.items()})
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc = None
        self.wrapper = []

    def start(self, wait: bool = True) -> Self:
        self._spawn([self.env_name])
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /health answers and every worker serves: the master writes DATA_DIR/master.json
        once all of them have pinged (each worker is a new interpreter, so the second can come
        up a while after the first answers)."""
        self._wait_up("/health", {}, timeout, "lorebase /health")
        state = self.data_dir / "master.json"

        def all_serving() -> bool:
            self._alive()
            assert self.proc is not None
            try:
                return bool(json.loads(state.read_text()).get("pid") == self.proc.pid)
            except (FileNotFoundError, ValueError):
                return False
        wait_for(all_serving, timeout, 0.05, "every worker serving (master.json)")

    def restart(self, timeout: float = 30.0) -> Self:
        """Stopped (it must exit 0) and started again on the same port and data: what a
        deploy does, and how a test sees a code change served."""
        code = self.stop(timeout)
        assert code == 0, f"{self.what} exited with {code}:\n{self.log_text()[-2000:]}"
        return self.start()

    def redis(self, decode: bool = True) -> redis.Redis:
        """lorebase's Redis as redis-cli would reach it: the embedded one on its unix socket, or
        the REDIS_URL it was given (decode=False: values as bytes, for those that are not text)."""
        if self.redis_url:
            from ..db import connect_sync  # the Cluster or Sentinel client for those URLs

            client: redis.Redis = connect_sync(self.redis_url, 2, decode=decode)
            return client
        return redis.Redis(unix_socket_path=str(self.data_dir / "redis" / "redis.sock"),
                           socket_timeout=2, decode_responses=decode)

    def remove(self) -> None:
        """Stopped, and its data gone."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
