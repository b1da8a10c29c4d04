"""notify: every reply >= 400 and every client error report becomes one JSON line in the
log and one entry in the Redis stream `log`, with secrets redacted; POST /error is
rate-limited per client IP."""

from __future__ import annotations

import json

import pytest

from .lore import wait_for
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

SECRETS = [f"SECRETVALUE{i:02d}" for i in range(1, 14)]


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

