"""ETag, If-None-Match → 304, and gzip of large JSON replies."""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import pytest

IDENTITY = {"accept-encoding": "identity"}
GZIP = {"accept-encoding": "gzip"}
GET_ROUTES = ["/ping", "/health", "/openapi.json"]


def raw_get(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """GET without httpx decoding the body, so what was on the wire can be checked."""
    with client.stream("GET", path, headers=headers) as r:
        return r, b"".join(r.iter_raw())


@pytest.mark.parametrize("path", GET_ROUTES)
def test_every_200_json_reply_to_a_get_has_an_etag(client, path):
    r = client.get(path, headers=IDENTITY)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag


@pytest.mark.parametrize("path", GET_ROUTES)
def test_etag_is_the_same_for_the_same_body_on_every_worker(path, server):
    """Fresh connections land on either worker; the tag depends on the body alone."""
    tags = set()
    bodies = set()
    for _ in range(10):
        r = httpx.get(server.url + path, headers=IDENTITY, timeout=10)
        tags.add(r.headers["etag"])
        bodies.add(r.content)
    assert len(bodies) == 1
    assert len(tags) == 1


def test_different_bodies_have_different_etags(client):
    tags = {client.get(path, headers=IDENTITY).headers["etag"] for path in GET_ROUTES}
    assert len(tags) == len(GET_ROUTES)


@pytest.mark.parametrize("path", GET_ROUTES)
def test_if_none_match_with_the_etag_is_304_with_empty_body(client, path):
    etag = client.get(path, headers=IDENTITY).headers["etag"]
    r = client.get(path, headers={**IDENTITY, "if-none-match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    assert r.headers.get("content-length", "0") == "0"


def test_if_none_match_with_another_tag_is_200(client):
    r = client.get("/ping", headers={"if-none-match": '"0123456789abcdef01234567"'})
    assert r.status_code == 200
    assert r.json() == {"pong": True}


def test_if_none_match_with_a_tag_that_differs_by_one_char_is_200(client):
    etag = client.get("/ping").headers["etag"]
    other = etag[:-2] + ("0" if etag[-2] != "0" else "1") + '"'
    r = client.get("/ping", headers={"if-none-match": other})
    assert r.status_code == 200
    assert r.json() == {"pong": True}


def test_weak_form_of_the_etag_matches(client):
    etag = client.get("/ping").headers["etag"]
    r = client.get("/ping", headers={"if-none-match": "W/" + etag})
    assert r.status_code == 304
    assert r.content == b""


def test_etag_among_several_tags_matches(client):
    etag = client.get("/ping").headers["etag"]
    r = client.get("/ping", headers={"if-none-match": f'"aaaa", {etag}, "bbbb"'})
    assert r.status_code == 304


def test_if_none_match_star_is_304(client):
    r = client.get("/ping", headers={"if-none-match": "*"})
    assert r.status_code == 304
    assert r.content == b""


def test_304_keeps_the_security_headers(client):
    etag = client.get("/ping").headers["etag"]
    r = client.get("/ping", headers={"if-none-match": etag})
    assert r.status_code == 304
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_if_none_match_on_an_error_reply_is_not_304(client):
    r = client.get("/nope", headers={"if-none-match": "*"})
    assert r.status_code == 404
    assert r.json() == {"error": "notfound"}


def test_large_json_reply_is_gzipped_when_the_client_accepts_gzip(client):
    _, plain_body = raw_get(client, "/openapi.json", IDENTITY)
    assert len(plain_body) > 1400  # large enough to be worth compressing
    r, wire = raw_get(client, "/openapi.json", GZIP)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in r.headers["vary"].lower()
    assert int(r.headers["content-length"]) == len(wire) < len(plain_body)
    assert gzip.decompress(wire) == plain_body
    assert json.loads(gzip.decompress(wire))["openapi"].startswith("3.1")


@pytest.mark.parametrize("accept", ["gzip, deflate, br", "br;q=1.0, gzip;q=0.8", "*"])
def test_gzip_is_used_whenever_it_is_acceptable(client, accept):
    r, _ = raw_get(client, "/openapi.json", {"accept-encoding": accept})
    assert r.headers.get("content-encoding") == "gzip"


@pytest.mark.parametrize("accept", ["identity", "br", "gzip;q=0", "deflate"])
def test_large_json_reply_is_not_gzipped_otherwise(client, accept):
    r, wire = raw_get(client, "/openapi.json", {"accept-encoding": accept})
    assert r.status_code == 200
    assert "content-encoding" not in r.headers
    assert json.loads(wire)["openapi"].startswith("3.1")


def test_no_accept_encoding_header_means_no_gzip(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: lorebase\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-encoding" not in head.lower()
    assert json.loads(body)["openapi"].startswith("3.1")


def test_small_json_reply_is_not_gzipped(client):
    r, wire = raw_get(client, "/ping", GZIP)
    assert "content-encoding" not in r.headers
    assert wire == b'{"pong":true}'


def test_etag_of_the_gzipped_reply_matches_on_revalidation(client):
    r, _ = raw_get(client, "/openapi.json", GZIP)
    etag = r.headers["etag"]
    again = client.get("/openapi.json", headers={**GZIP, "if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    plain = client.get("/openapi.json", headers={**IDENTITY, "if-none-match": etag})
    assert plain.status_code == 304  # weak comparison: the same content, either encoding


@pytest.mark.parametrize("accept", ["gzip", "identity"])
def test_304_carries_the_etag_and_vary_the_200_would_have(client, accept):
    """RFC 9110 15.4.5: a 304 sends the ETag and Vary a 200 to the same request would send."""
    ok, _ = raw_get(client, "/openapi.json", {"accept-encoding": accept})
    r = client.get("/openapi.json", headers={"accept-encoding": accept, "if-none-match": ok.headers["etag"]})
    assert r.status_code == 304
    assert r.headers["etag"] == ok.headers["etag"]
    assert r.headers.get("vary") == ok.headers.get("vary")


def test_large_reply_varies_on_accept_encoding_even_uncompressed(client):
    """A shared cache must not hand the plain copy's tag to a gzip client, nor the reverse."""
    r, _ = raw_get(client, "/openapi.json", IDENTITY)
    assert "accept-encoding" in r.headers.get("vary", "").lower()
