"""Hostile bodies end to end: a private route reads its JSON body only once the gatekeeper
let the request through (an anonymous client costs no parsing, whatever it sends); the
body limit of each route (4 KiB for the auth routes, 128 KiB for notes, JSON_LIMIT else);
patterns that match the whole value (no trailing newline slips through); a multipart body
bounded as a whole, and a part's type kept only when it is a clean media type; a body
that stops arriving (408); the `__Host-` cookie of an https BASE_URL."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .files_support import COOKIE, MULTIPART_TYPE, blob, drip_until_closed, multipart, part, read_reply
from .files_support import user as files_user
from .identity_support import (
    SECURE_COOKIE,
    Api,
    Users,
    assert_error,
    cookie_attributes,
    dedicated,
    fresh_ip,
    session_cookies,
    signup_body,
    worker_cpu,
)
from .lore import Lorebase, wait_for

pytestmark = pytest.mark.usefixtures("no_secret_logged")

KIB = 1024
MIB = 1024 * KIB
AUTH_LIMIT = 4 * KIB  # every /auth/* route before the gatekeeper
NOTES_LIMIT = 128 * KIB  # POST /notes and /notes/update
DEFAULT_LIMIT = 16 * KIB  # JSON_LIMIT: a route without a limit of its own
FILE_LIMIT = 64 * KIB  # the dedicated instance's; its multipart body may be 64 KiB more
AUTH_ROUTES = ["/auth/signup", "/auth/login", "/auth/verifyEmail", "/auth/releaseEmail", "/auth/recover",
               "/auth/reset"]
OCTET = "application/octet-stream"


def padded(value: object, size: int) -> bytes:
    """A JSON document of exactly `size` bytes: `value` followed by spaces."""
    body = json.dumps(value).encode()
    assert len(body) <= size
    return body.ljust(size)


def empty_objects(size: int) -> bytes:
    """`[{},{},...,{}]` of exactly `size` bytes (spaces after it when 3 does not divide size - 1):
    the most objects a body of that size can hold, each one a call of a Python parse hook."""
    body = b"[" + b",".join([b"{}"] * ((size - 1) // 3)) + b"]"
    return body.ljust(size)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, mail) -> Iterator[Lorebase]:
    """Quiet workers of its own; uploads of at most 64 KiB; heads and bodies get 1 s to arrive."""
    with dedicated(tmp_path_factory, mail, "hostile", FILE_LIMIT=FILE_LIMIT, BODY_TIMEOUT=1,
                   HEADER_TIMEOUT=1) as lore:
        yield lore


# -- limits per route ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", AUTH_ROUTES)
def test_auth_route_takes_a_body_of_4096_bytes_and_refuses_4097(server, path):
    with Api(server) as api:
        at_limit = api.request("POST", path, content=padded({}, AUTH_LIMIT))
        assert at_limit.request.headers["content-length"] == str(AUTH_LIMIT)
        assert at_limit.status_code == 400 and at_limit.json()["error"] == "validation", at_limit.text
        assert_error(api.request("POST", path, content=padded({}, AUTH_LIMIT + 1)), 413, "size")


def test_notes_take_128_kib_and_refuse_one_byte_more_even_anonymous(server, users):
    api = users.session(users.new("hb_notes_limit"))
    r = api.request("POST", "/notes", content=padded({"text": "at the limit", "csrf": api.csrf}, NOTES_LIMIT))
    assert r.status_code == 200, r.text
    note = r.json()["id"]
    over = padded({"text": "one byte over", "csrf": api.csrf}, NOTES_LIMIT + 1)
    assert_error(api.request("POST", "/notes", content=over), 413, "size")
    update = {"id": note, "text": "updated at the limit", "csrf": api.csrf}
    assert api.request("POST", "/notes/update", content=padded(update, NOTES_LIMIT)).status_code == 200
    assert_error(api.request("POST", "/notes/update", content=padded(update, NOTES_LIMIT + 1)), 413, "size")
    assert [(n["id"], n["text"]) for n in api.get("/notes").json()] == [(note, "updated at the limit")]
    with Api(server) as anonymous:  # the declared size is judged before the gatekeeper
        assert_error(anonymous.request("POST", "/notes", content=padded({}, NOTES_LIMIT)), 403, "nocookie")
        assert_error(anonymous.request("POST", "/notes", content=padded({}, NOTES_LIMIT + 1)), 413, "size")


def test_a_route_without_a_limit_of_its_own_takes_16_kib_and_refuses_one_byte_more(server, users):
    api = users.session(users.new("hb_default_limit"))
    body = {"id": "hb-no-such-note", "csrf": api.csrf}
    assert_error(api.request("POST", "/notes/delete", content=padded(body, DEFAULT_LIMIT)), 404, "notfound")
    assert_error(api.request("POST", "/notes/delete", content=padded(body, DEFAULT_LIMIT + 1)), 413, "size")
    with Api(server) as anonymous:
        assert_error(anonymous.request("POST", "/notes/delete", content=padded({}, DEFAULT_LIMIT)), 403, "nocookie")
        assert_error(anonymous.request("POST", "/notes/delete", content=padded({}, DEFAULT_LIMIT + 1)),
                     413, "size")


# -- the body is read after the gatekeeper --------------------------------------------------------


def test_anonymous_chunked_megabyte_of_empty_objects_is_403_nocookie_unread(client):
    """A little over 1 MiB, eight times the 128 KiB of /notes, with no length declared: read,
    it would be 413; unread, it gets the gatekeeper's 403. And JSON that does not parse is
    not parsed either: 403, not 400 json."""
    headers = {"content-type": "application/json", "x-real-ip": fresh_ip()}
    body = empty_objects(MIB + 64 * KIB)
    chunks = (body[i:i + 64 * KIB] for i in range(0, len(body), 64 * KIB))
    r = client.post("/notes", content=chunks, headers=headers)
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert_error(r, 403, "nocookie")
    unterminated = empty_objects(DEFAULT_LIMIT).rstrip(b"] ")
    assert_error(client.post("/notes", content=unterminated, headers=headers), 403, "nocookie")
    assert client.get("/health").status_code == 200


def test_an_unread_body_is_skipped_never_taken_for_the_next_request(server):
    """Anonymous POST /notes whose body is itself a request, then GET /ping, on one
    connection: two replies (403, 200), never one for the request inside the body."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: lore\r\n\r\n"
    for body in (inner, inner + b" " * (64 * KIB)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /notes HTTP/1.1\r\nHost: lore\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                      + b"GET /ping HTTP/1.1\r\nHost: lore\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"403", b"200"], data[:1000]
        assert data.endswith(b'{"pong":true}'), data[-200:]


def test_anonymous_empty_object_arrays_cost_the_workers_no_more_than_tiny_bodies(hostile):
    """200 anonymous POST /notes with 16 KiB of `[{},{},...]` (5461 objects) against 200 with
    a tiny body: the worker CPU seconds of the big batch stay under 3x the small one's (a
    body parsed before the gatekeeper, with a Python hook per object, costs several times
    more). CPU seconds come in 10 ms ticks: the small batch counts as at least 50 ms."""
    big, small = empty_objects(DEFAULT_LIMIT), b'{"text":"x"}'
    assert len(big) == DEFAULT_LIMIT and big.count(b"{}") == 5461
    headers = {"content-type": "application/json", "x-real-ip": fresh_ip()}

    def cost(body: bytes) -> float:
        before = worker_cpu(hostile)
        with httpx.Client(base_url=hostile.url, timeout=30) as http:
            for _ in range(200):
                assert_error(http.post("/notes", content=body, headers=headers), 403, "nocookie")
        after = worker_cpu(hostile)
        assert len(before) == 2 and set(after) == set(before), (before, after)
        return sum(after[pid] - before[pid] for pid in before)

    cost(small)  # warm up both workers
    small_cost = cost(small) + cost(small)
    big_cost = cost(big) + cost(big)
    assert big_cost < 3 * max(small_cost, 0.05), (big_cost, small_cost)


def test_logged_in_array_of_empty_objects_is_400_validation_and_a_duplicate_key_still_counts(server, users):
    api = users.session(users.new("hb_array"))
    csrf = {"x-csrf-token": api.csrf}
    r = api.request("POST", "/notes/delete", content=empty_objects(DEFAULT_LIMIT), headers=csrf)
    assert_error(r, 400, "validation", "")
    assert_error(api.request("POST", "/notes", content=empty_objects(NOTES_LIMIT), headers=csrf),
                 400, "validation", "")
    # a key given twice is refused, not settled by whichever value a parser keeps
    assert_error(api.request("POST", "/notes", content=b'{"text":"a","text":"b"}', headers=csrf),
                 400, "validation", "text")
    body = b'{"csrf":"' + api.csrf.encode() + b'","text":"a","t\\u0065xt":"b"}'  # the same key, escaped
    assert_error(api.request("POST", "/notes", content=body), 400, "validation", "text")
    assert api.get("/notes").json() == []


# -- full-match patterns ----------------------------------------------------------------------------


def test_signup_with_a_trailing_newline_in_email_or_username_is_400_validation(server, users):
    api = users.api()
    r = api.post("/auth/signup", signup_body("hb_newline", "hb_newline@example.com\n"))
    assert_error(r, 400, "validation", "email")
    r = api.post("/auth/signup", signup_body("hb_newline\n", "hb_newline@example.com"))
    assert_error(r, 400, "validation", "username")
    # neither made the account: the clean signup is the first
    r = users.api().post("/auth/signup", signup_body("hb_newline"))
    assert r.status_code == 200, r.text
    users.track("hb_newline", "hb_newline@example.com")


def test_a_file_id_or_cursor_with_a_trailing_newline_is_refused(server):
    data = blob(300, "newline")
    with files_user(server, "hb_newline_ids") as api:
        file_id = api.ok_upload(data, "kept.txt", "text/plain")["id"]
        note_id = api.post("/notes", {"text": "a note"}).json()["id"]
        r = api.get(f"/files/{file_id}%0A")
        assert_error(r, 404, "notfound")
        assert data not in r.content
        assert_error(api.get("/notes", params={"before": note_id + "\n"}), 400, "validation", "before")
        assert_error(api.get("/files", params={"before": file_id + "\n"}), 400, "validation", "before")
        assert_error(api.post("/files/delete", {"id": file_id + "\n"}), 400, "validation", "id")
        assert api.get(f"/files/{file_id}").content == data  # the id itself still works


# -- uploads --------------------------------------------------------------------------------------


def test_a_chunked_upload_with_a_megabyte_epilogue_is_413_and_stores_nothing(hostile):
    """The file part is 1000 bytes, well within FILE_LIMIT; the 1 MiB after the closing
    boundary takes the whole body past FILE_LIMIT + 64 KiB."""
    body = multipart(part("file", blob(1000, "epilogue"), "small.bin")) + b"epilogue " * (MIB // 9)
    with files_user(hostile, "hb_epilogue") as api:
        chunks = (body[i:i + 16 * KIB] for i in range(0, len(body), 16 * KIB))
        r = api.request("POST", "/files", content=chunks,  # type: ignore[arg-type]
                        headers={"content-type": MULTIPART_TYPE, "x-csrf-token": api.csrf or ""})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert_error(r, 413, "size")
        assert api.files() == []
        wait_for(lambda: list((hostile.data_dir / "tmp").iterdir()) == [], 5, what="DATA_DIR/tmp to be empty")
        assert not [p for p in (hostile.data_dir / "files").rglob("*") if p.is_file()]
        # the same file without the epilogue is stored
        assert api.ok_upload(blob(1000, "epilogue"), "small.bin")["size"] == 1000


@pytest.mark.parametrize(("declared", "stored"), [
    ("text/plain\x01evil", OCTET),
    ("image png", OCTET),
    ("image/png\x7f", OCTET),
    ("image/png; x", "image/png"),
    ("image/png", "image/png"),
])
def test_a_part_type_is_kept_only_when_it_is_a_clean_media_type(server, declared, stored):
    data = blob(200, "type")
    with files_user(server, "hb_part_type") as api:
        out = api.ok_upload(data, "typed.bin", declared)
        assert out["type"] == stored, (declared, out)
        assert [row["type"] for row in api.files()] == [stored]


# -- bodies that stop arriving ------------------------------------------------------------------------


def stalled(lore: Lorebase, head: bytes, first: bytes, declared: int = 100,
            meanwhile: Callable[[], object] = lambda: None) -> tuple[int, dict]:
    """Declare Content-Length `declared`, send `first` and nothing more (`meanwhile` runs
    then): the status and the JSON body of the reply, read on the connection left open.
    The reply says `Connection: close` and the server closes the connection: the rest of the
    body will never come, so the connection cannot carry another request."""
    with socket.create_connection(("127.0.0.1", lore.port), timeout=15) as s:
        s.sendall(head + f"Content-Length: {declared}\r\n\r\n".encode() + first)
        meanwhile()
        status, raw = read_reply(s)
        assert b"\r\nconnection: close\r\n" in raw.partition(b"\r\n\r\n")[0].lower() + b"\r\n", raw[:400]
        assert s.recv(1) == b"", "the server kept the connection open"
    return status, json.loads(raw.partition(b"\r\n\r\n")[2])


def test_a_json_body_that_stops_arriving_is_408_timeout(hostile):
    head = (b"POST /auth/login HTTP/1.1\r\nHost: lore\r\nX-Real-IP: " + fresh_ip().encode()
            + b"\r\nContent-Type: application/json\r\n")
    assert stalled(hostile, head, b'{"username') == (408, {"error": "timeout"})
    assert httpx.get(hostile.url + "/health", timeout=10).status_code == 200


def test_an_upload_that_stops_arriving_is_408_timeout_and_stores_nothing(hostile):
    tmp = hostile.data_dir / "tmp"
    with files_user(hostile, "hb_stalled") as api:
        head = (f"POST /files HTTP/1.1\r\nHost: lore\r\nX-Real-IP: {api.ip}\r\nCookie: {COOKIE}={api.cookie}\r\n"
                f"X-CSRF-Token: {api.csrf}\r\nContent-Type: {MULTIPART_TYPE}\r\n").encode()
        assert stalled(hostile, head, b"--lorebase") == (408, {"error": "timeout"})
        # stopped halfway through the file part: the temp file it was written to goes too
        body = multipart(part("file", blob(5000, "stalled"), "stalled.bin"))
        reply = stalled(hostile, head, body[:3000], len(body),
                        meanwhile=lambda: wait_for(lambda: list(tmp.iterdir()), 5, what="the upload's temp file"))
        assert reply == (408, {"error": "timeout"})
        assert api.files() == []
        assert list(tmp.iterdir()) == []


EARLY_REPLIES = [  # (the head of an anonymous POST whose body is never read, a valid piece of that body)
    (b"POST /notes HTTP/1.1\r\nHost: lore\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n"),
    (f"POST /files HTTP/1.1\r\nHost: lore\r\nContent-Type: {MULTIPART_TYPE}\r\n"
     f"Content-Length: {FILE_LIMIT + 60 * KIB}\r\n\r\n".encode(), b"x"),
]


@pytest.mark.parametrize(("head", "piece"), EARLY_REPLIES, ids=["chunked-notes", "sized-upload"])
def test_a_body_dripped_after_its_early_403_is_cut_at_the_body_deadline(hostile, head, piece):
    """The gatekeeper answers 403 `nocookie` before the body is read; the client goes on
    dripping that body. BODY_TIMEOUT=1: the server closes the connection within it (plus the
    0.5 s sweep), however long the body would be."""
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=15) as s:
        s.sendall(head.replace(b"Host: lore\r\n", b"Host: lore\r\nX-Real-IP: " + fresh_ip().encode() + b"\r\n"))
        status, raw = read_reply(s)
        assert status == 403 and raw.endswith(b'{"error":"nocookie"}'), raw[:400]
        assert drip_until_closed(s, piece, limit=10) < 4
    assert httpx.get(hostile.url + "/ping", timeout=10).json() == {"pong": True}


def test_a_request_head_that_trickles_in_is_408_and_the_connection_closes(hostile):
    """Slowloris: a byte of the head every 0.2 s keeps the connection busy but never ends the
    head. HEADER_TIMEOUT=1: the server answers 408 and closes, though bytes kept coming."""
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=15) as s:
        head = b"GET /ping HTTP/1.1\r\nHost: lore\r\nX-Padding: " + b"a" * 200
        sent = 0
        s.settimeout(0.2)
        reply = b""
        while sent < len(head):
            s.sendall(head[sent:sent + 1])
            sent += 1
            try:
                reply = s.recv(4096)
                break
            except TimeoutError:
                continue
        assert sent < len(head), "the whole trickled head was taken in"
        s.settimeout(15)
        while not reply.endswith(b"}"):
            more = s.recv(4096)
            assert more, reply
            reply += more
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert reply.endswith(b'{"error":"timeout"}')
        assert s.recv(1) == b""  # closed
    assert httpx.get(hostile.url + "/ping", timeout=10).json() == {"pong": True}


def test_a_connection_that_never_sends_a_request_is_closed(hostile):
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=15) as s:
        status, _ = read_reply(s)
        assert status == 408
        assert s.recv(1) == b""


def test_a_keep_alive_connection_serves_request_after_request(hostile):
    """The head deadline is per request: one connection that sends whole requests in time,
    each a little apart, is never cut (three requests over about 1.5 s, past HEADER_TIMEOUT)."""
    with httpx.Client(base_url=hostile.url, timeout=10) as http:
        for _ in range(3):
            assert http.get("/ping").json() == {"pong": True}
            time.sleep(0.5)  # the gap is the point of the test: idle between requests, not mid-head
        assert http.get("/ping").json() == {"pong": True}


# -- the cookie of an https site ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "https-host", BASE_URL="https://lore.example") as lore:
        yield lore


def test_https_session_cookie_is_host_prefixed_and_the_plain_name_is_not_accepted(https_lore, mail):
    with Users(https_lore, mail, secure=True) as made:
        user = made.new("hb_host_cookie")
        api = made.api()
        r = api.login(user.name, user.password)
        assert r.status_code == 200, r.text
        user.apis.append(api)
        [header] = session_cookies(r)
        assert header.split("=", 1)[0] == SECURE_COOKIE == "__Host-lorebase"
        attrs = cookie_attributes(header)
        assert "secure" in attrs and attrs.get("path") == "/" and "domain" not in attrs, header
        assert api.get("/auth/csrf").json() == {"csrf": api.csrf}  # sent as __Host-lorebase
        with httpx.Client(base_url=https_lore.url, timeout=10) as http:
            for cookie in (f"{COOKIE}={api.cookie}", f"__host-{COOKIE}={api.cookie}"):  # names are case-sensitive
                r = http.get("/auth/csrf", headers={"cookie": cookie, "x-real-ip": api.ip})
                assert_error(r, 403, "nocookie")
        assert api.get("/auth/csrf").status_code == 200  # the session lives on


def test_two_thousand_half_sent_requests_are_closed_and_health_answers_throughout(tmp_path):
    """Straight at lorebase (no nginx): 2,000 connections each send half a request head and
    stop. Each is closed within HEADER_TIMEOUT (2 s here, plus the 0.5 s sweep), and /health
    answers on new connections all the while."""
    import socket as socketmod
    import time as timemod

    lore = Lorebase(tmp_path / "data", HEADER_TIMEOUT="2", WORKER_CONNECTIONS="3000")
    lore.start()
    held: list[socketmod.socket] = []
    try:
        for _ in range(2000):
            s = socketmod.create_connection(("127.0.0.1", lore.port))
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
            s.settimeout(0)
            held.append(s)
        opened = timemod.monotonic()
        answered = 0
        open_left = len(held)
        while open_left and timemod.monotonic() - opened < 15:
            assert httpx.get(lore.url + "/health", timeout=5).status_code == 200
            answered += 1
            for s in list(held):
                try:
                    s.recv(4096)  # the 408, or the close
                except BlockingIOError:
                    continue  # still open
                except OSError:
                    pass
                held.remove(s)
                s.close()
            open_left = len(held)
        assert not held, f"{len(held)} half-sent requests still open after 15 s"
        assert answered >= 3
    finally:
        for s in held:
            s.close()
        assert lore.stop() == 0


def test_idle_keep_alive_connections_past_the_cap_make_room_for_new_clients(tmp_path):
    """WORKER_CONNECTIONS 20 with one worker: 60 clients each make a request and keep their
    connection idle. New clients are still served (idle ones are closed to make room);
    nothing crashes."""
    import socket as socketmod

    lore = Lorebase(tmp_path / "data", WORKERS="1", WORKER_CONNECTIONS="20")
    lore.start()
    idle: list[socketmod.socket] = []
    try:
        for _ in range(60):
            s = socketmod.create_connection(("127.0.0.1", lore.port))
            idle.append(s)
        for s in idle:
            s.sendall(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(10):
            assert httpx.get(lore.url + "/health", timeout=10).status_code == 200
        assert lore.proc is not None and lore.proc.poll() is None
    finally:
        for s in idle:
            s.close()
        assert lore.stop() == 0
