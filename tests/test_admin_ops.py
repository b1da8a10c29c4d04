"""The admin's operations routes (issue 10): the notify stream searched, paged and tailed; the
stats and beat series for charts; the backups with each task's last result, and "back up now".

One lorebase of its own: ADMINS set, beat sampling every 0.2 s, no scheduled backup (only the
admin's). Everything is read over HTTP as the admin page reads it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .identity_support import Api, Users, assert_error, dedicated
from .lore import Lorebase, wait_for

NODE = socket.gethostname()  # beat's node name
GETS = ["/admin/logs", "/admin/stats", "/admin/beat", "/admin/backups"]


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "adminops", ADMINS="o_root@example.com", BEAT_EVERY="0.2",
                   BACKUP_EVERY="0", LOG_STREAM_MAX="50000") as lore:
        yield lore


@pytest.fixture(scope="module")
def root(lore, mail) -> Iterator[Api]:
    with Users(lore, mail) as made:
        yield made.session(made.new("o_root", verified=True))


def ok(api: Api, path: str, **params: str) -> dict:
    r = api.get(path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""))
    assert r.status_code == 200, (path, params, r.status_code, r.text[:300])
    return r.json()


def misses(lore: Lorebase, paths: list[str]) -> None:
    """Anonymous GETs of paths that do not exist: one `reply` event (404) each, in parallel."""
    def get(chunk: list[str]) -> None:
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            for path in chunk:
                assert client.get(path).status_code == 404

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(get, [paths[i::4] for i in range(4)]))


def marked(api: Api, marker: str, **params: str) -> list[dict]:
    """Every event whose line holds `marker`, newest first, following `next`."""
    out: list[dict] = []
    page = ok(api, "/admin/logs", q=marker, **params)
    out += page["events"]
    while page["next"]:
        page = ok(api, "/admin/logs", q=marker, before=page["next"], **params)
        out += page["events"]
    return out


def test_every_ops_route_refuses_anonymous_and_users_and_serves_admins(lore, mail, root):
    with Api(lore) as anonymous:
        for path in GETS:
            assert_error(anonymous.get(path), 403, "nocookie")
        assert_error(anonymous.post("/admin/backups", {}), 403, "nocookie")
    with Users(lore, mail) as made:
        plain = made.session(made.new("o_plain", verified=True))
        for path in GETS:
            assert_error(plain.get(path), 403, "admin")
        assert_error(plain.post("/admin/backups", {}, csrf=True), 403, "admin")
    for path in GETS:
        assert root.get(path).status_code == 200, path
    assert_error(root.post("/admin/backups", {}), 403, "csrf")  # an admin's POST needs its token too
    assert_error(root.post("/admin/backups", {"csrf": "x" * 43}), 403, "csrf")
    assert not any(name.startswith("20") for name in (lore.data_dir / "backups").glob("*/*")), "no backup ran"


def test_logs_find_a_reply_event_by_path_text_and_by_type_within_a_time_range(lore, root):
    marker = f"FindMe{time.time_ns()}"
    before = int(time.time() * 1000)
    misses(lore, [f"/no-such/{marker}"])
    wait_for(lambda: ok(root, "/admin/logs", q=marker)["events"], 10, 0.05, "the reply event")
    after = int(time.time() * 1000) + 1

    [found] = ok(root, "/admin/logs", q=marker.lower())["events"]  # case-insensitive
    assert found["ev"] == "reply" and found["status"] == 404 and found["error"] == "notfound"
    assert found["path"] == f"/no-such/{marker}"
    assert before <= int(found["id"].split("-")[0]) <= after
    in_range = ok(root, "/admin/logs", type="reply", since=str(before), until=str(after), limit="500")
    assert found["id"] in [e["id"] for e in in_range["events"]]
    assert all(e["ev"] == "reply" for e in in_range["events"])
    assert all(before <= int(e["id"].split("-")[0]) <= after for e in in_range["events"])
    assert ok(root, "/admin/logs", type="reply", q=marker, until=str(before - 1))["events"] == []
    assert ok(root, "/admin/logs", type="reply", q=marker, since=str(after + 1))["events"] == []
    assert ok(root, "/admin/logs", type="repl", q=marker)["events"] == []  # the type is exact
    assert ok(root, "/admin/logs", type="client error", q=marker)["events"] == []


def test_logs_paging_has_no_duplicates_and_misses_nothing_while_events_arrive(lore, root):
    marker = f"Page{time.time_ns()}"
    misses(lore, [f"/paged/{marker}/{i}" for i in range(230)])
    wait_for(lambda: len(marked(root, marker)) == 230, 15, 0.1, "230 events")
    seen: list[dict] = []
    page = ok(root, "/admin/logs", q=marker, limit="50")
    top = page["events"][0]["id"]
    arrived = 0
    while True:
        seen += page["events"]
        misses(lore, [f"/paged/{marker}/new{arrived + i}" for i in range(20)])  # newer than any page
        arrived += 20
        if not page["next"]:
            break
        page = ok(root, "/admin/logs", q=marker, limit="50", before=page["next"])
        assert len(page["events"]) <= 50
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)) == 230, "no duplicates, nothing missed"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))), reverse=True), "newest first"
    assert {e["path"] for e in seen} == {f"/paged/{marker}/{i}" for i in range(230)}
    # the tail picks up what arrived meanwhile, oldest first, each once
    tail: list[dict] = []
    cursor = top

    def poll() -> bool:
        nonlocal cursor
        page = ok(root, "/admin/logs", q=marker, after=cursor)
        tail.extend(page["events"])
        cursor = page["next"]
        return len(tail) >= arrived

    wait_for(poll, 15, 0.1, "the tail")
    assert sorted(e["path"] for e in tail) == sorted(f"/paged/{marker}/new{i}" for i in range(arrived))
    assert len({e["id"] for e in tail}) == len(tail) == arrived
    tail_ids = [tuple(map(int, e["id"].split("-"))) for e in tail]
    assert tail_ids == sorted(tail_ids), "oldest first"
    assert ok(root, "/admin/logs", q=marker, after=cursor) == {"events": [], "next": cursor}


def test_a_search_stops_after_5000_entries_and_says_where_to_go_on(lore, root):
    rare = f"Rare{time.time_ns()}"
    misses(lore, [f"/rare/{rare}"])
    wait_for(lambda: ok(root, "/admin/logs", q=rare)["events"], 10, 0.05, "the rare event")
    misses(lore, [f"/filler/{i}" for i in range(5100)])
    first = ok(root, "/admin/logs", q=rare)
    assert first["events"] == [] and first["next"], first  # 5,000 looked at, none matched
    second = ok(root, "/admin/logs", q=rare, before=first["next"])
    assert [e["path"] for e in second["events"]] == [f"/rare/{rare}"]


def test_logs_refuse_bad_parameters_naming_the_field(root):
    for query, field in [("since=yesterday", "since"), ("until=-1", "until"), ("before=12", "before"),
                         ("after=1-x", "after"), ("limit=0", "limit"), ("limit=501", "limit"),
                         ("since=20&until=10", "until"), ("before=1-0&after=1-0", "after"),
                         ("type=", "type"), ("q=" + "x" * 201, "q"), ("colour=red", "colour"),
                         ("q=a%0Ab", "q")]:
        assert_error(root.get(f"/admin/logs?{query}"), 400, "validation", field)
    for path in ("/admin/stats", "/admin/beat"):
        assert_error(root.get(f"{path}?range=week"), 400, "validation", "range")


def test_logs_answer_ids_at_the_edges_of_the_schema_with_a_page_or_a_400(root):
    """Ids the pattern lets through but Redis refuses (0-0 as an exclusive upper end, the last
    id as an exclusive lower end, parts above 2^64-1) once made a 500."""
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert ok(root, "/admin/logs", before="0-0") == {"events": [], "next": None}
    assert ok(root, "/admin/logs", after=top) == {"events": [], "next": top}
    assert ok(root, "/admin/logs", before=top, limit="1")["events"]
    assert ok(root, "/admin/logs", after="0-0", limit="1")["events"]
    for query, field in [(f"before={2**64}-0", "before"), (f"after=1-{2**64}", "after"),
                         (f"before={'9' * 20}-{'9' * 20}", "before"), (f"after={'9' * 20}-0", "after")]:
        assert_error(root.get(f"/admin/logs?{query}"), 400, "validation", field)


def test_stats_series_have_points_after_requests(lore, root):
    with httpx.Client(base_url=lore.url, timeout=10) as client:
        for _ in range(30):
            assert client.get("/ping").status_code == 200
        assert client.get("/no-such-stat").status_code == 404

    def counted() -> dict | None:
        series = ok(root, "/admin/stats", range="hour")
        pings = series.get("latency_p50|GET /ping", [])
        return series if pings and sum(v for _, v in series["requests"]) >= 31 else None

    hour = wait_for(counted, 10, 0.2, "the stats flush")
    now = time.time()
    assert len(hour["requests"]) == 60
    times = [t for t, _ in hour["requests"]]
    assert all(t % 60 == 0 for t in times) and times == sorted(times)
    assert times[-1] == int(now // 60) * 60 or times[-1] == int(now // 60) * 60 - 60
    assert sum(v for _, v in hour["errors_4xx"]) >= 1
    assert sum(v for _, v in hour["logins"]) >= 1  # the admin's own login
    assert sum(v for _, v in hour["signups"]) >= 1
    for name in ("latency_p50", "latency_p99", "latency_p50|GET /ping", "latency_p99|GET /ping"):
        assert hour[name] and all(0 < v <= 10_000 for _, v in hour[name]), name
    assert all(p50 <= p99 for (_, p50), (_, p99) in zip(hour["latency_p50"], hour["latency_p99"], strict=True))
    day = ok(root, "/admin/stats", range="day")
    assert len(day["requests"]) == 288
    assert all(t % 300 == 0 for t, _ in day["requests"])
    assert sum(v for _, v in day["requests"]) >= sum(v for _, v in hour["requests"])


def test_beat_series_have_points_after_a_sample(lore, root):
    def sampled() -> dict | None:
        series = ok(root, "/admin/beat", range="hour")
        return series if series.get(f"cpu|{NODE}") else None

    hour = wait_for(sampled, 10, 0.2, "a beat sample in the series")
    for what in ("cpu", "cpu_max", "memory", "disk", "load1", "redis_used_memory", "redis_clients"):
        points = hour[f"{what}|{NODE}"]
        assert points and all(t % 60 == 0 for t, _ in points), what
    assert all(0 <= v <= 100 for _, v in hour[f"memory|{NODE}"])
    assert all(v > 0 for _, v in hour[f"redis_used_memory|{NODE}"])
    day = ok(root, "/admin/beat", range="day")
    assert day[f"cpu|{NODE}"] and all(t % 300 == 0 for t, _ in day[f"cpu|{NODE}"])


def test_a_backup_started_by_an_admin_is_listed_with_its_task_result(lore, root):
    assert ok(root, "/admin/backups")["backups"] == []
    started = int(time.time() * 1000)
    r = root.post("/admin/backups", {}, csrf=True)
    assert r.status_code == 202 and r.json() == {"started": True}, r.text
    assert_error(root.post("/admin/backups", {}, csrf=True), 409, "busy")  # asked for, not yet done

    def done() -> dict | None:
        out = ok(root, "/admin/backups")
        return out if out["backups"] and out["tasks"].get("backup", {}).get("ok") else None

    out = wait_for(done, 30, 0.2, "the backup")
    [made] = out["backups"]
    assert set(made) == {"name", "created", "size", "sha256", "keys", "files"}
    assert made["keys"] > 0 and made["size"] > 0 and made["files"] == 0
    result = out["tasks"]["backup"]
    assert result["ok"] is True and result["at"] >= started and result["outcome"].startswith(f"backup {made['name']}")
    assert result["running"] is False and result["requested"] is False
    assert out["tasks"][f"beat|{NODE}"]["ok"] is True  # beat's newest sample
    assert out["tasks"]["check"]["ok"] is True  # the check a tasks process runs at start
    listed = subprocess.run([sys.executable, "-m", "lorebase", "backup", "list"], env=lore.environ(),
                            cwd=lore.root, capture_output=True, text=True, timeout=30)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [made["name"]], listed.stdout
    r = root.post("/admin/backups", {}, csrf=True)  # done: another may start
    assert r.status_code == 202, r.text
    wait_for(lambda: ok(root, "/admin/backups")["tasks"]["backup"]["at"] > result["at"], 30, 0.2,
             "the second backup")


def test_stray_objects_among_the_backups_break_neither_the_screen_nor_the_backup_task(lore, root):
    """A README.json and a planted object in DATA_DIR/backups/dev: the screen answers 200 with
    the real backups only, and a backup started by the admin ends ok (its retention ran)."""
    folder = lore.data_dir / "backups" / "dev"
    folder.mkdir(parents=True, exist_ok=True)
    strays = {"README.json": b'{"what": "backups of lorebase"}\n', "99991231T235959Z.json.sealed": b"planted",
              "20200101T000000Z.json": b'{"name": "20200101T000000Z"}'}
    for name, body in strays.items():
        (folder / name).write_bytes(body)
    try:
        before = ok(root, "/admin/backups")
        assert all(b["name"].startswith("20") and b["name"] < "9999" for b in before["backups"]), before["backups"]
        last = (before["tasks"].get("backup") or {}).get("at") or 0
        wait_for(lambda: root.post("/admin/backups", {}, csrf=True).status_code == 202, 30, 0.2, "a backup started")
        result = wait_for(lambda: (t := ok(root, "/admin/backups")["tasks"]["backup"])["at"] > last and t, 30, 0.2,
                          "the backup task's result")
        assert result["ok"] is True, result
        after = ok(root, "/admin/backups")["backups"]
        assert result["outcome"].startswith(f"backup {after[0]['name']}") and after[0]["name"] < "9999"
        assert not {b["name"] for b in after} & {"README", "99991231T235959Z", "20200101T000000Z"}
        assert all((folder / name).read_bytes() == body for name, body in strays.items()), "strays left alone"
    finally:
        for name in strays:
            (folder / name).unlink(missing_ok=True)
