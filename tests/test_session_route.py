"""GET /auth/session: the pages' "am I logged in?", 200 whether or not, over real HTTP on the
shared server; GET /auth/csrf keeps its 403 nocookie for API clients."""

from __future__ import annotations

from .identity_support import Api, Users, assert_error
from .lore import Lorebase


def test_the_session_route_answers_a_visitor_without_a_cookie_200_with_nulls(server: Lorebase) -> None:
    with Api(server) as anonymous:
        r = anonymous.get("/auth/session")
        assert r.status_code == 200, r.text
        assert r.json() == {"csrf": None, "me": None}
        assert r.headers["cache-control"] == "no-store"
        assert_error(anonymous.get("/auth/csrf"), 403, "nocookie")  # the API's contract stays


def test_the_session_route_gives_a_logged_in_user_the_csrf_token_and_who_they_are(
        server: Lorebase, users: Users) -> None:
    user = users.new("sr_alice", verified=True)
    with Api(server) as browser:
        browser.ok_login(user)
        r = browser.get("/auth/session")
        assert r.status_code == 200, r.text
        assert r.json()["csrf"] == browser.csrf == browser.get("/auth/csrf").json()["csrf"]
        assert r.json()["me"] == browser.get("/auth/me").json()
        assert r.json()["me"]["username"] == "sr_alice"


def test_the_session_route_answers_an_ended_session_200_with_nulls_and_clears_its_cookie(
        server: Lorebase, users: Users) -> None:
    user = users.new("sr_bob", verified=True)
    with Api(server) as browser:
        browser.ok_login(user)
        ended = browser.cookie
        assert browser.post("/auth/logout", {}, csrf=True).status_code == 200
        r = browser.get("/auth/session", cookie=ended)
        assert r.status_code == 200, r.text
        assert r.json() == {"csrf": None, "me": None}
        assert "Max-Age=0" in r.headers["set-cookie"]


def test_the_session_route_answers_a_forged_cookie_403_tampered(server: Lorebase) -> None:
    with Api(server) as forger:
        assert_error(forger.get("/auth/session", cookie="x" * 40 + ".forged"), 403, "tampered")
