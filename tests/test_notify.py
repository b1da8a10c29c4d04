"""notify: every reply >= 400 and every client error report becomes one JSON line in the
log and one entry in the Redis stream `log`, with secrets redacted; POST /error is
rate-limited per client IP. Admin actions and security events go to a stream of their own
(`audit`) that an anonymous flood cannot empty, and a flood from one address is aggregated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .identity_support import Api, Users, dedicated, fresh_ip
from .lore import Lorebase, wait_for
from .support import (
    JSON_TYPE,
    assert_error,
    client_ip,
    connection_per_worker,
    post_json,
    stream_entries,
    wait_event,
    wait_stream_event,
)

MIB = 1024 * 1024


def bad_requests() -> list[tuple[str, str, dict, int, str]]:
    """(method, path, httpx kwargs, status, code) for one reply of each error kind."""
    json_body = {"headers": JSON_TYPE}
    return [
        ("GET", "/notify-probe", {}, 404, "notfound"),
        ("POST", "/ping", {}, 405, "method"),
        ("GET", "/" + "n" * 2100, {}, 414, "url"),
        ("POST", "/error", {"content": b"{", **json_body}, 400, "json"),
        ("POST", "/error", {"content": b'{"message": 5}', **json_body}, 400, "validation"),
        ("POST", "/error", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "type"),
        ("POST", "/error", {"content": b" " * (MIB + 1), **json_body}, 413, "size"),
    ]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), bad_requests(),
                         ids=[f"{r[3]} {r[4]}" for r in bad_requests()])
def test_every_error_reply_is_a_log_line_and_a_stream_entry(client, server, method, path, kwargs, status, code):
    ip = client_ip()
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), "x-real-ip": ip}}
    r = client.request(method, path, **kwargs)
    assert_error(r, status, code, r.json().get("path"))
    line = wait_event(server, "reply", ip=ip)
    assert (line["status"], line["error"], line["method"]) == (status, code, method)
    assert line["path"] == path[:200]
    assert line["role"].startswith("worker")
    assert isinstance(line["ms"], (int, float)) and line["ms"] >= 0
    entry = wait_stream_event(server, "reply", ip=ip)
    assert entry == line


def test_reply_event_carries_the_client_address_from_the_trusted_proxy(client, server):
    """Even a reply refused before any route ran (404) names the client nginx saw, not nginx."""
    ip = client_ip()
    assert_error(client.get("/notify-address", headers={"x-real-ip": ip}), 404, "notfound")
    assert wait_event(server, "reply", ip=ip, path="/notify-address")["status"] == 404


@pytest.mark.parametrize("header", ["x-real-ip", "x-forwarded-for"])
def test_an_ipv6_zone_from_the_proxy_is_refused_for_the_peers_address(client, server, header):
    """`fe80::1%eth0` names an interface of the proxy's host, not a client: the peer's address
    stands, before any route ran (a 404) and after (POST /error, counted per address)."""
    marker = f"zone-{header}"
    for zoned in ("fe80::1%eth0", "fe80::1%25eth0", "fe80::1%1"):
        assert_error(client.get(f"/{marker}", headers={header: zoned}), 404, "notfound")
        report = json.dumps({"message": f"{marker} {zoned}"}).encode()
        assert client.post("/error", content=report, headers={**JSON_TYPE, header: zoned}).status_code == 200
    for zoned in ("fe80::1%eth0", "fe80::1%25eth0", "fe80::1%1"):
        assert wait_event(server, "client error", message=f"{marker} {zoned}")["ip"] == "127.0.0.1"
    replies = wait_for(lambda: [e for e in server.events("reply") if e["path"] == f"/{marker}"][2:] and
                       [e for e in server.events("reply") if e["path"] == f"/{marker}"], 10, 0.05, "3 replies")
    assert {e["ip"] for e in replies} == {"127.0.0.1"}


def test_successful_replies_are_not_notified(client, server):
    ip = client_ip()
    headers = {"x-real-ip": ip}
    etag = client.get("/ping", headers=headers).headers["etag"]
    assert client.get("/ping", headers={**headers, "if-none-match": etag}).status_code == 304
    assert client.get("/health", headers=headers).status_code == 200
    # the same connection, so the same worker, in order: once this 404 is logged, the
    # replies before it would have been too
    assert client.get("/notify-marker", headers=headers).status_code == 404
    wait_event(server, "reply", ip=ip, path="/notify-marker")
    wait_stream_event(server, "reply", ip=ip, path="/notify-marker")
    mine = [e for e in server.events() if e.get("ip") == ip]
    assert [e["path"] for e in mine] == ["/notify-marker"], mine
    assert [e["path"] for e in stream_entries(server) if e.get("ip") == ip] == ["/notify-marker"]


def test_client_error_report_is_notified(client, server):
    ip = client_ip()
    report = {"message": "TypeError: x is undefined (notify test)", "url": "https://example.test/app",
              "stack": "at f (app.js:10:5)\n\tat g (app.js:20:1)", "line": 10, "column": 5}
    r = post_json(client, "/error", report, ip, headers={"user-agent": "notify-test-agent/1.0"})
    assert r.status_code == 200
    assert r.json() == {}
    line = wait_event(server, "client error", ip=ip)
    for key, value in report.items():
        assert line[key] == value, key
    assert line["agent"] == "notify-test-agent/1.0"
    assert wait_stream_event(server, "client error", ip=ip) == line


def test_server_start_is_notified(server):
    line = wait_event(server, "start")
    assert line["role"] == "master"
    assert line["port"] == server.port
    assert line["workers"] == 2
    assert wait_stream_event(server, "start", port=server.port)["pid"] == line["pid"]


# -- redaction ---------------------------------------------------------------------------

SECRETS = [f"SECRETVALUE{i:02d}" for i in range(1, 15)]


def test_secrets_in_a_client_error_never_reach_the_log_or_the_stream(client, server):
    ip = client_ip()
    s = SECRETS
    report = {
        "message": f"redaction test: token={s[0]} password={s[1]} and 'csrf': '{s[2]}'",
        "url": f"https://example.test/verify?token={s[3]}&next=/reset?token={s[4]}",
        "stack": f'at f\n{{"password": "{s[5]}", "secret": "{s[6]}"}}\n'
                 f"Cookie: theme=dark; lorebase={s[7]}\nset-cookie: lorebase={s[8]}; Path=/; HttpOnly\n"
                 f"Authorization: Bearer {s[10]}\n{{'cookie': 'a=1; lorebase={s[11]}'}}",
    }
    r = post_json(client, "/error", report, ip, headers={"user-agent": f"agent session={s[9]}"})
    assert r.status_code == 200, r.text
    line = wait_event(server, "client error", ip=ip)
    assert "[redacted]" in line["message"] and "[redacted]" in line["url"] and "[redacted]" in line["stack"]
    assert line["message"].startswith("redaction test")
    wait_stream_event(server, "client error", ip=ip)
    log = server.log_text()
    stream = json.dumps(stream_entries(server))
    for secret in s[:12]:
        assert secret not in log, secret
        assert secret not in stream, secret


def test_secrets_in_a_query_string_never_reach_the_log(client, server):
    ip = client_ip()
    secret = SECRETS[12]
    r = client.get(f"/notify-query?token={secret}&password={secret}", headers={"x-real-ip": ip})
    assert_error(r, 404, "notfound")
    wait_event(server, "reply", ip=ip)
    wait_stream_event(server, "reply", ip=ip)
    assert secret not in server.log_text()
    assert secret not in json.dumps(stream_entries(server))


def test_invite_tokens_in_a_reported_url_never_reach_the_log_or_the_stream(client, server):
    ip = client_ip()
    secret = SECRETS[13]
    report = {"message": "invite link broke", "url": f"https://example.test/?invite={secret}",
              "stack": f"at signup (https://example.test/app.js?invite={secret}&x=1)"}
    assert post_json(client, "/error", report, ip).status_code == 200
    line = wait_event(server, "client error", ip=ip)
    assert line["url"] == "https://example.test/?invite=[redacted]"
    wait_stream_event(server, "client error", ip=ip)
    assert secret not in server.log_text()
    assert secret not in json.dumps(stream_entries(server))


# -- rate limit --------------------------------------------------------------------------


def test_client_error_reports_are_limited_to_30_a_minute_per_ip(client, server):
    ip = client_ip()
    for i in range(30):
        r = post_json(client, "/error", {"message": f"rate test {i}"}, ip)
        assert r.status_code == 200, (i, r.text)
    r = post_json(client, "/error", {"message": "rate test 30"}, ip)
    assert_error(r, 429, "rate")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # another client is not affected
    assert post_json(client, "/error", {"message": "rate test other"}, client_ip()).status_code == 200
    # the refusal is notified as a reply, and the refused report is not logged as a client error
    refusal = wait_event(server, "reply", ip=ip)
    assert (refusal["status"], refusal["error"]) == (429, "rate")
    reports = [e for e in server.events("client error") if e.get("ip") == ip]
    assert sorted(e["message"] for e in reports) == sorted(f"rate test {i}" for i in range(30))


def test_rate_limit_is_shared_by_the_workers(server):
    """Reports from one address through two workers count against one limit, kept in Redis:
    both workers accept some of the first 30, and both refuse past it."""
    conns = connection_per_worker(server)
    ip = client_ip()
    statuses = []
    try:
        for i in range(34):
            r = post_json(conns[i % 2], "/error", {"message": f"shared {i}"}, ip)
            statuses.append(r.status_code)
    finally:
        for conn in conns:
            conn.close()
    assert statuses == [200] * 30 + [429] * 4

    def accepted() -> list[dict]:
        return [e for e in stream_entries(server) if e.get("ev") == "client error" and e.get("ip") == ip]

    wait_for(lambda: len(accepted()) == 30, 10, 0.05, "the 30 accepted reports in the stream")
    assert len({e["pid"] for e in accepted()}) == 2  # both workers served them, under one count



# -- floods --------------------------------------------------------------------------------
# A lorebase of its own whose `log` stream holds ~100 entries: a flood far past that must leave
# the admin's record (`audit`) whole, and lines from one address past 10 per 2 s are counted,
# not written.

RATE, WINDOW, ANONYMOUS_RATE = 10, 2, 5


@pytest.fixture(scope="module")
def flooded(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "flood", ADMINS="f_root@example.com", LOG_STREAM_MAX="100",
                   AUDIT_STREAM_MAX="1000", LOG_RATE=str(RATE), LOG_WINDOW=str(WINDOW),
                   AUDIT_ANONYMOUS_RATE=str(ANONYMOUS_RATE)) as lore:
        yield lore


@pytest.fixture(scope="module")
def flood_admin(flooded, mail) -> Iterator[Api]:
    with Users(flooded, mail) as made:
        yield made.session(made.new("f_root", verified=True))


def logs(api: Api, **params: str) -> list[dict]:
    """Every event GET /admin/logs finds with these parameters, following `next`."""
    out: list[dict] = []
    query = dict(params)
    while True:
        r = api.get("/admin/logs?" + str(httpx.QueryParams(query)))
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        if not page["next"]:
            return out
        query["before"] = page["next"]


def anonymous(lore: Lorebase, requests: list[tuple[str, str, str]]) -> None:
    """(path, client address, cookie) GETs with no session, 4 at a time: 404 or 403 each."""
    def send(chunk: list[tuple[str, str, str]]) -> None:
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            for path, ip, cookie in chunk:
                headers = {"x-real-ip": ip, **({"cookie": f"lorebase={cookie}"} if cookie else {})}
                assert client.get(path, headers=headers).status_code in (403, 404)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, [requests[i::4] for i in range(4)]))


def test_an_anonymous_flood_leaves_the_admins_and_security_events_findable(flooded, flood_admin, mail):
    root = flood_admin
    with Users(flooded, mail) as made:
        victim = made.new("f_victim", verified=True)
        for value in (True, False):
            r = root.post("/admin/disable", {"username": victim.name, "value": value}, csrf=True)
            assert r.status_code == 200, r.text
        forger = fresh_ip()
        anonymous(flooded, [("/notes", forger, "forged.cookie")])
        wait_for(lambda: [e for e in logs(root, type="tampered", q=forger) if e["ip"] == forger],
                 10, 0.05, "the tampered event")
        # ~20 times what `log` holds, every address under the rate; and tampered cookies from 200 more
        addresses = [fresh_ip() for _ in range(200)]
        anonymous(flooded, [(f"/flood/{i}", ip, "") for ip in addresses for i in range(RATE)])
        wait_for(lambda: [e for e in logs(root, q="/flood/") if e["ip"] == addresses[-1]],
                 10, 0.1, "the flood's end")
        anonymous(flooded, [("/notes", ip, "forged.again") for ip in addresses])

        assert [e["value"] for e in logs(root, type="admin disable", q=victim.name)] == [False, True]
        assert [e["user"] for e in logs(root, type="signup", q="f_victim")] == ["f_victim"]
        [tampered] = [e for e in logs(root, type="tampered", q=forger) if e["ip"] == forger]  # q is a substring match
        assert tampered["path"] == "/notes"
        assert tampered["stream"] == "audit"
        assert [e["stream"] for e in logs(root, type="admin disable", q=victim.name)] == ["audit", "audit"]
        # the flood went to `log`, whose oldest entries are gone; `audit` got a few tampered lines
        # and the rest counted in `flood` lines
        assert all(e["stream"] == "log" for e in logs(root, stream="log", type="reply"))
        assert not logs(root, stream="audit", type="reply")
        assert len([e for e in logs(root, type="reply", q="/flood/0") if e["path"] == "/flood/0"]) < len(addresses)

        def tampered_told() -> bool:
            lines = [e for e in logs(root, stream="audit", type="tampered") if e["ip"] != forger]
            counted = sum(e["count"] for e in logs(root, stream="audit", type="flood") if e["of"] == "tampered")
            return len(lines) + counted == len(addresses)

        wait_for(tampered_told, 3 * WINDOW + 5, 0.2, "every tampered line written or counted")
        assert len([e for e in logs(root, stream="audit", type="tampered") if e["ip"] in addresses]) < len(addresses)


def test_request_errors_from_one_address_are_aggregated_past_the_rate(flooded, flood_admin):
    ip, total = fresh_ip(), 300
    anonymous(flooded, [(f"/one-address/{i}", ip, "") for i in range(total)])

    def written_or_counted() -> tuple[list[dict], list[dict]] | None:
        lines = [e for e in logs(flood_admin, type="reply") if e.get("ip") == ip]
        floods = [e for e in logs(flood_admin, type="flood") if e.get("ip") == ip]
        return (lines, floods) if len(lines) + sum(e["count"] for e in floods) == total else None

    lines, floods = wait_for(written_or_counted, 3 * WINDOW + 5, 0.2, "every reply written or counted")
    windows = {e["since"] for e in floods}
    assert len(lines) <= RATE * 2 * (len(windows) + 1)  # two workers, each its own count
    assert all(e["of"] == "reply" and set(e["statuses"]) == {"404 notfound"} for e in floods)
    assert all(e["statuses"]["404 notfound"] == e["count"] for e in floods)
    # standard output keeps every line
    assert len([e for e in flooded.events("reply") if e.get("ip") == ip]) == total
