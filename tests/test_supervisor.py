"""The supervisor under load: connections spread evenly over the workers, a SIGHUP fails no
request, a worker killed with -9 costs only what it had in flight, a stuck worker is killed
and replaced, and SIGTERM drains what is in flight, exits 0 and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from .identity_support import Users, dedicated
from .lore import ROOT, Lorebase, wait_for
from .support import connection_per_worker, gone, master, redis_pid, wait_event, wait_workers, worker_pids


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "supervisor", WORKER_TIMEOUT="2") as lore:
        yield lore


class Load:
    """Threads sending requests until stopped: `keepalive` of them on one connection each,
    `fresh` of them on a new connection every time. Every outcome is recorded."""

    def __init__(self, lore: Lorebase, keepalive: int = 6, fresh: int = 2,
                 request: Callable[[httpx.Client, int], None] | None = None):
        self.lore = lore
        self.request = request or (lambda client, n: _expect(client.get("/ping"), 200))
        self.ok = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(True,)) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._run, args=(False,)) for _ in range(fresh)]
        self.lock = threading.Lock()

    def _run(self, keepalive: bool) -> None:
        client = httpx.Client(base_url=self.lore.url, timeout=10) if keepalive else None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if client is not None:
                    self.request(client, n)
                else:
                    with httpx.Client(base_url=self.lore.url, timeout=10) as once:
                        self.request(once, n)
                with self.lock:
                    self.ok += 1
            except Exception as error:
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
        if client is not None:
            client.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        wait_for(lambda: self.ok >= 50, 20, 0.05, "the load to run")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise AssertionError(f"{r.status_code} {r.text[:200]}")


def connections_per_worker(lore: Lorebase) -> list[int]:
    counts = []
    for pid in worker_pids(lore):
        conns = psutil.Process(pid).net_connections("tcp")
        counts.append(sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == lore.port))
    return sorted(counts)


def test_sixty_four_connections_are_spread_evenly(lore):
    for conn in connection_per_worker(lore):  # both workers serving (a new one waits for its first ping)
        conn.close()
    sockets = []
    try:
        for _ in range(64):  # opened at once, as wrk -c64 does
            s = socket.create_connection(("127.0.0.1", lore.port))
            sockets.append(s)
        for s in sockets:  # each makes one request and stays open
            s.sendall(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        for s in sockets:
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        counts = wait_for(lambda: (lambda c: c if sum(c) == 64 else None)(connections_per_worker(lore)), 10, 0.1,
                          "the 64 connections held")
        assert min(counts) >= 64 * 0.4, counts
    finally:
        for s in sockets:
            s.close()


def test_sighup_under_load_fails_no_request(lore):
    before = wait_workers(lore, 2)
    with Load(lore) as load:
        os.kill(lore.proc.pid, signal.SIGHUP)
        wait_event(lore, "workers restarted", timeout=30)
        served = load.ok
        wait_for(lambda: load.ok > served + 50, 20, 0.05, "requests after the restart")
    assert not load.failures, load.failures[:5]
    after = wait_workers(lore, 2)
    assert not before & after
    wait_for(lambda: all(gone(pid) for pid in before), 15, 0.05, "the old workers to finish and exit")


def test_a_worker_killed_under_load_costs_only_its_requests_in_flight(lore, mail):
    """Logged-in users read their own notes nonstop; one worker is killed with -9. Failures are
    at most the connections it held; no reply is ever another user's; a new worker is serving
    within a second of the exit being noticed."""
    wait_workers(lore, 2)
    with Users(lore, mail) as made:
        apis = []
        for i in range(4):
            api = made.session(made.new(f"sv_reader{i}"))
            assert api.post("/notes", {"text": f"note of sv_reader{i}"}, csrf=True).status_code == 200
            apis.append(api)
        mixups: list[str] = []

        def read(client: httpx.Client, n: int) -> None:
            i = n % 4
            r = client.get("/notes", headers={"cookie": f"lorebase={apis[i].cookie}"})
            _expect(r, 200)
            texts = [note["text"] for note in r.json()]
            if texts != [f"note of sv_reader{i}"]:
                mixups.append(f"sv_reader{i} got {texts}")

        victim = sorted(worker_pids(lore))[0]
        with Load(lore, keepalive=6, fresh=2, request=read) as load:
            os.kill(victim, signal.SIGKILL)
            wait_event(lore, "worker exit", worker_pid=victim)
            replaced = wait_workers(lore, 2, timeout=5)
            assert victim not in replaced
            served = load.ok
            wait_for(lambda: load.ok > served + 50, 20, 0.05, "requests after the kill")
        assert not mixups, mixups[:3]
        assert len(load.failures) <= 6 + 2, load.failures  # at most the connections it held


def test_a_stuck_worker_is_killed_and_replaced(lore):
    """A worker whose event loop stops (SIGSTOP stands in for an endless loop in a handler)
    stops pinging: within WORKER_TIMEOUT it is killed, notified `worker hung`, and replaced;
    meanwhile the master stops handing it connections (at most one is lost with it)."""
    stuck = sorted(wait_workers(lore, 2))[0]
    os.kill(stuck, signal.SIGSTOP)
    failures = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                with httpx.Client(base_url=lore.url, timeout=4) as client:
                    _expect(client.get("/ping"), 200)
            except (httpx.HTTPError, AssertionError):
                failures += 1
        line = wait_event(lore, "worker hung", worker_pid=stuck, timeout=10)
        assert line["role"] == "master"
        wait_for(lambda: gone(stuck), 10, 0.05, "the stuck worker to be killed")
    finally:
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert failures <= 1
    assert stuck not in wait_workers(lore, 2)
    assert httpx.get(lore.url + "/ping", timeout=5).status_code == 200


def test_sigterm_under_load_drains_in_flight_requests_and_exits_0(tmp_path: Path, mail):
    """Uploads already sending their bodies when SIGTERM comes finish with 200; the master
    exits 0 and no process of its is left."""
    instance = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL=mail.url)
    instance.start()
    children = {p.pid for p in master(instance).children(recursive=True)}
    with Users(instance, mail) as made:
        api = made.session(made.new("sv_drain"))
        results: list[int | str] = []
        started = threading.Barrier(5)

        def slow_upload() -> None:
            boundary = "sv-drain"
            head = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"d.bin\"\r\n"
                    f"content-type: application/octet-stream\r\n\r\n").encode()
            tail = f"\r\n--{boundary}--\r\n".encode()

            def body() -> Iterator[bytes]:
                yield head + b"a" * 1000
                started.wait(10)
                time.sleep(1.0)  # SIGTERM arrives meanwhile
                yield b"b" * 1000 + tail

            try:
                r = httpx.post(instance.url + "/files", content=body(), timeout=30,
                               headers={"content-type": f"multipart/form-data; boundary={boundary}",
                                        "x-csrf-token": api.csrf or "", "cookie": f"lorebase={api.cookie}"})
                results.append(r.status_code)
            except httpx.HTTPError as error:
                results.append(type(error).__name__)

        threads = [threading.Thread(target=slow_upload) for _ in range(4)]
        for thread in threads:
            thread.start()
        started.wait(10)
        time.sleep(0.3)
        os.kill(instance.proc.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        for user in made.made:  # the server is gone with its data dir: nothing to clean up through it
            user.gone = True
    assert instance.proc.wait(30) == 0
    assert results == [200] * 4, results
    assert all(gone(pid) for pid in children)


def test_sigterm_during_a_rolling_restart_stops_cleanly(tmp_path: Path, mail):
    """TERM right after HUP, while the workers roll: the master still exits 0 and leaves no
    process of its behind (old workers, new ones, the tasks process, Redis)."""
    instance = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL=mail.url)
    instance.start()
    wait_workers(instance, 2)
    os.kill(instance.proc.pid, signal.SIGHUP)
    wait_event(instance, "workers restarting")
    wait_for(lambda: len(worker_pids(instance)) >= 3, 10, 0.01, "new workers beside the old two")
    children = {p.pid for p in master(instance).children(recursive=True)}
    os.kill(instance.proc.pid, signal.SIGTERM)
    assert instance.proc.wait(30) == 0
    assert all(gone(pid) for pid in children)
    assert "workers restarted" not in instance.log_text()  # it stopped mid-way, as asked


def test_sighup_loads_the_code_on_disk_with_no_request_failed(tmp_path: Path, mail):
    """A release changes the code under a running lorebase (here: its version, which the
    OpenAPI document shows); SIGHUP under load: the master re-executes itself (same pid, same
    embedded Redis, same data), the new workers serve the new code, no request fails."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "lorebase", tree / "lorebase", ignore=shutil.ignore_patterns("__pycache__"))
    instance = Lorebase(tmp_path / "data", root=tree, TRUSTED_PROXIES="127.0.0.1", MAIL_URL=mail.url)
    instance.start()
    try:
        def version() -> str:
            return str(httpx.get(instance.url + "/openapi.json", timeout=10).json()["info"]["version"])

        assert version() == "0.1.0"
        redis_before, master_pid = redis_pid(instance), instance.proc.pid
        instance.redis().set("sv_kept", "1")
        old = wait_workers(instance, 2)
        init = tree / "lorebase" / "__init__.py"
        init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.1-next"'))
        with Load(instance) as load:
            os.kill(master_pid, signal.SIGHUP)
            wait_event(instance, "workers restarted", timeout=30)
            served = load.ok
            wait_for(lambda: load.ok > served + 50, 20, 0.05, "requests after the re-exec")
        assert not load.failures, load.failures[:5]
        assert version() == "0.1.1-next"
        assert instance.proc.pid == master_pid and psutil.pid_exists(master_pid)
        assert redis_pid(instance) == redis_before and instance.redis().get("sv_kept") == "1"
        wait_for(lambda: all(gone(pid) for pid in old), 15, 0.05, "the old workers to exit")
        assert not old & wait_workers(instance, 2)
    finally:
        assert instance.stop() == 0


def test_sighup_refuses_code_that_cannot_start_and_the_old_code_serves_on(tmp_path: Path, mail):
    """A release whose app cannot even be built (an import error): SIGHUP is refused with
    `reexec failed`, and the same master and workers go on serving the old code."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "lorebase", tree / "lorebase", ignore=shutil.ignore_patterns("__pycache__"))
    instance = Lorebase(tmp_path / "data", root=tree, TRUSTED_PROXIES="127.0.0.1", MAIL_URL=mail.url)
    instance.start()
    try:
        workers = wait_workers(instance, 2)
        app = tree / "lorebase" / "app.py"
        app.write_text(app.read_text() + "\nraise RuntimeError('a release that cannot start')\n")
        os.kill(instance.proc.pid, signal.SIGHUP)
        line = wait_event(instance, "reexec failed", timeout=60)
        assert "a release that cannot start" in line["error"]
        assert httpx.get(instance.url + "/health", timeout=10).status_code == 200
        assert worker_pids(instance) == workers  # nothing was replaced
    finally:
        assert instance.stop() == 0
