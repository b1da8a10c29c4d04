"""Helpers shared by the end-to-end tests: client addresses, JSON posts, the shape of an
error reply, and the processes of a running lorebase as the OS sees them."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import psutil

from .lore import Lorebase, wait_for

JSON_TYPE = {"content-type": "application/json"}

_hosts = itertools.count(1)


def doing(db: Any, keys: dict[str, str]) -> int:
    """How many jobs of a queue (tasks.queue.names / durable) are being run: in any of its doing
    lists."""
    from lorebase.tasks.queue import doing_lists

    return sum(int(db.llen(key)) for key in doing_lists(db, keys))


def client_ip() -> str:
    """A fresh client address (TEST-NET-3), so rate limits per IP never leak between tests.
    The shared server trusts 127.0.0.1 as a proxy, so X-Real-IP speaks for the client."""
    n = next(_hosts)
    return f"203.0.{113 + n // 250}.{n % 250 + 1}"


def post_json(client: httpx.Client, path: str, body: bytes | Any, ip: str | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
    """POST raw bytes (or a value to encode) as application/json, from `ip`."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = dict(JSON_TYPE)
    sent["x-real-ip"] = ip or client_ip()
    sent.update(headers or {})
    return client.post(path, content=content, headers=sent)


def assert_error(response: httpx.Response, status: int, code: str, path: str | None = None) -> dict[str, Any]:
    """The reply is `status` with the JSON body {"error": code} (plus "path" when given)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("error") == code, body
    shown = {k: v for k, v in body.items() if k != "message"}  # words a reply may add
    if path is None:
        assert set(shown) == {"error"}, body
    else:
        assert shown == {"error": code, "path": path}, body
    return body


def assert_healthy(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"redis": "ok"}


def stream_entries(lore: Lorebase) -> list[dict[str, Any]]:
    """The entries of the Redis stream `log`, each one's `json` field parsed."""
    return [json.loads(fields["json"]) for _, fields in lore.redis().xrange("log")]


def find_event(entries: list[dict[str, Any]], ev: str, **fields: Any) -> dict[str, Any] | None:
    for entry in entries:
        if entry.get("ev") == ev and all(entry.get(k) == v for k, v in fields.items()):
            return entry
    return None


def wait_event(lore: Lorebase, ev: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The first log line of event `ev` with these field values, once it is written."""
    return wait_for(lambda: find_event(lore.events(ev), ev, **fields), timeout, 0.02, f"event {ev} {fields}")


def wait_stream_event(lore: Lorebase, ev: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The first entry of the stream `log` of event `ev` with these field values."""
    return wait_for(lambda: find_event(stream_entries(lore), ev, **fields), timeout, 0.02,
                    f"stream entry {ev} {fields}")


def connection_per_worker(server: Lorebase) -> list[httpx.Client]:
    """Keep-alive connections, opened until two are served by different workers (each
    probe reports an error under an address of its own, and the stream names the pid)."""
    found: dict[int, httpx.Client] = {}
    spare = []
    for n in range(40):
        conn = httpx.Client(base_url=server.url, timeout=10)
        probe = client_ip()
        assert post_json(conn, "/error", {"message": f"probe {n}"}, probe).status_code == 200
        pid = wait_stream_event(server, "client error", ip=probe)["pid"]
        if pid in found:
            spare.append(conn)
        else:
            found[pid] = conn
        if len(found) == 2:
            break
    for conn in spare:
        conn.close()
    assert len(found) == 2, f"40 connections all landed on worker(s) {sorted(found)}"
    return list(found.values())


# -- processes --------------------------------------------------------------------------


def master(lore: Lorebase) -> psutil.Process:
    assert lore.proc is not None
    return psutil.Process(lore.proc.pid)


def redis_pid(lore: Lorebase) -> int:
    """The embedded redis-server's pid, from the pidfile it writes."""
    return int((lore.data_dir / "redis" / "redis.pid").read_text().strip())


def tasks_pid(lore: Lorebase) -> int:
    """The pid of the tasks process (`lorebase: tasks <env>`; a killed one not yet reaped is not it)."""
    found = []
    for child in master(lore).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and " ".join(child.cmdline()).startswith("lorebase: tasks"):
                found.append(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    [pid] = found
    return int(pid)


def worker_pids(lore: Lorebase) -> set[int]:
    """The master's children that serve HTTP (named `lorebase: worker<N> <env>`)."""
    found = set()
    for child in master(lore).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and " ".join(child.cmdline()).startswith("lorebase: worker"):
                found.add(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def wait_workers(lore: Lorebase, count: int, timeout: float = 15.0) -> set[int]:
    """The worker pids, once there are exactly `count` of them."""
    def ready() -> set[int] | None:
        pids = worker_pids(lore)
        return pids if len(pids) == count else None

    return wait_for(ready, timeout, 0.05, f"{count} workers")


def gone(pid: int) -> bool:
    """The process has exited (a zombie left for its parent to reap counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
