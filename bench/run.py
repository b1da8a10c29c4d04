"""lorebase's benchmark: lorebase, the seed's node/express stack and a bare hello-world on
lorebase's HTTP server stack, side by side in one run on loopback, driven by wrk with the
seed's load scripts (shared/bench/wrk/*.lua). See bench/README.md.

    .venv/bin/python bench/run.py                     # every peer, the default workloads, 10 s each
    .venv/bin/python bench/run.py --duration 5 --only lorebase --only hello

One peer is up and loaded at a time: start it, warm up, measure each of its workloads, read
its workers' RSS, stop it. Everything started here (servers, Redis) is stopped on exit, on
error and on Ctrl-C. Results go to stdout (Markdown tables) and bench/results/<time>.json.

To add a workload: one Workload row in WORKLOADS (and a ratio row in RATIOS). To add a peer:
a Peer subclass in PEERS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"  # gitignored: the express copy and its node_modules, granian's venv, logs
RESULTS = BENCH / "results"  # gitignored
SHARED = ROOT.parent / "shared" / "bench"  # the seed's stack and wrk scripts, beside the repo
HOST = "127.0.0.1"
LOREBASE_COOKIE = os.environ.get("LOREBASE_COOKIE_NAME") or "lorebase"


# -- what is measured: workloads and ratios, as data ----------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str  # the label of wrk's RESULT line
    script: str  # a file in shared/bench/wrk/
    paths: dict[str, str]  # peer name → the path serving this workload there; other peers skip it
    method: str = "GET"  # as the script sends it; for the report
    session: bool = False  # wrk needs COOKIE, COOKIE_NAME and CSRF: the peer's login() is run first
    default: bool = True  # run when --workload does not name workloads
    logins: int = 0  # connections logging in (POST /auth/login) in a loop while wrk runs
    own: bool = False  # the script is in bench/wrk/, not the seed's shared/bench/wrk/
    items: int = 0  # before the run, GET the route once: it must answer a JSON list this long


LOGINS = 4  # login connections during W2+login: a steady stream of logins, not a flood
DOWNLOAD_SIZE = 64 * 1024
NOTES = 20  # the page GET /notes answers on both peers: W4 checks it lists this many
HELLO = {"hello": "/", "hello-headers": "/", "hello-reuseport": "/", "granian-asgi": "/", "granian-rsgi": "/"}

WORKLOADS = [
    Workload("W1", "ping.lua", {"express": "/ping", "lorebase": "/ping", **HELLO}),
    Workload("W1-health", "ping.lua", {"lorebase": "/health"}),  # lorebase's /ping plus one Redis PING
    # Session workloads: wrk gets COOKIE, COOKIE_NAME and CSRF from the peer's login() (signup and
    # login over HTTP). Keep this order: W3 writes the notes W4 lists (the 20 newest of many).
    Workload("W2", "csrf.lua", {"express": "/auth/csrf", "lorebase": "/auth/csrf"}, session=True),
    # W2 again while LOGINS connections log in over and over: does password hashing stall the
    # other requests? (lorebase: argon2id in a thread; express: bcryptjs, cost 10)
    Workload("W2+login", "csrf.lua", {"express": "/auth/csrf", "lorebase": "/auth/csrf"}, session=True,
             logins=LOGINS),
    Workload("W3", "post_note.lua", {"express": "/notes", "lorebase": "/notes"}, "POST", session=True),
    Workload("W4", "get_notes.lua", {"express": "/notes", "lorebase": "/notes"}, session=True, items=NOTES),
    # a 64 KiB file uploaded after the login, then downloaded over and over (express has no files)
    Workload("D64", "download.lua", {"lorebase": "/files/{file}"}, session=True, own=True),
]

# (what it says, numerator (peer, workload), denominator (peer, workload)): a req/s ratio.
RATIOS = [
    ("lorebase /ping ÷ bare ASGI hello (the chain's cost)", ("lorebase", "W1"), ("hello", "W1")),
    ("hello with lorebase's 8 headers ÷ hello (the headers' cost)", ("hello-headers", "W1"), ("hello", "W1")),
    ("lorebase /ping ÷ hello with its headers (the chain's Python)", ("lorebase", "W1"), ("hello-headers", "W1")),
    ("lorebase /ping ÷ express /ping", ("lorebase", "W1"), ("express", "W1")),
    ("lorebase /health ÷ express /ping", ("lorebase", "W1-health"), ("express", "W1")),
    ("hello: SO_REUSEPORT per worker ÷ one shared socket", ("hello-reuseport", "W1"), ("hello", "W1")),
    ("hello: granian ASGI ÷ uvicorn (shared socket)", ("granian-asgi", "W1"), ("hello", "W1")),
    ("hello: granian RSGI ÷ uvicorn (shared socket)", ("granian-rsgi", "W1"), ("hello", "W1")),
    ("lorebase ÷ express, W2 GET /auth/csrf", ("lorebase", "W2"), ("express", "W2")),
    ("lorebase ÷ express, W3 POST /notes", ("lorebase", "W3"), ("express", "W3")),
    ("lorebase ÷ express, W4 GET /notes", ("lorebase", "W4"), ("express", "W4")),
    ("lorebase W2 ÷ lorebase W1 (the session's cost)", ("lorebase", "W2"), ("lorebase", "W1")),
    ("lorebase W2 with logins running ÷ W2 alone", ("lorebase", "W2+login"), ("lorebase", "W2")),
    ("express W2 with logins running ÷ W2 alone", ("express", "W2+login"), ("express", "W2")),
    ("lorebase ÷ express, W2 with logins running", ("lorebase", "W2+login"), ("express", "W2+login")),
    ("lorebase 64 KiB download ÷ lorebase W2 (the file's cost)", ("lorebase", "D64"), ("lorebase", "W2")),
    ("express W2 ÷ express W1 (the session's cost)", ("express", "W2"), ("express", "W1")),
]


# -- the peers ------------------------------------------------------------------------------


@dataclass
class Session:
    cookie: str  # the session cookie's value, as wrk's COOKIE
    csrf: str
    user: str = ""
    password: str = ""
    file: str = ""  # the id of the file a peer uploaded for the download workload


@dataclass
class Context:
    args: argparse.Namespace
    shared: Path
    tmp: Path  # a temporary dir for this run, removed at the end
    logs: Path
    redis_url: str = ""  # the throwaway Redis (express, and lorebase with --shared-redis)
    redis: Server | None = None
    topologies: dict[str, Any] = field(default_factory=dict)  # Sentinel / Cluster groups, by kind, started once


class Peer:
    name = ""
    serves_as = ""  # the peer whose workload paths this one serves (default: its own name)
    about = ""
    ready_path = "/"
    cookie_name = "session"
    workers = 2

    def skip_reason(self, ctx: Context) -> str | None:
        """Why this peer cannot run here, or None."""
        return None

    def uses_throwaway_redis(self, ctx: Context) -> bool:
        """Whether the throwaway Redis's CPU counts as this peer's."""
        return False

    def own_servers(self, ctx: Context) -> list[psutil.Process]:
        """Processes outside the peer's own tree whose CPU counts as the peer's (its Redis)."""
        return []

    def prepare(self, ctx: Context) -> None:
        """One-time setup before the server starts (npm ci and such)."""

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        """argv, extra environment, working dir of the server's master process."""
        raise NotImplementedError

    def login(self, base: str) -> Session:
        """Sign a fresh user up and log in, by the route contract of shared/bench/README.md:
        POST /auth/signup {username, password, email}, POST /auth/login {username, password}
        → {"csrf"} and the session cookie. A peer whose contract differs overrides this."""
        user = "bench_" + secrets.token_hex(6)
        password = secrets.token_urlsafe(16)
        http_json("POST", base + "/auth/signup", {"username": user, "password": password,
                                                  "email": f"{user}@example.com"})
        body, cookies = http_json("POST", base + "/auth/login", {"username": user, "password": password})
        if self.cookie_name not in cookies:
            raise RuntimeError(f"login set no {self.cookie_name!r} cookie (got {sorted(cookies)})")
        return Session(cookie=cookies[self.cookie_name], csrf=body["csrf"], user=user, password=password)

    def upload(self, base: str, session: Session) -> None:
        """Store the download workload's file; peers that have no files leave this alone."""

    def check_list(self, base: str, path: str, session: Session, items: int) -> None:
        """GET `path` must answer a JSON list of `items`. For GET /notes (W4), when W3 did not
        run first (`--workload W4`), write the notes that are missing (POST /notes, the same
        body as W3's script) before checking."""
        cookie = {"Cookie": f"{self.cookie_name}={session.cookie}"}
        body, _ = http_json("GET", base + path, None, cookie)
        if path == "/notes" and isinstance(body, list) and len(body) < items:
            for i in range(items - len(body)):
                http_json("POST", base + "/notes", {"csrf": session.csrf, "text": f"bench note {i}"}, cookie)
            body, _ = http_json("GET", base + path, None, cookie)
        if not isinstance(body, list) or len(body) != items:
            got = len(body) if isinstance(body, list) else type(body).__name__
            raise RuntimeError(f"GET {path} answered {got} items, not {items}")


def route_name(peer: Peer) -> str:
    return peer.serves_as or peer.name


class Express(Peer):
    name = "express"
    about = "the seed's stack: node cluster, 2 workers, express 5, node-redis over TCP to a throwaway Redis"
    ready_path = "/ping"

    def uses_throwaway_redis(self, ctx: Context) -> bool:
        return True

    def skip_reason(self, ctx: Context) -> str | None:
        if not shutil.which("node") or not shutil.which("npm"):
            return "node or npm not installed"
        if not (ctx.shared / "express" / "server.js").exists():
            return f"no {ctx.shared / 'express'}"
        return None

    def prepare(self, ctx: Context) -> None:
        """Copy the seed's express app out of shared/ (never into git) and npm ci it, once per
        package-lock.json."""
        dst = WORK / "express"
        shutil.copytree(ctx.shared / "express", dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("node_modules"))
        digest = hashlib.sha256((dst / "package-lock.json").read_bytes()).hexdigest()
        stamp = dst / ".npm-ci.sha256"
        if (dst / "node_modules").is_dir() and stamp.exists() and stamp.read_text() == digest:
            return
        print("express: npm ci ...", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=dst, check=True,
                       timeout=600)
        stamp.write_text(digest)

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        env = {"PORT": str(port), "REDIS_URL": ctx.redis_url, "WORKERS": str(self.workers),
               "NODE_ENV": "production"}
        return ["node", "server.js"], env, WORK / "express"


class Hello(Peer):
    name = "hello"
    about = "bench/hello.py: raw ASGI hello on uvicorn+httptools+uvloop, 2 forked workers on one inherited socket"
    mode, headers = "shared", "minimal"

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        return ([sys.executable, str(BENCH / "hello.py"), "--host", HOST, "--port", str(port),
                 "--workers", str(self.workers), "--mode", self.mode, "--headers", self.headers], {}, ROOT)


class HelloHeaders(Hello):
    name = "hello-headers"
    about = "bench/hello.py --headers lorebase: the same, replying with the 8 headers lorebase's /ping sends"
    headers = "lorebase"


class HelloReuseport(Hello):
    name = "hello-reuseport"
    about = "bench/hello.py --mode reuseport: the same, each worker binding its own SO_REUSEPORT socket"
    mode = "reuseport"


def granian_binary() -> str | None:
    for candidate in (WORK / "granian-venv" / "bin" / "granian", Path(sys.executable).parent / "granian"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("granian")


class Granian(Peer):
    name = "granian-asgi"
    about = "the same hello app on granian (ASGI), 2 workers, uvloop, HTTP/1 (not a project dependency)"
    interface, target = "asgi", "hello:app"

    def skip_reason(self, ctx: Context) -> str | None:
        if granian_binary() is None:
            return "granian not installed (see bench/README.md)"
        return None

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        binary = granian_binary()
        assert binary is not None
        return ([binary, "--interface", self.interface, "--workers", str(self.workers), "--loop", "uvloop",
                 "--http", "1", "--no-ws", "--host", HOST, "--port", str(port), "--log-level", "warning",
                 "--working-dir", str(BENCH), self.target], {}, BENCH)


class GranianRSGI(Granian):
    name = "granian-rsgi"
    about = "the same reply on granian's own interface (RSGI), 2 workers, uvloop, HTTP/1"
    interface, target = "rsgi", "hello:rsgi_app"


class Lorebase(Peer):
    name = "lorebase"
    about = "lorebase serve: master + 2 forked workers on one socket, embedded Redis on a unix socket"
    ready_path = "/ping"
    cookie_name = LOREBASE_COOKIE

    def uses_throwaway_redis(self, ctx: Context) -> bool:
        return bool(ctx.args.shared_redis)

    def upload(self, base: str, session: Session) -> None:
        """POST /files: one multipart part `file` of DOWNLOAD_SIZE random bytes."""
        boundary = secrets.token_hex(16)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.bin\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + os.urandom(DOWNLOAD_SIZE) + \
            f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(base + "/files", method="POST", data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "X-CSRF-Token": session.csrf,
            "Cookie": f"{self.cookie_name}={session.cookie}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            stored = json.loads(r.read())
        if stored.get("size") != DOWNLOAD_SIZE:
            raise RuntimeError(f"upload stored {stored!r}")
        session.file = stored["id"]
        # what wrk will ask for: the same bytes back, whole
        get = urllib.request.Request(f"{base}/files/{session.file}",
                                     headers={"Cookie": f"{self.cookie_name}={session.cookie}"})
        with urllib.request.urlopen(get, timeout=30) as r:
            if r.status != 200 or len(r.read()) != DOWNLOAD_SIZE:
                raise RuntimeError(f"GET /files/{session.file} did not answer the {DOWNLOAD_SIZE} bytes stored")

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        binary = Path(sys.executable).parent / "lorebase"
        data = Path(tempfile.mkdtemp(prefix="lorebase-", dir=ctx.tmp))
        env = {"LOREBASE_PORT": str(port), "LOREBASE_HOST": HOST, "LOREBASE_WORKERS": str(self.workers),
               "LOREBASE_DATA_DIR": str(data), "LOREBASE_COOKIE_NAME": self.cookie_name,
               "LOREBASE_REDIS_URL": ctx.redis_url if ctx.args.shared_redis else "",
               "LOREBASE_SHUTDOWN_GRACE": "3"}
        return [str(binary if binary.exists() else "lorebase"), "serve", "dev"], env, ROOT


class LorebaseBase(Lorebase):
    """lorebase from another checkout (`--base PATH`, e.g. a `git worktree` of main before a
    change), run by the same Python: a change is measured against the code before it, in
    the same run."""

    name = "lorebase-base"
    serves_as = "lorebase"
    about = "lorebase from the checkout given by --base (the code before a change), same settings"

    def skip_reason(self, ctx: Context) -> str | None:
        base = ctx.args.base
        if base is None:
            return "no --base checkout given"
        if not (base / "lorebase" / "__main__.py").exists():
            return f"no lorebase package in {base}"
        return None

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        _, env, _ = super().command(ctx, port)
        # `python -m` from the checkout's root imports its lorebase, not the installed one
        return [sys.executable, "-m", "lorebase", "serve", "dev"], env, ctx.args.base.resolve()


class LorebaseOn(Lorebase):
    """lorebase with REDIS_URL on a Redis topology of several servers on loopback TCP
    (tests/topology.py starts them, the way the tests do), started once per run and
    stopped at its end; their CPU counts as lorebase's. Compare with `lorebase
    --shared-redis` (one Redis over TCP), not with the unix socket of the embedded one."""

    serves_as = "lorebase"
    kind = ""

    def topology(self, ctx: Context) -> Any:
        if self.kind not in ctx.topologies:
            sys.path.insert(0, str(ROOT))
            from tests.topology import Cluster, Sentinels

            made = (Sentinels if self.kind == "sentinel" else Cluster)(ctx.tmp / self.kind)
            ctx.topologies[self.kind] = made
            made.start()
        return ctx.topologies[self.kind]

    def own_servers(self, ctx: Context) -> list[psutil.Process]:
        procs = self.topology(ctx).procs.values()
        return [psutil.Process(p.pid) for p in procs if p.poll() is None]

    def command(self, ctx: Context, port: int) -> tuple[list[str], dict[str, str], Path]:
        argv, env, cwd = super().command(ctx, port)
        env["LOREBASE_REDIS_URL"] = self.topology(ctx).url
        return argv, env, cwd


class LorebaseSentinel(LorebaseOn):
    name = "lorebase-sentinel"
    kind = "sentinel"
    about = "lorebase on redis+sentinel://: a primary, one replica, three sentinels (TCP)"


class LorebaseCluster(LorebaseOn):
    name = "lorebase-cluster"
    kind = "cluster"
    about = "lorebase on redis+cluster://: a Redis Cluster of three primaries and three replicas (TCP)"


PEERS: list[Peer] = [Express(), Hello(), HelloHeaders(), HelloReuseport(), Granian(), GranianRSGI(), Lorebase(),
                     LorebaseBase(), LorebaseSentinel(), LorebaseCluster()]


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """A process started in its own session, its output in a log file; stop() ends it and
    every process it started."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.name = name
        self.log = log
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever seen, to be sure they end
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen[p.pid] = p
        return list(self.seen.values())

    def tree(self) -> list[psutil.Process]:
        """The master and every process under it now."""
        self._descendants()
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(self.proc.pid)
            return [master, *master.children(recursive=True)]
        return []

    def workers(self, port: int) -> list[psutil.Process]:
        """The master's children that listen on `port` (lorebase's and hello's workers, not
        lorebase's tasks process or Redis); if none does (node's cluster master accepts and
        hands connections over), its children other than a redis-server."""
        self._descendants()
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        listening, others = [], []
        for p in children:
            with contextlib.suppress(psutil.Error):
                if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp")):
                    listening.append(p)
                elif p.name() != "redis-server":
                    others.append(p)
        return sorted(listening or others, key=lambda p: p.pid)

    def wait_ready(self, probe: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if probe():
                    self._descendants()
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        family = self._descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started
                self.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()


@contextlib.contextmanager
def running(name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path,
            probe: Any) -> Iterator[Server]:
    server = Server(name, argv, env, cwd, log)
    try:
        server.wait_ready(probe)
        yield server
    finally:
        server.stop()


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def redis_ok(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def http_json(method: str, url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    """One JSON request (no body when payload is None); returns the decoded body and the
    cookies set, raises on non-2xx."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, method=method, data=data,
                                 headers={**({} if data is None else {"Content-Type": "application/json"}),
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read() or b"null")
            jar: SimpleCookie = SimpleCookie()
            for header in r.headers.get_all("Set-Cookie") or []:
                jar.load(header)
            return body, {k: m.value for k, m in jar.items()}
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url}: {error.code} {error.read()[:200]!r}") from None


# -- wrk ------------------------------------------------------------------------------------


@dataclass
class Result:
    peer: str
    workload: str
    route: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non2xx: int = 0
    sock_errors: int = 0
    requests: int = 0
    worker_cpu_s: list[float] = field(default_factory=list)  # CPU seconds per worker during the run
    other_cpu_s: float = 0.0  # the peer's other processes: master, Redis (embedded or throwaway), tasks
    wrk_cpu_s: float = 0.0
    worker_conns: list[int] = field(default_factory=list)  # open client connections per worker, mid-run
    foreign_cpu_s: float = 0.0  # the rest of the machine's busy CPU time: noise from other work on the box
    logins: int = 0  # logins done by the login load during the run (W2+login)
    login_rps: float = 0.0
    login_p50_ms: float = 0.0
    login_p99_ms: float = 0.0
    login_errors: int = 0
    error: str = ""


class LoginLoad:
    """`count` keep-alive connections, each logging the session's user in again and again
    (POST /auth/login), from threads of this process, until stop()."""

    def __init__(self, port: int, session: Session, count: int):
        self.port, self.count = port, count
        self.body = json.dumps({"username": session.user, "password": session.password}).encode()
        self.stopping = threading.Event()
        self.latencies: list[float] = []  # seconds, of the logins that succeeded
        self.errors = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        mine: list[float] = []
        errors = 0
        try:
            while not self.stopping.is_set():
                started = time.perf_counter()
                try:
                    conn.request("POST", "/auth/login", self.body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    if response.status == 200:
                        mine.append(time.perf_counter() - started)
                    else:
                        errors += 1
                except (OSError, http.client.HTTPException):
                    errors += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        finally:
            conn.close()
            with self.lock:
                self.latencies += mine
                self.errors += errors

    def start(self) -> None:
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()

    def stop(self, result: Result) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)
        elapsed = time.perf_counter() - self.started
        done = sorted(self.latencies)
        result.logins, result.login_errors = len(done), self.errors
        result.login_rps = round(len(done) / elapsed, 1) if elapsed else 0.0
        if done:
            result.login_p50_ms = round(done[len(done) // 2] * 1000, 1)
            result.login_p99_ms = round(done[min(len(done) - 1, int(len(done) * 0.99))] * 1000, 1)


def wrk(ctx: Context, url: str, script: Path, env: dict[str, str], duration: int, log: Path) -> list[str]:
    args = ctx.args
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
            "-s", str(script), url]
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=duration + 60)
    log.write_text(" ".join(argv) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return line.split()
    raise RuntimeError(f"wrk printed no RESULT line: {done.stdout.strip()[-300:]}")


def cpu_seconds(workers: list[psutil.Process]) -> list[float]:
    out = []
    for p in workers:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


def wrk_cpu() -> float:
    """CPU seconds of this script's waited-for children: wrk, once it has exited."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def connections(workers: list[psutil.Process], port: int) -> list[int]:
    """How many client connections to `port` each worker holds."""
    out = []
    for p in workers:
        try:
            out.append(sum(1 for c in p.net_connections("tcp")
                           if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port))
        except psutil.Error:
            out.append(0)
    return out


def busy() -> float:
    """CPU seconds the whole machine has been busy since boot (all CPUs)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


def wait_quiet(ctx: Context, what: str) -> None:
    """Wait (up to --quiet-wait seconds) until the rest of the box uses under 10 % of one CPU:
    on a shared machine, other people's tests and builds are the largest error."""
    deadline = time.monotonic() + ctx.args.quiet_wait
    said = False
    while True:
        start = busy()
        time.sleep(1.0)
        load = busy() - start
        if load < 0.1:
            return
        if time.monotonic() >= deadline:
            print(f"  {what}: the box is still {load:.0%} of a CPU busy with other work; measuring anyway",
                  flush=True)
            return
        if not said:
            print(f"  {what}: waiting for other work on the box ({load:.0%} of a CPU) to end", flush=True)
            said = True


def measure_once(ctx: Context, server: Server, peer: Peer, workload: Workload, port: int,
                 env: dict[str, str], session: Session | None, login_as: Session | None = None) -> Result:
    route = workload.paths[route_name(peer)]
    path = route.format(file=session.file if session else "")
    result = Result(peer.name, workload.name, f"{workload.method} {route.format(file='<id>')}")
    url = f"http://{HOST}:{port}{path}"
    script = (BENCH / "wrk" if workload.own else ctx.shared / "wrk") / workload.script
    stem = f"{peer.name}-{workload.name}"
    wait_quiet(ctx, f"{workload.name} {path}")
    if ctx.args.warmup > 0:
        wrk(ctx, url, script, env, ctx.args.warmup, ctx.logs / f"{stem}-warmup.txt")
    workers, tree = server.workers(port), server.tree()
    if ctx.redis is not None and peer.uses_throwaway_redis(ctx):
        tree += ctx.redis.tree()
    tree += peer.own_servers(ctx)
    before, before_all, before_wrk, before_busy = cpu_seconds(workers), sum(cpu_seconds(tree)), wrk_cpu(), busy()
    sampler = threading.Timer(ctx.args.duration / 2, lambda: result.worker_conns.extend(connections(workers, port)))
    sampler.start()
    logins = LoginLoad(port, login_as, workload.logins) if workload.logins and login_as else None
    if logins is not None:
        logins.start()
    try:
        fields = wrk(ctx, url, script, env, ctx.args.duration, ctx.logs / f"{stem}.txt")
    finally:
        sampler.cancel()
        sampler.join()
        if logins is not None:
            logins.stop(result)
    after, after_all, after_wrk, after_busy = cpu_seconds(workers), sum(cpu_seconds(tree)), wrk_cpu(), busy()
    result.worker_cpu_s = [round(b - a, 2) for a, b in zip(before, after, strict=True)]
    result.other_cpu_s = max(0.0, round(after_all - before_all - sum(result.worker_cpu_s), 2))
    result.wrk_cpu_s = round(after_wrk - before_wrk, 2)
    result.foreign_cpu_s = max(0.0, round(after_busy - before_busy - (after_all - before_all) - result.wrk_cpu_s, 2))
    result.rps, result.p50_ms, result.p99_ms = float(fields[3]), float(fields[4]), float(fields[5])
    result.non2xx, result.sock_errors, result.requests = int(fields[6]), int(fields[7]), int(fields[8])
    return result


def measure(ctx: Context, server: Server, peer: Peer, workload: Workload, port: int,
            session: Session | None, login_as: Session | None = None) -> Result:
    """One workload on one peer; measured again (up to --retries times) when other work on the
    box took more than --max-foreign of the machine's CPU time during the run."""
    env = {"PEER": peer.name, "WORKLOAD": workload.name, "COOKIE_NAME": peer.cookie_name}
    if session is not None:
        env |= {"COOKIE": session.cookie, "CSRF": session.csrf}
    limit = ctx.args.max_foreign * ctx.args.duration * (os.cpu_count() or 1)
    best: Result | None = None
    for attempt in range(ctx.args.retries + 1):
        result = measure_once(ctx, server, peer, workload, port, env, session, login_as)
        if best is None or result.foreign_cpu_s < best.foreign_cpu_s:
            best = result
        if result.foreign_cpu_s <= limit:
            break
        if attempt < ctx.args.retries:
            print(f"  {workload.name}: {result.rps:,.0f} req/s, but other work took {result.foreign_cpu_s:.1f} "
                  f"CPU s during the run: again", flush=True)
    assert best is not None
    return best


def run_peer(ctx: Context, peer: Peer, workloads: list[Workload]) -> tuple[list[Result], dict[str, Any]]:
    peer.prepare(ctx)
    port = free_port()
    argv, env, cwd = peer.command(ctx, port)
    base = f"http://{HOST}:{port}"
    results: list[Result] = []
    memory: dict[str, Any] = {}
    print(f"{peer.name}: starting on {base}", flush=True)
    with running(peer.name, argv, env, cwd, ctx.logs / f"{peer.name}.log",
                 lambda: http_ok(base + peer.ready_path)) as server:
        session: Session | None = None
        for workload in workloads:
            try:
                if workload.session and session is None:
                    session = peer.login(base)
                    if any("{file}" in w.paths.get(route_name(peer), "") for w in workloads):
                        peer.upload(base, session)
                # the login load logs another user in: the sessions it makes (lorebase keeps 100 a
                # user) must not end the one wrk uses
                login_as = peer.login(base) if workload.logins else None
                if workload.items and session is not None:
                    peer.check_list(base, workload.paths[route_name(peer)], session, workload.items)
                result = measure(ctx, server, peer, workload, port, session, login_as)
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as error:
                result = Result(peer.name, workload.name, f"{workload.method} {workload.paths[route_name(peer)]}",
                                error=str(error))
            results.append(result)
            print(f"  {workload.name} {result.route}: " + (f"error: {result.error}" if result.error else
                  f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                  f"non-2xx {result.non2xx}, conns {result.worker_conns}, CPU s: workers {result.worker_cpu_s}, "
                  f"other {result.other_cpu_s}, wrk {result.wrk_cpu_s}, foreign {result.foreign_cpu_s}") +
                  (f"; logins {result.login_rps:.1f}/s, p50 {result.login_p50_ms} ms, p99 {result.login_p99_ms} ms, "
                   f"errors {result.login_errors}" if workload.logins and not result.error else ""), flush=True)
        for p in server.workers(port):  # after the load
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                memory.setdefault("rss_mb", []).append(round(info.rss / 2**20, 1))
                memory.setdefault("uss_mb", []).append(round(info.uss / 2**20, 1))
    return results, memory


@contextlib.contextmanager
def throwaway_redis(ctx: Context) -> Iterator[Server]:
    """redis-server on a free loopback port, data in the run's temp dir, no persistence."""
    port = free_port()
    data = ctx.tmp / "redis"
    data.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(data), "--daemonize", "no", "--protected-mode", "yes"]
    with running("redis", argv, {}, data, ctx.logs / "redis.log", lambda: redis_ok(port)) as server:
        ctx.redis, ctx.redis_url = server, f"redis://{HOST}:{port}"
        yield server


# -- report ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    def version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            found = re.search(r"\d+\.\d+[\w.+-]*", done.stdout or done.stderr)
            return found.group(0) if found else "?"
        return "-"

    import httptools
    import uvicorn
    import uvloop

    express = WORK / "express" / "node_modules" / "express" / "package.json"
    granian = granian_binary()
    return {
        "python": platform.python_version(), "uvicorn": uvicorn.__version__, "httptools": httptools.__version__,
        "uvloop": uvloop.__version__, "node": version(["node", "--version"]),
        "express": json.loads(express.read_text())["version"] if express.exists() else "-",
        "redis": version(["redis-server", "--version"]), "wrk": version(["wrk", "--version"]),
        "granian": version([granian, "--version"]) if granian else "-",
    }


def machine() -> dict[str, Any]:
    model = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def table(header: list[str], rows: list[list[str]], right: int) -> str:
    """A Markdown table; columns from index `right` on are right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i >= right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i >= right else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def cpu_per_request(r: Result) -> float:
    """The peer's CPU time (workers and other) per request, in µs: its efficiency, whatever
    share of the cores it won from wrk."""
    return (sum(r.worker_cpu_s) + r.other_cpu_s) / r.requests * 1e6 if r.requests else 0.0


def report(results: list[Result], memory: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
           f"{args.warmup} s warm-up each, on {HOST}; the fastest of {args.rounds} round(s)\n"]
    seen = {r.peer for r in results}
    out += [f"- {p.name}: {p.about}" for p in PEERS if p.name in seen]
    if args.shared_redis:
        out.append("- (--shared-redis: lorebase used the throwaway TCP Redis, not its embedded one)")
    out.append("")
    rounds: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        rounds.setdefault((r.peer, r.workload), []).append(r)
    # of several rounds, the fastest: other work on a shared box only ever takes throughput away
    best = {key: max(runs, key=lambda r: (not r.error, r.rps)) for key, runs in rounds.items()}
    several = any(len(runs) > 1 for runs in rounds.values())
    rows = []
    for key, r in best.items():
        row = [r.peer, r.workload, r.route]
        if r.error:
            row += ["error", *[""] * 10]
        else:
            row += [f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.non2xx}", f"{r.sock_errors}",
                    "/".join(map(str, r.worker_conns)), "/".join(f"{c:.1f}" for c in r.worker_cpu_s),
                    f"{r.other_cpu_s:.1f}", f"{r.wrk_cpu_s:.1f}", f"{r.foreign_cpu_s:.1f}",
                    f"{cpu_per_request(r):.1f}"]
        if several:
            row.append(" ".join("err" if x.error else f"{x.rps / 1000:.1f}k" for x in rounds[key]))
        rows.append(row)
    out.append(table(["peer", "workload", "route", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err",
                      "conns", "CPU s: workers", "other", "wrk", "foreign", "CPU µs/req",
                      *(["req/s each round"] if several else [])], rows, right=3))
    by = {key: r for key, r in best.items() if not r.error}
    ratio_rows = [[text, f"{by[num].rps:,.0f} / {by[den].rps:,.0f}", f"{by[num].rps / by[den].rps:.2f}×"]
                  for text, num, den in RATIOS if num in by and den in by and by[den].rps]
    if ratio_rows:
        out += ["", table(["ratio of req/s", "req/s", "ratio"], ratio_rows, right=1)]
    login_rows = [[r.peer, f"{by[(r.peer, 'W2')].rps:,.0f}" if (r.peer, "W2") in by else "-",
                   f"{by[(r.peer, 'W2')].p99_ms:.2f}" if (r.peer, "W2") in by else "-",
                   f"{r.rps:,.0f}", f"{r.p99_ms:.2f}", f"{r.login_rps:.1f}", f"{r.login_p50_ms:.1f}",
                   f"{r.login_p99_ms:.1f}", f"{r.login_errors}"]
                  for r in by.values() if r.workload == "W2+login"]
    if login_rows:
        out += ["", table(["peer", "W2 alone req/s", "p99 ms", f"W2 with {LOGINS} login conns req/s", "p99 ms",
                           "logins/s", "login p50 ms", "login p99 ms", "login errors"], login_rows, right=1)]
    download_rows = [[r.peer, r.route, f"{r.rps:,.0f}", f"{r.rps * DOWNLOAD_SIZE / 2**20:,.0f}", f"{r.p99_ms:.2f}"]
                     for r in by.values() if r.workload == "D64"]
    if download_rows:
        out += ["", table(["peer", f"download of {DOWNLOAD_SIZE // 1024} KiB", "req/s", "MiB/s", "p99 ms"],
                          download_rows, right=2)]
    mem_rows = [[peer, " ".join(f"{x:.1f}" for x in m.get("rss_mb", [])),
                 " ".join(f"{x:.1f}" for x in m.get("uss_mb", []))] for peer, m in memory.items()]
    if mem_rows:
        out += ["", table(["workers after the load", "RSS MB each", "USS MB each"], mem_rows, right=1)]
    errors = [f"- {r.peer} {r.workload}: {r.error}" for r in results if r.error]
    if errors:
        out += ["", "errors:", *errors]
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------


def names(values: list[str] | None, known: list[str], what: str) -> list[str] | None:
    if not values:
        return None
    chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="whole seconds of each measured wrk run (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="whole seconds of the wrk warm-up before each (default 3)")
    p.add_argument("--only", action="append", metavar="PEER",
                   help=f"run only this peer (repeat or comma-separate): {', '.join(p.name for p in PEERS)}")
    p.add_argument("--workload", action="append", metavar="NAME",
                   help=f"run only these workloads: {', '.join(w.name for w in WORKLOADS)} "
                        f"(default: those with default=True)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole sequence this many times, interleaved; the table shows each "
                        "measurement's fastest round (default 1)")
    p.add_argument("--quiet-wait", type=int, default=30, metavar="S",
                   help="before each run, wait up to S seconds for other work on the box to stop (default 30)")
    p.add_argument("--max-foreign", type=float, default=0.05, metavar="F",
                   help="measure again when other work took more than this share of the box's CPU time "
                        "during a run (default 0.05)")
    p.add_argument("--retries", type=int, default=2, help="how many times to measure again (default 2)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--base", type=Path, default=None, metavar="PATH",
                   help="also run lorebase from this checkout as the peer lorebase-base (the code before a change)")
    p.add_argument("--shared-redis", action="store_true",
                   help="point lorebase at the throwaway TCP Redis express uses, not its embedded one")
    p.add_argument("--shared", type=Path, default=SHARED, help=f"the seed's bench folder (default {SHARED})")
    args = p.parse_args(argv)

    only = names(args.only, [p.name for p in PEERS], "peer")
    wanted = names(args.workload, [w.name for w in WORKLOADS], "workload")
    workloads = [w for w in WORKLOADS if (w.name in wanted if wanted else w.default)]
    peers = [p for p in PEERS if (only is None or p.name in only) and any(route_name(p) in w.paths for w in workloads)]
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install -y wrk redis-server)")

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    WORK.mkdir(exist_ok=True)
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    meta: dict[str, Any] = {"date": started, "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    results: list[Result] = []
    memory: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="lorebase-bench-") as tmp, contextlib.ExitStack() as stack:
            ctx = Context(args, args.shared, Path(tmp), logs)
            stack.callback(lambda: [made.stop() for made in ctx.topologies.values()])
            if any(isinstance(p, Express) for p in peers) or args.shared_redis:
                stack.enter_context(throwaway_redis(ctx))
            runnable = []
            for peer in peers:
                reason = peer.skip_reason(ctx)
                if reason:
                    skipped[peer.name] = reason
                    print(f"{peer.name}: skipped: {reason}", flush=True)
                else:
                    runnable.append(peer)
            for round_ in range(1, args.rounds + 1):
                if args.rounds > 1:
                    print(f"-- round {round_} of {args.rounds}", flush=True)
                # every other round in the reverse order: a peer that always goes first (a cool
                # box, a fresh page cache) or last would be favoured by its place, not its code
                for peer in (runnable if round_ % 2 else runnable[::-1]):
                    mine = [w for w in workloads if route_name(peer) in w.paths]
                    try:
                        peer_results, memory[peer.name] = run_peer(ctx, peer, mine)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                        skipped[peer.name] = f"failed: {error}"
                        print(f"{peer.name}: failed: {error}", flush=True)
                        continue
                    results += peer_results
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    meta["versions"] = versions()
    text = report(results, memory, args)
    print(f"\n## {started}, {meta['machine']['cpus']} cores ({meta['machine']['cpu']}), "
          f"load average at start {meta['machine']['loadavg_at_start']}\n")
    print(text)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print("\n" + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    path.write_text(json.dumps({**meta, "results": [asdict(r) for r in results], "memory": memory,
                                "skipped": skipped, "report": text}, indent=2) + "\n")
    print(f"saved {path.relative_to(ROOT)}; wrk output and server logs in {logs.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
