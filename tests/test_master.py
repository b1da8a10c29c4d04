"""The master process: its command line, the workers and the embedded redis-server it
supervises (restarted and notified when they die), signals, and a clean stop that leaves
no process behind and keeps Redis's data for the next start."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from .lore import ROOT, Lorebase, wait_for
from .support import (
    assert_healthy,
    gone,
    master,
    redis_pid,
    wait_event,
    wait_stream_event,
    wait_workers,
    worker_pids,
)


@pytest.fixture(scope="module")
def lore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lorebase]:
    """A lorebase of this module's own: the tests kill its processes."""
    instance = Lorebase(tmp_path_factory.mktemp("master") / "data")
    instance.start()
    yield instance
    assert instance.stop() == 0


def health(lore: Lorebase) -> int:
    return httpx.get(lore.url + "/health", timeout=5).status_code


# -- the command -------------------------------------------------------------------------


def test_help_exits_0_and_mentions_serve():
    out = subprocess.run([sys.executable, "-m", "lorebase", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout
    assert "config" in out.stdout


def test_unknown_command_or_environment_exits_non_zero():
    for argv in (["frobnicate"], ["serve", "staging"]):
        out = subprocess.run([sys.executable, "-m", "lorebase", *argv], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode != 0, argv
        assert out.stderr, argv


# -- processes ---------------------------------------------------------------------------


def test_master_runs_two_workers_as_its_children(lore):
    pids = wait_workers(lore, 2)
    for pid in pids:
        process = psutil.Process(pid)
        assert process.ppid() == lore.proc.pid
        assert process.status() != psutil.STATUS_ZOMBIE
    with httpx.Client(base_url=lore.url) as client:
        assert_healthy(client)


def test_processes_are_named_by_role(lore):
    wait_workers(lore, 2)
    assert " ".join(master(lore).cmdline()).strip() == "lorebase: master dev"
    titles = sorted(" ".join(child.cmdline()).strip() for child in master(lore).children()
                    if child.pid != redis_pid(lore))
    assert titles == ["lorebase: tasks dev", "lorebase: worker0 dev", "lorebase: worker1 dev"]


def test_embedded_redis_is_a_child_of_the_master(lore):
    process = psutil.Process(redis_pid(lore))
    assert process.ppid() == lore.proc.pid
    assert "redis-server" in process.name()


def test_embedded_redis_is_configured_for_durability_and_no_tcp(server):
    r = server.redis()
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert r.config_get("port") == {"port": "0"}
    assert r.config_get("save")["save"] != ""  # RDB snapshots kept too
    assert psutil.Process(redis_pid(server)).net_connections(kind="inet") == []


def test_embedded_redis_socket_and_dir_are_private(server):
    redis_dir = server.data_dir / "redis"
    assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((redis_dir / "redis.sock").stat().st_mode) & 0o077 == 0


# -- a worker dies -----------------------------------------------------------------------


def test_killed_worker_is_notified_and_a_new_worker_serves(lore):
    before = wait_workers(lore, 2)
    victim, survivor = sorted(before)
    os.kill(victim, signal.SIGKILL)

    line = wait_event(lore, "worker exit", worker_pid=victim)
    assert line["role"] == "master"
    assert line["code"] == -signal.SIGKILL
    wait_stream_event(lore, "worker exit", worker_pid=victim)

    def replaced() -> set[int] | None:
        pids = worker_pids(lore)
        return pids if len(pids) == 2 and victim not in pids else None

    (newcomer,) = wait_for(replaced, 15, 0.05, "a new worker") - {survivor}
    assert psutil.Process(newcomer).ppid() == lore.proc.pid

    def served_by_newcomer() -> bool:  # fresh connections go to both workers in turn
        path = f"/served-by-the-new-worker/{time.monotonic_ns()}"
        assert httpx.get(lore.url + path, timeout=5).status_code == 404
        return wait_event(lore, "reply", path=path)["pid"] == newcomer

    wait_for(served_by_newcomer, 15, 0.05, "a reply from the new worker")


def test_workers_start_as_new_interpreters_without_a_fork_warning(tmp_path: Path, monkeypatch):
    """The master runs threads (the Redis keeper, notify's writer): a fork would copy their locks
    into the child, and Python 3.12+ warns of it (a DeprecationWarning, shown here on purpose).
    Its children are new interpreters instead, at start and when one is replaced. On 3.11 the
    warning does not exist: this test can fail only in the 3.12/3.13 runs of scripts/test."""
    monkeypatch.setenv("PYTHONWARNINGS", "always::DeprecationWarning")
    with Lorebase(tmp_path / "data").running() as lore:
        victim = min(wait_workers(lore, 2))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(pids := worker_pids(lore)) == 2 and victim not in pids, 15, 0.05, "a new worker")
        for pid in worker_pids(lore):
            assert psutil.Process(pid).ppid() == lore.proc.pid
    log = lore.log_text()
    assert "multi-threaded" not in log and "DeprecationWarning" not in log, log[-2000:]


def test_sighup_replaces_every_worker(lore):
    before = wait_workers(lore, 2)
    os.kill(lore.proc.pid, signal.SIGHUP)
    wait_event(lore, "workers restarted")

    def renewed() -> set[int] | None:
        pids = worker_pids(lore)
        return pids if len(pids) == 2 and not pids & before else None

    wait_for(renewed, 15, 0.05, "two new workers")
    # the old ones finish what they hold, then exit
    wait_for(lambda: all(gone(pid) for pid in before), 15, 0.05, "the old workers to exit")
    assert health(lore) == 200


def test_ttin_adds_a_worker_and_ttou_removes_one(lore):
    wait_workers(lore, 2)
    os.kill(lore.proc.pid, signal.SIGTTIN)
    three = wait_workers(lore, 3)
    os.kill(lore.proc.pid, signal.SIGTTOU)
    two = wait_workers(lore, 2)
    assert two < three
    assert health(lore) == 200


# -- the embedded Redis dies -------------------------------------------------------------


def aof_holds(lore: Lorebase, text: str) -> bool:
    """The append-only file on disk has the write (a kill -9 of Redis cannot lose it then)."""
    return any(text.encode() in path.read_bytes() for path in (lore.data_dir / "redis").rglob("*.aof"))


def test_killed_embedded_redis_is_notified_and_restarted(lore):
    old = redis_pid(lore)
    lore.redis().set("test:before-redis-kill", "written before the kill")
    wait_for(lambda: aof_holds(lore, "test:before-redis-kill"), what="the write in the AOF")
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)

    line = wait_event(lore, "redis exit")
    assert line["role"] == "master"
    assert line["code"] == -signal.SIGKILL
    restarted = wait_event(lore, "redis restarted")
    # the master looks every second; a dead Redis must not wait on retries to its own socket
    assert restarted["t"] - killed_at < 3.0, restarted["t"] - killed_at

    def restarted() -> int | None:
        pid = redis_pid(lore)
        return pid if pid != old and not gone(pid) else None

    new = wait_for(restarted, 15, 0.05, "a new redis-server")
    assert psutil.Process(new).ppid() == lore.proc.pid
    wait_for(lambda: health(lore) == 200, 10, 0.05, "/health 200 again")
    wait_stream_event(lore, "redis restarted")  # the master writes to the new Redis
    assert lore.redis().get("test:before-redis-kill") == "written before the kill"
    assert lore.proc.poll() is None


# -- stop and start again ----------------------------------------------------------------


def test_sigterm_exits_0_and_leaves_no_process_behind(tmp_path: Path):
    lore = Lorebase(tmp_path / "data")
    lore.start()
    workers = wait_workers(lore, 2)
    redis = redis_pid(lore)
    family = {p.pid for p in master(lore).children(recursive=True)}
    assert workers | {redis} <= family
    state_file = tmp_path / "data" / "master.json"  # what deploy.sh reads
    wait_for(state_file.exists, 10, what="master.json")
    state = json.loads(state_file.read_text())
    assert state["pid"] == lore.proc.pid and state["workers"] == 2
    assert state["code"] == str(ROOT / "lorebase")

    assert lore.stop() == 0
    assert not (tmp_path / "data" / "master.json").exists()
    left = [pid for pid in family if not gone(pid)]
    assert left == [], f"still running after the master exited: {left}"
    assert [e["signal"] for e in lore.events("stopping")] == ["SIGTERM"]
    assert len(lore.events("stop")) == 1


def test_master_killed_with_sigkill_takes_its_children_along(tmp_path: Path):
    lore = Lorebase(tmp_path / "data")
    lore.start()
    wait_workers(lore, 2)
    family = {p.pid for p in master(lore).children(recursive=True)}
    assert lore.proc is not None
    lore.proc.kill()
    lore.proc.wait(10)
    wait_for(lambda: all(gone(pid) for pid in family), 15, 0.05, "the children of a killed master to exit")


def test_restart_keeps_redis_data(tmp_path: Path):
    lore = Lorebase(tmp_path / "data")
    lore.start()
    try:
        lore.redis().set("test:restart", "kept")
        lore.redis().hset("test:restart:hash", mapping={"a": "1", "b": "2"})
        assert httpx.get(lore.url + "/written-before-restart", timeout=5).status_code == 404
        entry = wait_stream_event(lore, "reply", path="/written-before-restart")
        ids = [i for i, f in lore.redis().xrange("log") if f["json"].find('"/written-before-restart"') >= 0]
        assert len(ids) == 1
        assert lore.stop() == 0

        lore.start()
        r = lore.redis()
        assert r.get("test:restart") == "kept"
        assert r.hgetall("test:restart:hash") == {"a": "1", "b": "2"}
        kept = r.xrange("log", ids[0], ids[0])
        assert len(kept) == 1 and kept[0][1]["json"].find(entry["rid"]) >= 0
        assert len(lore.events("start")) == 2
    finally:
        assert lore.stop() == 0


def test_without_redis_server_installed_it_says_what_to_install(tmp_path: Path):
    """No REDIS_URL and no redis-server on PATH: exit 1 with a sentence naming the package,
    not a bare `[Errno 2]`."""
    env = {**Lorebase(tmp_path / "data").environ(), "PATH": str(tmp_path / "empty-path")}
    done = subprocess.run([sys.executable, "-m", "lorebase", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "apt-get install redis-server" in done.stderr and "REDIS_URL" in done.stderr, done.stderr
    assert "Errno" not in done.stderr
