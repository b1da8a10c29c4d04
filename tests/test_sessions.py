"""Sessions end to end: the cookie and its attributes (S1), a new id at every login (S2),
no adopted ids (S3), tampered cookies (S4), unique ids and tokens (S5), logout (S6), idle
and absolute timeouts (S7), the session id never in a URL or body and the cache rules
(S9), garbage cookies (S10). S8 (admin revoke/disable) is in test_admin.py."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lorebase.identity import keys as idkeys

from .identity_support import (
    COOKIE,
    PASSWORD,
    Api,
    Users,
    assert_error,
    check_cookie,
    cookie_value,
    dedicated,
    forge,
    session_cookies,
    signup_body,
    worker_cpu,
)
from .lore import MailSink, wait_for

TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # 256 bits, urlsafe base64


pytestmark = pytest.mark.usefixtures("no_secret_logged")


# -- S1, S9: the cookie and the cache rules -------------------------------------------------


def test_login_sets_a_host_only_httponly_lax_cookie_that_expires_far_away(server, users):
    user = users.new("s_cookie_1")
    api = users.api()
    r = api.login(user.name, PASSWORD)
    assert r.status_code == 200
    [header] = session_cookies(r)
    check_cookie(header, secure=False)
    assert "secure" not in header.lower()
    assert r.headers["cache-control"] == "no-store"
    sid, _, signature = cookie_value(header).rpartition(".")
    owner, colon, token = sid.partition(":")  # the id carries its user: the gatekeeper reads both at once
    assert owner == "s_cookie_1" and colon and TOKEN.match(token) and signature
    assert r.json() == {"csrf": api.csrf} and TOKEN.match(api.csrf) and api.csrf != token
    csrf, created, gen, ip, agent = server.redis().get(idkeys.session(sid)).split(" ", 4)
    assert ip == api.ip and agent == "httpx"
    assert csrf == api.csrf and abs(int(created) / 1000 - time.time()) < 60
    assert gen == server.redis().hget(idkeys.user("s_cookie_1"), "gen") and len(gen) == 16
    assert server.redis().sismember(idkeys.sessions("s_cookie_1"), sid)


def test_cache_control_is_no_store_with_a_cookie_or_token_else_private(server, users):
    user = users.new("s_cache_1")
    api = users.session(user)
    r = api.get("/auth/csrf")
    assert r.json() == {"csrf": api.csrf}
    assert r.headers["cache-control"] == "no-store"
    assert not session_cookies(r)
    r = api.post("/auth/changePassword", {"old": "Wrong-Password-9", "new": "Another-Horse-8"}, csrf=True)
    assert_error(r, 403, "auth")
    assert r.headers["cache-control"] == "private, no-cache"
    assert_error(api.post("/auth/logout", {}), 403, "csrf")
    dead = api.cookie
    r = api.post("/auth/logout", {}, csrf=True)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    r = api.get("/auth/csrf", cookie=dead)  # clears the cookie: no-store too
    assert_error(r, 403, "session")
    assert session_cookies(r) and r.headers["cache-control"] == "no-store"
    r = api.get("/auth/csrf", cookie=dead + "x")
    assert_error(r, 403, "tampered")
    assert session_cookies(r) and r.headers["cache-control"] == "no-store"


@pytest.fixture(scope="module")
def https_lore(tmp_path_factory, mail):
    """BASE_URL https (behind a TLS proxy): cookies get Secure; links say https."""
    with dedicated(tmp_path_factory, mail, "https", BASE_URL="https://lore.example") as lore:
        yield lore


def test_https_base_url_marks_every_session_cookie_secure(https_lore, mail):
    with Users(https_lore, mail, secure=True) as made:
        user = made.new("s_secure_1")
        link = MailSink.text(mail.wait_for(user.email, "verify"))
        assert "https://lore.example/verify?token=" in link
        api = made.session(user)  # Api(secure=True) checks Secure on every Set-Cookie
        dead = api.cookie
        assert api.post("/auth/logout", {}, csrf=True).status_code == 200
        assert api.cookie is None
        for cookie, code in [(dead, "session"), (dead + "x", "tampered")]:
            r = api.get("/auth/csrf", cookie=cookie)
            assert_error(r, 403, code)
            [header] = session_cookies(r)
            assert "secure" in header.lower()
        again = made.session(user)
        r = again.post("/auth/destroy", {"password": PASSWORD}, csrf=True)
        assert r.status_code == 200
        assert "secure" in session_cookies(r)[0].lower()
        user.gone = True


# -- S2, S3: a new id at each login, never one the client chose -----------------------------


def test_login_gives_a_new_session_id_and_ends_the_one_before(server, users):
    user = users.new("s_fixation_1")
    other = users.new("s_fixation_2")
    api = users.api()
    assert api.login(user.name, PASSWORD).status_code == 200
    first_cookie, first_csrf = api.cookie, api.csrf
    assert api.login(user.name, PASSWORD).status_code == 200  # the same jar logs in again
    assert api.cookie != first_cookie and api.csrf != first_csrf
    assert_error(api.get("/auth/csrf", cookie=first_cookie), 403, "session")
    assert not server.redis().exists(idkeys.session(first_cookie.rpartition('.')[0]))
    assert api.get("/auth/csrf").json() == {"csrf": api.csrf}
    # logging in as someone else with the cookie ends that session too
    second_cookie = api.cookie
    assert api.login(other.name, PASSWORD).status_code == 200
    assert_error(api.get("/auth/csrf", cookie=second_cookie), 403, "session")
    assert server.redis().smembers(idkeys.sessions("s_fixation_1")) == set()
    # a failed login changes nothing
    third_cookie = api.cookie
    assert_error(api.login(other.name, "Wrong-Password-9"), 403, "auth")
    assert api.cookie == third_cookie
    assert api.get("/auth/csrf").status_code == 200


def test_a_client_chosen_or_unknown_session_id_is_never_adopted(server, users):
    user = users.new("s_adopt_1")
    api = users.api()
    dead = users.session(user)
    dead_cookie = dead.cookie
    assert dead.post("/auth/logout", {}, csrf=True).status_code == 200
    for chosen in ["attacker-chosen-id", "attacker-chosen-id.c2lnbmF0dXJl", dead_cookie,
                   forge("A" * 43, b"not the server's key")]:
        api.cookie = chosen  # as if the attacker planted it before the victim logs in
        r = api.login(user.name, PASSWORD)
        assert r.status_code == 200
        new_sid = api.sid
        assert new_sid and new_sid not in chosen
        assert not server.redis().exists(idkeys.session(chosen.rpartition('.')[0]))
        assert not server.redis().exists(idkeys.session(chosen))
        code = "session" if chosen == dead_cookie else "tampered"
        assert_error(api.get("/auth/csrf", cookie=chosen), 403, code)
        assert api.get("/auth/csrf").status_code == 200


# -- S4: tampered cookies ------------------------------------------------------------------


def tampered_variants(cookie: str) -> dict[str, str]:
    sid, _, signature = cookie.rpartition(".")

    def flip(text: str, at: int) -> str:
        c = text[at]
        return text[:at] + ("B" if c != "B" else "C") + text[at + 1:]

    return {
        "sid bit": flip(sid, 5) + "." + signature,
        "signature bit": sid + "." + flip(signature, 7),
        "wrong key": forge(sid, b"another key entirely, 48 bytes long.............."),
        "no separator": sid + signature,
        "no signature": sid + ".",
        "no sid": "." + signature,
        "sid only": sid,
        "extra dot": sid + "." + signature + ".x",
        "truncated signature": sid + "." + signature[:-2],
        "long": "a" * 300 + "." + signature,
        "odd characters": sid + ".~!*()'@$",
    }


def test_a_tampered_cookie_is_403_tampered_cleared_and_notified(server, users):
    user = users.new("s_tamper_1")
    live = users.session(user)
    for name, value in tampered_variants(live.cookie).items():
        with Api(server) as api:
            r = api.get("/auth/csrf", cookie=value)
            assert_error(r, 403, "tampered")
            [header] = session_cookies(r)
            assert cookie_value(header) == "", name
            assert_error(api.post("/auth/logout", {"csrf": live.csrf}, cookie=value), 403, "tampered")
            ip = api.ip
        wait_for(lambda ip=ip: any(e.get("ip") == ip for e in server.events("tampered")), 10, 0.05,
                 f"tampered event for {name}")
    assert live.get("/auth/csrf").json() == {"csrf": live.csrf}  # the real one lives on
    with Api(server) as api:
        assert_error(api.get("/auth/csrf", cookie=""), 403, "nocookie")


# -- S6: logout ----------------------------------------------------------------------------


def test_logout_ends_the_session_and_clears_the_cookie(server, users):
    user = users.new("s_logout_1")
    api, other = users.session(user), users.session(user)
    sid, cookie, csrf = api.sid, api.cookie, api.csrf
    assert_error(api.post("/auth/logout", {}), 403, "csrf")
    assert api.get("/auth/csrf").status_code == 200  # still alive
    r = api.post("/auth/logout", {}, csrf=True)
    assert r.status_code == 200 and r.json() == {}
    [header] = session_cookies(r)
    assert cookie_value(header) == "" and "max-age=0" in header.lower()
    assert api.cookie is None
    db = server.redis()
    assert not db.exists(idkeys.session(sid))
    assert db.smembers(idkeys.sessions("s_logout_1")) == {other.sid}
    for request in (lambda: api.get("/auth/csrf", cookie=cookie),
                    lambda: api.post("/auth/logout", {"csrf": csrf}, cookie=cookie),
                    lambda: api.post("/auth/changePassword", {"old": PASSWORD, "new": "Another-Horse-8", "csrf": csrf},
                                     cookie=cookie)):
        r = request()
        assert_error(r, 403, "session")
        assert cookie_value(session_cookies(r)[0]) == ""
    assert_error(api.get("/auth/csrf"), 403, "nocookie")
    assert other.get("/auth/csrf").json() == {"csrf": other.csrf}  # the other session lives on
    with Api(server) as fresh:
        assert fresh.login(user.name, PASSWORD).status_code == 200  # the password is unchanged


# -- S9: the session id never in a URL or a body ---------------------------------------------


def test_the_session_id_is_only_ever_in_the_cookie(server, mail, users):
    user = users.new("s_where_1")
    api = users.session(user)
    sid = api.sid
    bodies = [api.get("/auth/csrf").text,
              api.post("/auth/changePassword", {"old": PASSWORD, "new": "Another-Horse-8-Stable"}, csrf=True).text]
    user.password = "Another-Horse-8-Stable"
    users.barrier(user)
    mails = [MailSink.text(m) for m in mail.to(user.email)]
    assert len(mails) >= 3  # verify, password changed, reset
    for text in bodies + mails:
        assert sid not in text
    assert api.csrf not in "".join(mails)


# -- S10: garbage cookies --------------------------------------------------------------------


def raw_get(port: int, path: str, headers: list[bytes]) -> int:
    """The status of a GET sent byte for byte (so headers httpx would refuse go out as they are)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_the_session_cookie_is_found_among_other_cookies(server, users):
    live = users.session(users.new("s_jar_1"))
    mine = f"{COOKIE}={live.cookie}"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for header in (f"a=1; {mine}; b=2", f"{mine};theme=dark", f"flag; {mine}", f'{COOKIE}="{live.cookie}"',
                       f"{mine} ;  x=y", f"{mine}; {COOKIE}=stale.sig"):
            r = http.get("/auth/csrf", headers={"cookie": header})
            http.cookies.clear()
            assert r.status_code == 200 and r.json() == {"csrf": live.csrf}, (header, r.text)
        # of two with the name, the first counts (a browser sends the older cookie of a path first)
        r = http.get("/auth/csrf", headers={"cookie": f"{COOKIE}=stale.sig; {mine}"})
        assert r.status_code == 403 and r.json() == {"error": "tampered"}


def test_huge_or_garbage_cookie_headers_are_4xx_or_anonymous_never_500(server, users):
    user = users.new("s_garbage_1")
    live = users.session(user)
    valid = f"{COOKIE}={live.cookie}"
    garbage = [
        f"{COOKIE}=" + "a" * 100_000,
        valid + "; junk=" + "j" * 100_000,
        "x=" + "y" * 100_000 + "; " + valid,
        "; ".join(f"c{i}=v{i}" for i in range(5000)),
        f'{COOKIE}="unterminated',
        f"{COOKIE}",
        ";;;;;;",
        "=====",
        f"{COOKIE}=a.b.c",
        f"{COOKIE}=%00%ff",
        f"{COOKIE}=\\x00",
        f'{COOKIE}="{live.cookie}"',
        f"{COOKIE}={live.cookie}; {COOKIE}=other.x",
        f"{COOKIE}=other.x; {COOKIE}={live.cookie}",
        f"{COOKIE} = {live.cookie}",
        "$Version=1; " + valid,
    ]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for header in garbage:
            r = http.get("/auth/csrf", headers={"cookie": header})
            http.cookies.clear()
            assert r.status_code < 500, (header[:80], r.status_code)
            if r.status_code == 200:
                assert r.json() == {"csrf": live.csrf}, header[:80]  # the valid cookie, or none
            elif r.status_code == 403:
                assert r.json()["error"] in ("nocookie", "tampered", "session"), (header[:80], r.text)
            else:
                assert 400 <= r.status_code < 500, (header[:80], r.status_code)
    for raw in [b"Cookie: " + COOKIE.encode() + b"=\xff\xfe\xfd.\x80",
                b"Cookie: " + COOKIE.encode() + b"=" + "é".encode() * 50,
                b"Cookie: " + COOKIE.encode() + b"=a\x01b",
                b"Cookie: " + b"z" * 200_000]:
        assert 400 <= raw_get(server.port, "/auth/csrf", [raw]) < 500, raw[:40]
    assert live.get("/auth/csrf").json() == {"csrf": live.csrf}
    assert httpx.get(server.url + "/health").status_code == 200


# -- S7: idle and absolute timeouts ----------------------------------------------------------


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "short-sessions", SESSION_IDLE="2", SESSION_MAX="4") as lore:
        yield lore


def test_sessions_end_when_idle_and_at_their_maximum_age(short_sessions, mail):
    """SESSION_IDLE=2, SESSION_MAX=4. `busy` is used every 0.3 s: each use renews it, so it
    outlives the idle timeout, yet ends at the maximum age. `idle` is never used after its
    login: it ends after 2 s."""
    with Users(short_sessions, mail) as made:
        user = made.new("s_timeout_1")
        t0 = time.time()
        busy, idle = made.session(user), made.session(user)
        db = short_sessions.redis()
        assert 0 < db.ttl(idkeys.session(idle.sid)) <= 2
        idle_gone_at = None
        busy_alive_until = t0
        while True:
            r = busy.get("/auth/csrf")
            now = time.time()
            if r.status_code != 200:
                assert_error(r, 403, "session")
                died_at = now
                break
            busy_alive_until = now
            assert db.ttl(idkeys.session(busy.sid)) >= 1  # renewed by the use
            if idle_gone_at is None and not db.exists(idkeys.session(idle.sid)):
                idle_gone_at = now
            assert now - t0 < 8, "the busy session outlived SESSION_MAX"
            time.sleep(0.3)
        assert idle_gone_at is not None and 1 <= idle_gone_at - t0 <= 3.5, idle_gone_at - t0
        assert_error(idle.get("/auth/csrf"), 403, "session")
        # alive past the idle timeout thanks to the renewals, dead by the maximum age
        assert busy_alive_until - t0 > 2.2, busy_alive_until - t0
        assert 2.9 <= died_at - t0 <= 6, died_at - t0
        assert busy.sid is None or not db.exists(idkeys.session(busy.sid))
        assert made.session(user).get("/auth/csrf").status_code == 200  # a new login works


@pytest.fixture(scope="module")
def capped(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "capped", SESSIONS_PER_USER="3", ARGON2_MEMORY="8",
                   ARGON2_TIME="1") as lore:
        yield lore


def test_a_login_past_the_per_user_cap_ends_the_oldest_session(capped, mail):
    with Users(capped, mail) as made:
        user = made.new("s_capped_1")
        apis = [made.session(user) for _ in range(5)]
        for api in apis[:2]:
            assert_error(api.get("/auth/csrf"), 403, "session")
        for api in apis[2:]:
            assert api.get("/auth/csrf").status_code == 200
        db = capped.redis()
        assert db.smembers(idkeys.sessions("s_capped_1")) == {api.sid for api in apis[2:]}
        # a session that expired on its own leaves the set at the next login past the cap
        db.delete(idkeys.session(apis[2].sid))
        newest = made.session(user)
        assert db.smembers(idkeys.sessions("s_capped_1")) == {apis[3].sid, apis[4].sid, newest.sid}


# -- S5: unique ids and tokens -------------------------------------------------------------


@pytest.fixture(scope="module")
def fast(tmp_path_factory, mail):
    """Cheap argon2, so thousands of logins take seconds."""
    with dedicated(tmp_path_factory, mail, "fast", ARGON2_MEMORY="8", ARGON2_TIME="1") as lore:
        yield lore


def test_session_ids_and_csrf_tokens_are_unique_across_workers(fast):
    """S5: 5000 logins (100 users x 50), 16 at a time over both workers: 10,000 tokens."""
    names = [f"s_unique_{i:03d}" for i in range(100)]
    local = threading.local()
    clients: list[httpx.Client] = []

    def http() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=fast.url, timeout=30)
            clients.append(local.client)
        return local.client

    def post(path: str, body: dict, ip: str, cookie: str | None = None) -> httpx.Response:
        headers = {"x-real-ip": ip}
        if cookie:
            headers["cookie"] = f"{COOKIE}={cookie}"
        r = http().post(path, json=body, headers=headers)
        http().cookies.clear()
        return r

    def signup(i: int) -> int:
        return post("/auth/signup", signup_body(names[i]), f"10.78.{i}.1").status_code

    def login(n: int) -> tuple[str, str]:
        r = post("/auth/login", {"username": names[n % 100], "password": PASSWORD}, f"10.79.{n % 100}.1")
        assert r.status_code == 200, r.text
        [header] = session_cookies(r)
        return cookie_value(header).rpartition(".")[0], r.json()["csrf"]

    def destroy(i: int) -> int:
        r = post("/auth/login", {"username": names[i], "password": PASSWORD}, f"10.80.{i}.1")
        cookie = cookie_value(session_cookies(r)[0])
        body = {"password": PASSWORD, "csrf": r.json()["csrf"]}
        return post("/auth/destroy", body, f"10.80.{i}.1", cookie).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(signup, range(100))) == {200}
        try:
            cpu_before = worker_cpu(fast)
            start = time.perf_counter()
            pairs = list(pool.map(login, range(5000)))
            elapsed = time.perf_counter() - start
            cpu_after = worker_cpu(fast)
        finally:
            assert set(pool.map(destroy, range(100))) == {200}
            for client in clients:
                client.close()
    sids = [sid for sid, _ in pairs]
    tokens = [sid.partition(":")[2] for sid in sids] + [csrf for _, csrf in pairs]
    assert len(tokens) == 10_000
    assert len(set(tokens)) == 10_000, "a session id or CSRF token came twice"
    assert all(TOKEN.match(t) for t in tokens)
    assert elapsed < 60, elapsed
    assert len(cpu_before) == 2 and set(cpu_after) == set(cpu_before), (cpu_before, cpu_after)
    assert all(cpu_after[pid] - cpu_before[pid] > 0.2 for pid in cpu_before), (cpu_before, cpu_after)  # both served
    assert not list(fast.redis().scan_iter(idkeys.session("*"))), "destroy left sessions"
