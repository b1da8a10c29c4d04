"""GET /health with an external Redis (REDIS_URL) that the test stops and starts again:
503 fast while it is down or paused, never a hang, and 200 again once it is back, without
restarting lorebase."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from .lore import Lorebase, RedisServer, wait_for
from .support import assert_error, wait_event, worker_pids

FAST = 1.5  # seconds: REDIS_TIMEOUT (1 s) plus a margin for a loaded machine
TRIES = 6


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Lorebase]]:
    base = tmp_path_factory.mktemp("external")
    redis = RedisServer(base / "redis").start()
    lore = Lorebase(base / "data", REDIS_URL=redis.url)
    try:
        lore.start()
        yield redis, lore
        assert lore.stop() == 0
    finally:
        lore.stop()
        redis.stop()


def timed_health(lore: Lorebase) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = httpx.get(lore.url + "/health", timeout=10)  # far above FAST: a hang shows as a slow reply
    return r, time.monotonic() - start


def assert_down_fast(lore: Lorebase, tries: int = TRIES) -> None:
    for _ in range(tries):
        r, seconds = timed_health(lore)
        assert_error(r, 503, "redis")
        assert seconds < FAST, f"/health took {seconds:.2f}s with Redis down"


def test_health_is_200_with_redis_ok(external):
    _, lore = external
    r = httpx.get(lore.url + "/health", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"redis": "ok"}
    assert not (lore.data_dir / "redis").exists()  # no embedded Redis when REDIS_URL is set


def test_lorebase_writes_to_the_external_redis(external):
    redis, lore = external
    assert httpx.get(lore.url + "/written-to-external-redis", timeout=5).status_code == 404
    wait_for(lambda: any("/written-to-external-redis" in f["json"] for _, f in redis.client().xrange("log")),
             what="the reply in the external Redis's stream")


def test_health_is_503_fast_while_redis_is_killed_and_200_after_it_is_back(external):
    redis, lore = external
    master_pid = lore.proc.pid
    workers = worker_pids(lore)
    redis.stop()  # kill -9
    try:
        assert_down_fast(lore)
        wait_event(lore, "redis down", role="master")  # the master notices on its own, too
    finally:
        redis.start()  # the same port
    wait_for(lambda: httpx.get(lore.url + "/health", timeout=5).status_code == 200, 10, 0.05, "/health 200")
    wait_event(lore, "redis up", role="master")
    assert lore.proc.pid == master_pid and lore.proc.poll() is None
    assert worker_pids(lore) == workers  # recovered without restarting anything


def test_health_is_503_fast_while_redis_is_paused_and_200_after_it_resumes(external):
    redis, lore = external
    assert redis.proc is not None
    workers = worker_pids(lore)
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        assert_down_fast(lore, 3)  # each waits out REDIS_TIMEOUT
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    wait_for(lambda: httpx.get(lore.url + "/health", timeout=5).status_code == 200, 10, 0.05, "/health 200")
    assert worker_pids(lore) == workers


def test_other_routes_still_answer_while_redis_is_down(external):
    redis, lore = external
    redis.stop()
    try:
        assert_down_fast(lore)
        r = httpx.get(lore.url + "/ping", timeout=5)
        assert r.status_code == 200 and r.json() == {"pong": True}
        r = httpx.get(lore.url + "/nope", timeout=5)
        assert_error(r, 404, "notfound")
    finally:
        redis.start()
    wait_for(lambda: httpx.get(lore.url + "/health", timeout=5).status_code == 200, 10, 0.05, "/health 200")
