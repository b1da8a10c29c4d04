"""Stats and GET /metrics: counted in each worker, summed in Redis, read by a real
Prometheus parser; who may read them; route templates, never raw paths; stats off."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lorebase import stats

from . import files_support
from .identity_support import Users, assert_error, dedicated, fresh_ip
from .lore import Lorebase, wait_for
from .support import connection_per_worker, post_json

TOKEN = "scrape-" + "x" * 40


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "stats", ADMINS="s_root@example.com", METRICS_TOKEN=TOKEN) as lore:
        yield lore


def scrape(lore: Lorebase, token: str = TOKEN) -> dict[str, list]:
    """Every sample of /metrics, by metric family name: [(name, labels, value)]."""
    r = httpx.get(lore.url + "/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: [(s.name, s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(r.text)}


def value(metrics: dict[str, list], family: str, sample: str | None = None, **labels: str) -> float:
    """The sum of a family's samples with these labels (a counter's family drops `_total`)."""
    found = [v for name, got, v in metrics.get(family, []) if (sample is None or name == sample)
             and all(got.get(k) == want for k, want in labels.items())]
    return sum(found)


def settled(lore: Lorebase, check) -> dict[str, list]:
    """Scrapes until `check(metrics)` holds: workers write their counts once a second."""
    return wait_for(lambda: (lambda m: m if check(m) else None)(scrape(lore)), 10, 0.2, "the counts to arrive")


def test_fifty_requests_through_two_workers_count_as_fifty(lore):
    """25 /ping on a connection served by each worker: one count of 50, summed in Redis."""
    before = value(scrape(lore), "lorebase_requests", route="/ping", method="GET", status="200")
    conns = connection_per_worker(lore)
    try:
        for i in range(50):
            assert conns[i % 2].get("/ping").status_code == 200
    finally:
        for conn in conns:
            conn.close()
    metrics = settled(lore, lambda m: value(m, "lorebase_requests", route="/ping", method="GET",
                                            status="200") >= before + 50)
    time.sleep(1.5)  # one more flush: nothing beyond the 50 comes in late
    metrics = scrape(lore)
    assert value(metrics, "lorebase_requests", route="/ping", method="GET", status="200") == before + 50
    # the histogram: cumulative buckets ending in +Inf = the count
    buckets = [(float(labels["le"]), v) for name, labels, v in metrics["lorebase_request_duration_seconds"]
               if name.endswith("_bucket") and labels["route"] == "/ping"]
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    count = value(metrics, "lorebase_request_duration_seconds", "lorebase_request_duration_seconds_count",
                  route="/ping", method="GET")
    assert buckets[-1] == (float("inf"), count)
    assert count == value(metrics, "lorebase_requests", route="/ping", method="GET")
    assert value(metrics, "lorebase_request_duration_seconds", "lorebase_request_duration_seconds_sum",
                 route="/ping") > 0


def test_routes_are_counted_by_template_never_by_raw_path(lore, mail):
    with Users(lore, mail) as made:
        api = made.session(made.new("s_paths"))
        for i in range(3):
            assert_error(api.get(f"/files/{i:023x}"), 404, "notfound")
    for path in ("/no/such/path/a", "/no/such/path/b"):
        assert httpx.get(lore.url + path, timeout=10).status_code == 404
    # each worker flushes its own counts once a second: wait for both kinds to be in
    metrics = settled(lore, lambda m: value(m, "lorebase_requests", route="/files/{id}", status="404") >= 3
                      and value(m, "lorebase_requests", route="-", method="GET", status="404") >= 2)
    routes = {labels["route"] for _, labels, _ in metrics["lorebase_requests"]}
    assert not any(r.startswith("/no/such") or r.startswith("/files/0") for r in routes), routes


def test_signups_logins_and_failed_logins_are_counted(lore, mail):
    before = scrape(lore)
    with Users(lore, mail) as made:
        user = made.new("s_counts")
        api = made.api()
        assert_error(api.login(user.name, "not the password at all"), 403, "auth")
        assert_error(api.login(user.name, "not the password either"), 403, "auth")
        made.session(user)
        # the three may be counted by different workers, each flushing once a second
        after = settled(lore, lambda m: all(value(m, name) - value(before, name) >= grew for name, grew in (
            ("lorebase_signups", 1), ("lorebase_login_failures", 2), ("lorebase_logins", 1))))
    for name, grew in (("lorebase_signups", 1), ("lorebase_login_failures", 2)):
        assert value(after, name) - value(before, name) == grew, name
    assert value(after, "lorebase_logins") - value(before, "lorebase_logins") >= 1
    assert value(after, "lorebase_users") >= 1
    assert value(after, "lorebase_active_users") >= 1


def test_bytes_uploaded_and_served_are_counted(lore):
    files_support.signup(lore, "s_bytes")
    before = scrape(lore)
    api = files_support.Api(lore)
    try:
        api.login("s_bytes")
        out = api.ok_upload(b"b" * 70_000, "b.bin")
        assert api.get(f"/files/{out['id']}").content == b"b" * 70_000
    finally:
        api.close()
    uploaded = value(before, "lorebase_upload_bytes")
    after = settled(lore, lambda m: value(m, "lorebase_upload_bytes") >= uploaded + 70_000)
    assert value(after, "lorebase_upload_bytes") - value(before, "lorebase_upload_bytes") == 70_000
    assert value(after, "lorebase_served_bytes") - value(before, "lorebase_served_bytes") >= 70_000


def test_metrics_are_for_the_token_or_an_admin_only(lore, mail):
    assert_error(httpx.get(lore.url + "/metrics", timeout=10), 403, "admin")
    for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}", TOKEN):
        assert_error(httpx.get(lore.url + "/metrics", headers={"authorization": header}, timeout=10), 403, "admin")
    with Users(lore, mail) as made:
        plain = made.session(made.new("s_plain", verified=True))
        assert_error(plain.get("/metrics"), 403, "admin")
        root = made.session(made.new("s_root", verified=True))
        r = root.get("/metrics")
        assert r.status_code == 200 and "lorebase_requests_total" in r.text
    assert httpx.get(lore.url + "/metrics", headers={"authorization": f"bearer {TOKEN}"}, timeout=10).status_code == 200


def test_a_minute_keeps_its_flows_and_the_slowest_and_fastest_request(lore):
    for _ in range(5):
        assert httpx.get(lore.url + "/health", timeout=10).status_code == 200
    db = lore.redis()

    def minute() -> dict[str, str] | None:
        now = int(time.time() // 60)
        for m in (now, now - 1):
            got = db.hgetall(stats.minute_key(m))
            if int(got.get("requests|GET /health|200", 0)) >= 5:
                return got
        return None

    got = wait_for(minute, 10, 0.2, "this minute's hash")
    assert 0 < float(got["latency_min|GET /health"]) <= float(got["latency_max|GET /health"])
    ttl = db.ttl(next(stats.minute_key(m) for m in (int(time.time() // 60), int(time.time() // 60) - 1)
                      if db.exists(stats.minute_key(m))))
    assert 0 < ttl <= 2 * 86400


def test_stats_off_counts_nothing(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "stats_off", STATS="0", METRICS_TOKEN=TOKEN) as off:
        with httpx.Client(base_url=off.url, timeout=10) as client:
            for _ in range(10):
                assert post_json(client, "/error", {"message": "x"}, fresh_ip()).status_code == 200
        time.sleep(1.5)  # a flush would have run
        metrics = scrape(off)
        assert value(metrics, "lorebase_requests") == 0
        assert not off.redis().keys("*stats*")

