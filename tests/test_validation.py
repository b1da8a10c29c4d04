"""Validation of POST /error's payload (the ClientError schema): hostile and malformed
bodies get a 4xx with a stable code and, for validation errors, the field's path. None of
them may produce a 500, an exception in the log or a dead worker."""

from __future__ import annotations

import json

import pytest

from .lore import wait_for
from .support import assert_error, assert_healthy, client_ip, master, post_json

# Each case: an id, the raw body, the code expected, the path expected (validation only).
MALFORMED = [
    ("truncated", b'{"message": "a"', "json"),
    ("truncated string", b'{"message": "a', "json"),
    ("trailing garbage", b'{"message": "a"} x', "json"),
    ("two documents", b'{"message": "a"}{"message": "b"}', "json"),
    ("trailing comma", b'{"message": "a",}', "json"),
    ("NaN", b'{"message": "a", "line": NaN}', "json"),
    ("Infinity", b'{"message": "a", "line": Infinity}', "json"),
    ("single quotes", b"{'message': 'a'}", "json"),
    ("unquoted key", b'{message: "a"}', "json"),
    ("comment", b'{"message": "a" /* c */}', "json"),
    ("invalid utf-8", b'{"message": "caf\xe9"}', "json"),
    ("invalid utf-8 lead byte", b'{"message": "\xff\xfe"}', "json"),
    ("overlong utf-8", b'{"message": "\xc0\xaf"}', "json"),
    ("raw NUL byte in a string", b'{"message": "a\x00b"}', "json"),
    ("raw newline in a string", b'{"message": "a\nb"}', "json"),
    ("bad escape", b'{"message": "\\x41"}', "json"),
    ("utf-16 body", '{"message": "a"}'.encode("utf-16"), "json"),
]


@pytest.mark.parametrize(("body", "code"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_json_is_400_json(client, body, code):
    assert_error(post_json(client, "/error", body), 400, code)


# Bodies that parse, but are not a ClientError: 400 validation naming the field.
WRONG = [
    ("message missing", {}, "message"),
    ("message missing, others set", {"url": "https://example.test/", "line": 1}, "message"),
    ("message null", {"message": None}, "message"),
    ("message number", {"message": 1}, "message"),
    ("message bool", {"message": True}, "message"),
    ("message list", {"message": ["a"]}, "message"),
    ("message object", {"message": {"a": 1}}, "message"),
    ("message empty", {"message": ""}, "message"),
    ("message 2001 chars", {"message": "m" * 2001}, "message"),
    ("message with NUL escape", {"message": "a\u0000b"}, "message"),
    ("message with control char", {"message": "a\u001bb"}, "message"),
    ("message with newline", {"message": "a\nb"}, "message"),
    ("url number", {"message": "a", "url": 1}, "url"),
    ("url null", {"message": "a", "url": None}, "url"),
    ("url 2049 chars", {"message": "a", "url": "u" * 2049}, "url"),
    ("url with NUL", {"message": "a", "url": "\u0000"}, "url"),
    ("stack list", {"message": "a", "stack": ["at x"]}, "stack"),
    ("stack 8001 chars", {"message": "a", "stack": "s" * 8001}, "stack"),
    ("stack with NUL", {"message": "a", "stack": "at x\u0000"}, "stack"),
    ("line string", {"message": "a", "line": "1"}, "line"),
    ("line float", {"message": "a", "line": 1.5}, "line"),
    ("line bool", {"message": "a", "line": True}, "line"),
    ("line negative", {"message": "a", "line": -1}, "line"),
    ("line over 10**9", {"message": "a", "line": 10**9 + 1}, "line"),
    ("line null", {"message": "a", "line": None}, "line"),
    ("column string", {"message": "a", "column": "x"}, "column"),
    ("column list", {"message": "a", "column": [1]}, "column"),
    ("column negative", {"message": "a", "column": -5}, "column"),
    ("extra key", {"message": "a", "x": 1}, "x"),
    ("extra key csrf", {"message": "a", "csrf": "t"}, "csrf"),
]


@pytest.mark.parametrize(("body", "path"), [c[1:] for c in WRONG], ids=[c[0] for c in WRONG])
def test_wrong_payload_is_400_validation_naming_the_field(client, body, path):
    assert_error(post_json(client, "/error", body), 400, "validation", path)


def test_400_digit_integer_is_400_validation_on_its_field(client):
    body = b'{"message": "a", "line": ' + b"9" * 400 + b"}"
    assert_error(post_json(client, "/error", body), 400, "validation", "line")
    assert_healthy(client)


def test_5000_digit_integer_is_a_400_not_a_500(client):
    """Past Python's int-from-string limit (4300 digits) the check must still answer 400."""
    r = post_json(client, "/error", b'{"message": "a", "line": ' + b"7" * 5000 + b"}")
    assert r.status_code == 400, r.text
    body = r.json()
    assert body in ({"error": "json"}, {"error": "validation", "path": "line"}), body
    assert_healthy(client)


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1e400", b"1.5e308"])
def test_huge_float_is_400(client, number):
    r = post_json(client, "/error", b'{"message": "a", "line": ' + number + b"}")
    assert r.status_code == 400, r.text
    assert r.json() in ({"error": "json"}, {"error": "validation", "path": "line"}), r.text


def test_duplicate_key_is_400_validation_naming_it(client):
    body = b'{"message": "first", "message": "second"}'
    assert_error(post_json(client, "/error", body), 400, "validation", "message")


def test_duplicate_key_in_a_nested_object_is_400(client):
    r = post_json(client, "/error", b'{"message": "a", "x": {"k": 1, "k": 2}}')
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation"


def test_lone_surrogate_is_400(client):
    r = post_json(client, "/error", b'{"message": "\\ud800"}')
    assert r.status_code == 400, r.text
    assert r.json() in ({"error": "json"}, {"error": "validation", "path": "message"}), r.text


def test_surrogate_pair_is_accepted(client):
    r = post_json(client, "/error", b'{"message": "emoji \\ud83d\\ude00 ok"}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [b"[]", b'[{"message": "a"}]', b'"message"', b"42", b"null", b"true", b"1.5"],
                         ids=["empty array", "array of the object", "string", "integer", "null", "true", "float"])
def test_json_that_is_not_an_object_is_400_validation_at_the_root(client, body):
    assert_error(post_json(client, "/error", body), 400, "validation", "")


@pytest.mark.parametrize("depth", [2_000, 8_000])  # 8000 deep is as deep as 16 KiB goes
def test_deeply_nested_arrays_are_400(client, depth):
    r = post_json(client, "/error", b"[" * depth + b"]" * depth)
    assert r.status_code == 400, r.text
    assert r.json() in ({"error": "json"}, {"error": "validation", "path": ""}), r.text
    assert_healthy(client)


def test_nesting_deeper_than_the_body_limit_holds_is_413(client):
    r = post_json(client, "/error", b"[" * 500_000 + b"]" * 500_000)
    assert r.status_code == 413 and r.json() == {"error": "size"}, r.text
    assert_healthy(client)


def test_deeply_nested_objects_are_400(client):
    depth = 2_700
    r = post_json(client, "/error", b'{"a":' * depth + b"1" + b"}" * depth)
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("json", "validation"), r.text
    assert_healthy(client)


@pytest.mark.parametrize("depth", [900, 1100, 5000])
def test_nesting_inside_a_field_is_400(client, depth):
    """Nesting around the Python recursion limit, inside an object (both parsers see it)."""
    r = post_json(client, "/error", b'{"message": "a", "x": ' + b"[" * depth + b"]" * depth + b"}")
    assert r.status_code == 400, r.text
    assert r.json() in ({"error": "json"}, {"error": "validation", "path": "x"}), r.text


# -- what is accepted, at the bounds -----------------------------------------------------


def test_minimal_report_is_accepted(client):
    r = post_json(client, "/error", {"message": "x"})
    assert r.status_code == 200, r.text
    assert r.json() == {}


def test_report_at_every_upper_bound_is_accepted(client):
    body = {"message": "m" * 2000, "url": "https://example.test/" + "u" * 2027, "stack": "at f\n\tat g" + "s" * 7990,
            "line": 10**9, "column": 10**9}
    assert len(body["url"]) == 2048 and len(body["stack"]) == 8000
    r = post_json(client, "/error", body)
    assert r.status_code == 200, r.text


def test_stack_may_hold_newlines_and_tabs(client):
    r = post_json(client, "/error", {"message": "m", "stack": "Error: x\n\tat f (a.js:1:2)\r\n\tat g"})
    assert r.status_code == 200, r.text


def test_unicode_message_is_accepted(client):
    r = post_json(client, "/error", {"message": "ünïcødé 名前 🙂 \u202e"})
    assert r.status_code == 200, r.text


# -- afterwards --------------------------------------------------------------------------


def hostile_bodies() -> list[bytes]:
    bodies = [c[1] for c in MALFORMED]
    bodies += [json.dumps(c[1]).encode() for c in WRONG]
    bodies += [b"[" * 100_000 + b"]" * 100_000, b'{"message": "a", "line": ' + b"9" * 5000 + b"}",
               b'{"message": "\\ud800"}', b'{"message": "a", "line": 1e999}', b'{"message": "a", "message": "b"}']
    return bodies


def test_hostile_payloads_leave_no_exception_and_no_dead_worker(client, server):
    children = {p.pid for p in master(server).children()}
    seen = len(server.events())
    ip = client_ip()
    bodies = hostile_bodies()
    for body in bodies:
        r = post_json(client, "/error", body, ip)
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text)
    assert_healthy(client)
    assert {p.pid for p in master(server).children()} == children
    wait_for(lambda: len([e for e in server.events("reply") if e.get("ip") == ip]) == len(bodies),
             what="a reply line for every hostile payload")
    for entry in server.events()[seen:]:
        assert entry["ev"] not in ("error", "worker exception", "worker exit"), entry
        if entry["ev"] == "reply":
            assert entry["status"] < 500, entry
