"""The HTTP rules the chain applies before any route: body type, size and presence, JSON
that parses, request-target length, routing (404/405), and the shape of every error reply
and the headers every reply carries."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from .support import JSON_TYPE, assert_error, assert_healthy, client_ip, post_json

MIB = 1024 * 1024
LIMIT = 16 * 1024  # JSON_LIMIT, the body limit of a route without its own


def raw_request(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send `head` on a fresh connection and read the first reply (head and short body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        headers, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return headers + b"\r\n\r\n" + body


def padded(value: object, size: int) -> bytes:
    """A JSON document of exactly `size` bytes: `value` followed by spaces."""
    body = json.dumps(value).encode()
    assert len(body) <= size
    return body.ljust(size)


# -- body: presence, type, JSON ---------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b'{"message": "a"', b"{message: 1}", b"not json", b'{"message": "a"}}'])
def test_body_declared_json_that_does_not_parse_is_400_json(client, body):
    assert_error(post_json(client, "/error", body), 400, "json")


def test_post_without_body_is_400_validation(client):
    r = client.post("/error", headers={"x-real-ip": client_ip()})
    assert r.request.headers.get("content-length") in (None, "0")
    assert_error(r, 400, "validation", "")


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n\t "])
def test_empty_json_body_is_400_validation(client, body):
    assert_error(post_json(client, "/error", body), 400, "validation", "")


@pytest.mark.parametrize("content_type", [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "text/json",
    "application/xml",
])
def test_wrong_content_type_on_post_is_415_type(client, content_type):
    r = client.post("/error", content=b'{"message": "a"}',
                    headers={"content-type": content_type, "x-real-ip": client_ip()})
    assert_error(r, 415, "type")


def test_body_without_content_type_is_415_type(client):
    r = client.post("/error", content=b'{"message": "a"}', headers={"x-real-ip": client_ip()})
    assert "content-type" not in r.request.headers
    assert_error(r, 415, "type")


def test_chunked_body_without_content_type_is_415_type(client):
    r = client.post("/error", content=iter([b'{"message": ', b'"a"}']), headers={"x-real-ip": client_ip()})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 415, "type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/json ; charset=UTF-8"])
def test_json_content_type_with_parameters_or_other_case_is_accepted(client, content_type):
    r = client.post("/error", content=b'{"message": "content type accepted"}',
                    headers={"content-type": content_type, "x-real-ip": client_ip()})
    assert r.status_code == 200, r.text
    assert r.json() == {}


# -- body: size --------------------------------------------------------------------------


def test_body_of_exactly_the_default_limit_is_accepted(client):
    r = post_json(client, "/error", padded({"message": "16 KiB exactly"}, LIMIT))
    assert r.status_code == 200, r.text


def test_body_over_default_limit_is_413_with_content_length(client):
    body = padded({"message": "one byte too many"}, LIMIT + 1)
    r = post_json(client, "/error", body)
    assert r.request.headers["content-length"] == str(LIMIT + 1)
    assert_error(r, 413, "size")


def test_body_over_default_limit_is_413_when_chunked(client):
    chunks = [b'{"message": "chunked"}'] + [b" " * 1024] * 16 + [b" "]  # 16 KiB + 23 bytes, no length
    r = client.post("/error", content=iter(chunks), headers={**JSON_TYPE, "x-real-ip": client_ip()})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "size")


def test_chunked_body_within_limit_is_accepted(client):
    chunks = [b'{"message": ', b'"sent in chunks"', b"}"]
    r = client.post("/error", content=iter(chunks), headers={**JSON_TYPE, "x-real-ip": client_ip()})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text


def test_declared_length_over_limit_is_413_before_the_body_is_sent(server):
    """The server decides from Content-Length alone: it neither waits for nor reads 100 MB."""
    reply = raw_request(server.port, b"POST /error HTTP/1.1\r\nHost: lorebase\r\n"
                                     b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"413", reply
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": "size"}


# -- request target ----------------------------------------------------------------------


def test_get_path_of_2049_chars_is_414_url(client):
    target = "/" + "a" * 2048
    assert len(target) == 2049
    assert_error(client.get(target), 414, "url")


def test_get_path_of_2048_chars_is_not_414(client):
    target = "/" + "a" * 2047
    assert len(target) == 2048
    assert_error(client.get(target), 404, "notfound")


def test_get_target_with_query_of_2049_chars_is_414_url(client):
    target = "/ping?q=" + "a" * 2041
    assert len(target) == 2049
    assert_error(client.get(target), 414, "url")


def test_get_target_with_query_of_2048_chars_is_not_414(client):
    target = "/ping?q=" + "a" * 2040
    assert len(target) == 2048
    r = client.get(target)
    assert r.status_code == 200, r.text
    assert r.json() == {"pong": True}


def test_very_long_get_target_is_414_url(client):
    assert_error(client.get("/ping?q=" + "a" * 7000), 414, "url")


def test_percent_encoded_target_counts_as_sent(client):
    """2049 characters on the wire, even though the decoded path is shorter."""
    target = "/" + "%61" * 682 + "aa"
    assert len(target) == 2049
    assert_error(client.get(target), 414, "url")


# -- routing -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/health/", "/HEALTH", "/error/1", "/ping/x", "/.git/config",
                                  "/openapi.json.bak", "/index.html", "/%00"])
def test_unknown_route_is_404_notfound(client, path):
    assert_error(client.get(path), 404, "notfound")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/ping", "GET, HEAD"),
    ("DELETE", "/health", "GET, HEAD"),
    ("PUT", "/openapi.json", "GET, HEAD"),
    ("OPTIONS", "/ping", "GET, HEAD"),
    ("GET", "/error", "POST"),
    ("PATCH", "/error", "POST"),
])
def test_wrong_method_is_405_method_with_allow(client, method, path, allow):
    r = client.request(method, path, headers={"x-real-ip": client_ip()})
    assert_error(r, 405, "method")
    assert r.headers["allow"] == allow


def test_head_of_a_get_route_is_200_without_body(client):
    r = client.head("/ping")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(b'{"pong":true}'))


# -- every error reply -------------------------------------------------------------------


def error_requests(client: httpx.Client) -> list[httpx.Response]:
    ip = client_ip()
    return [
        post_json(client, "/error", b"{", ip),  # 400 json
        post_json(client, "/error", {"message": 1}, ip),  # 400 validation
        client.post("/error", content=b"x", headers={"content-type": "text/plain"}),  # 415
        post_json(client, "/error", b" " * (MIB + 1), ip),  # 413
        client.get("/" + "x" * 3000),  # 414
        client.get("/nope"),  # 404
        client.post("/ping"),  # 405
    ]


def test_every_error_reply_is_json_with_a_stable_code_and_no_trace(client):
    for r in error_requests(client):
        assert r.status_code >= 400
        assert r.headers["content-type"] == "application/json", r.headers
        body = r.json()
        assert isinstance(body, dict)
        assert set(body) <= {"error", "path"}, body
        assert body["error"].isalpha() and body["error"].islower(), body
        text = r.text
        for leak in ("Traceback", "File \"", "lorebase/", ".py", "Error(", "line "):
            assert leak not in text, text
    assert_healthy(client)


# -- headers on every reply --------------------------------------------------------------


def replies_of_every_kind(client: httpx.Client) -> dict[int, httpx.Response]:
    ping = client.get("/ping")
    return {
        200: ping,
        304: client.get("/ping", headers={"if-none-match": ping.headers["etag"]}),
        400: post_json(client, "/error", {"message": ""}),
        404: client.get("/nope"),
        405: client.post("/ping"),
        413: post_json(client, "/error", b" " * (MIB + 1)),
        414: client.get("/" + "x" * 3000),
        415: client.post("/error", content=b"x", headers={"content-type": "text/plain"}),
    }


def test_every_reply_carries_the_security_headers(client):
    for status, r in replies_of_every_kind(client).items():
        assert r.status_code == status, (status, r.status_code, r.text)
        assert r.headers.get("x-content-type-options") == "nosniff", status
        assert r.headers.get("referrer-policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, (status, csp)


def test_api_replies_may_load_nothing_and_pages_only_their_own_files(client):
    api = client.get("/ping").headers["content-security-policy"]
    assert "default-src 'none'" in api and "frame-ancestors 'none'" in api, api
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, csp
    assert page.headers["x-frame-options"] == "DENY"


def test_no_reply_names_the_server_software_or_version(client):
    for status, r in replies_of_every_kind(client).items():
        server = r.headers.get("server")
        assert server is None or not any(ch.isdigit() for ch in server), (status, server)
        assert "x-powered-by" not in r.headers, status
