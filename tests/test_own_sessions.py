"""Each user's own sessions: GET /auth/sessions lists them (the current one marked, the login's
address and a short description of its browser, last use from the TTL), POST
/auth/sessions/end ends one by its handle, or all the others, at once."""

from __future__ import annotations

import time

import pytest

from .identity_support import Api, User, Users, assert_error
from .lore import Lorebase

pytestmark = pytest.mark.usefixtures("no_secret_logged")

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")


def login_with(users: Users, user: User, ip: str, agent: str) -> Api:
    """A new logged-in client of `user` from `ip` whose browser sends `agent`."""
    api = users.api(ip)
    r = api.request("POST", "/auth/login", {"username": user.name, "password": user.password},
                    headers={"user-agent": agent})
    assert r.status_code == 200, r.text
    api.csrf = r.json()["csrf"]
    user.apis.append(api)
    return api


def test_three_logins_are_listed_with_the_current_one_marked(users: Users) -> None:
    user = users.new("own_list_1")
    first = login_with(users, user, "10.9.0.1", FIREFOX)
    time.sleep(0.05)
    second = login_with(users, user, "10.9.0.2", SAFARI)
    third = users.session(user, "10.9.0.3")

    listed = first.get("/auth/sessions")
    assert listed.status_code == 200, listed.text
    assert listed.headers["cache-control"] == "no-store"
    sessions = listed.json()
    assert len(sessions) == 3
    assert [s["current"] for s in sessions].count(True) == 1
    by_ip = {s["ip"]: s for s in sessions}
    assert set(by_ip) == {"10.9.0.1", "10.9.0.2", "10.9.0.3"}
    assert by_ip["10.9.0.1"]["current"] and by_ip["10.9.0.1"]["agent"] == "Firefox on Linux"
    assert by_ip["10.9.0.2"]["agent"] == "Safari on iPhone"
    assert by_ip["10.9.0.3"]["agent"] == "httpx"
    now = time.time() * 1000
    for s in sessions:
        assert set(s) == {"handle", "created", "last", "ip", "agent", "current"}
        assert now - 60_000 < s["created"] <= s["last"] <= now + 1000
    # the one used last comes first: `first` was just used by this request
    assert sessions[0]["current"]
    # a handle is no session id: neither the cookie's id nor usable as one
    for api in (first, second, third):
        assert api.sid not in listed.text
    forged = first.get("/auth/me", cookie=sessions[1]["handle"])
    assert forged.status_code == 403


def test_ending_one_by_its_handle_ends_that_client_only(users: Users) -> None:
    user = users.new("own_end_1")
    mine = users.session(user, "10.9.1.1")
    other = users.session(user, "10.9.1.2")
    third = users.session(user, "10.9.1.3")
    target = next(s for s in mine.get("/auth/sessions").json() if s["ip"] == "10.9.1.2")

    ended = mine.post("/auth/sessions/end", {"handle": target["handle"]}, csrf=True)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"ended": 1}
    assert_error(other.get("/auth/me"), 403, "session")
    assert mine.get("/auth/me").status_code == 200
    assert third.get("/auth/me").status_code == 200
    assert {s["ip"] for s in mine.get("/auth/sessions").json()} == {"10.9.1.1", "10.9.1.3"}
    # the same handle again: no longer one of the user's sessions
    assert_error(mine.post("/auth/sessions/end", {"handle": target["handle"]}, csrf=True), 404, "notfound")


def test_all_others_leaves_only_the_current_one(users: Users) -> None:
    user = users.new("own_others_1")
    mine = users.session(user)
    others = [users.session(user) for _ in range(3)]
    ended = mine.post("/auth/sessions/end", {"others": True}, csrf=True)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"ended": 3}
    for api in others:
        assert_error(api.get("/auth/me"), 403, "session")
    listed = mine.get("/auth/sessions").json()
    assert len(listed) == 1 and listed[0]["current"]
    assert mine.post("/auth/sessions/end", {"others": True}, csrf=True).json() == {"ended": 0}


def test_another_users_handle_is_not_found_and_ends_nothing(users: Users) -> None:
    alice, bob = users.new("own_foreign_a"), users.new("own_foreign_b")
    a, b = users.session(alice), users.session(bob)
    bobs = b.get("/auth/sessions").json()[0]["handle"]
    assert_error(a.post("/auth/sessions/end", {"handle": bobs}, csrf=True), 404, "notfound")
    assert_error(a.post("/auth/sessions/end", {"handle": "0" * 32}, csrf=True), 404, "notfound")
    assert b.get("/auth/me").status_code == 200


def test_bad_requests_name_the_field(users: Users) -> None:
    user = users.new("own_bad_1")
    api = users.session(user)
    assert_error(api.post("/auth/sessions/end", {}, csrf=True), 400, "validation", "handle")
    current = api.get("/auth/sessions").json()[0]["handle"]
    assert_error(api.post("/auth/sessions/end", {"handle": current, "others": True}, csrf=True),
                 400, "validation", "others")
    # this session ends with /auth/logout, not here
    assert_error(api.post("/auth/sessions/end", {"handle": current}, csrf=True), 400, "validation", "handle")
    assert_error(api.post("/auth/sessions/end", {"handle": "x" * 65}, csrf=True), 400, "validation", "handle")
    # CSRF: without the token nothing ends
    assert_error(api.post("/auth/sessions/end", {"others": True}), 403, "csrf")
    assert api.get("/auth/me").status_code == 200


def test_a_handle_that_is_not_hex_is_400_not_500(users: Users) -> None:
    """A handle is 32 hex digits: a non-ASCII one (found by schemathesis) once reached the
    constant-time comparison, which takes only ASCII text, and was a 500."""
    api = users.session(users.new("own_bad_2"))
    for handle in ("é" * 32, "\u00e9", "0" * 31 + "\u0660", "ğ"):
        assert_error(api.post("/auth/sessions/end", {"handle": handle}, csrf=True), 400, "validation", "handle")
    assert api.get("/auth/me").status_code == 200


def test_without_a_session_both_routes_refuse(server: Lorebase, users: Users) -> None:
    api = users.api()
    assert_error(api.get("/auth/sessions"), 403, "nocookie")
    assert_error(api.post("/auth/sessions/end", {"others": True}), 403, "nocookie")


def test_a_password_change_keeps_the_listing_of_the_session_it_kept(users: Users) -> None:
    """changePassword moves the current session to the new generation: its ip and agent stay."""
    user = users.new("own_change_1")
    api = login_with(users, user, "10.9.2.1", FIREFOX)
    users.session(user)
    new_password = "another long passphrase 7"
    changed = api.post("/auth/changePassword", {"old": user.password, "new": new_password}, csrf=True)
    assert changed.status_code == 200, changed.text
    user.password = new_password
    listed = api.get("/auth/sessions").json()
    assert len(listed) == 1
    assert listed[0]["ip"] == "10.9.2.1" and listed[0]["agent"] == "Firefox on Linux" and listed[0]["current"]
