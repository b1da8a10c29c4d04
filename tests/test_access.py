"""Who may call what (AC1: every route x {anonymous, user, admin}), what a client cannot
give itself (AC3), and users written atomically with their indexes (D5)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import PASSWORD, Api, Users, assert_error, dedicated, signup_body

ANON, USER, ADMIN = "anonymous", "user", "admin"
OK = (200, None)
WRONG = "Wrong-Password-9"


def same(expected: tuple[int, str | None]) -> dict[str, tuple[int, str | None]]:
    return {ANON: expected, USER: expected, ADMIN: expected}


def private(user: tuple[int, str | None], admin: tuple[int, str | None] | None = None) -> dict:
    return {ANON: (403, "nocookie"), USER: user, ADMIN: admin or user}


def admin_only(admin: tuple[int, str | None]) -> dict:
    return {ANON: (403, "nocookie"), USER: (403, "admin"), ADMIN: admin}


# (method, path, body, expected reply per role); bodies that change nothing lasting
MATRIX = [
    ("GET", "/health", None, same(OK)),
    ("GET", "/ping", None, same(OK)),
    ("GET", "/openapi.json", None, same(OK)),
    ("POST", "/error", {"message": "x_access probe"}, same(OK)),
    ("POST", "/auth/signup", {"username": "ab", "email": "x_ab@example.com", "password": PASSWORD},
     same((400, "validation"))),
    ("POST", "/auth/verifyEmail", {"token": "x-unknown-token"}, same((403, "token"))),
    ("POST", "/auth/login", {"username": "x_nobody", "password": WRONG}, same((403, "auth"))),
    ("POST", "/auth/recover", {"username": "x_nobody"}, same(OK)),
    ("POST", "/auth/verify/resend", {"username": "x_nobody"}, same(OK)),
    ("POST", "/auth/reset", {"token": "x-unknown-token", "password": PASSWORD}, same((403, "token"))),
    ("GET", "/auth/csrf", None, private(OK)),
    ("GET", "/auth/me", None, private(OK)),
    ("POST", "/auth/logout", {}, private(OK)),
    ("POST", "/auth/changePassword", {"old": WRONG, "new": "Another-Horse-8"}, private((403, "auth"))),
    ("POST", "/auth/changeEmail", {"password": WRONG, "email": "x_new@example.com"}, private((403, "auth"))),
    ("POST", "/auth/destroy", {"password": WRONG}, private((403, "auth"))),
    ("GET", "/auth/sessions", None, private(OK)),
    ("POST", "/auth/sessions/end", {"handle": "0" * 32}, private((404, "notfound"))),
    ("GET", "/admin/invites", None, admin_only(OK)),
    ("POST", "/admin/invites", {"email": "x_root@example.com"}, admin_only((409, "email"))),
    ("POST", "/admin/invites/revoke", {"email": "x_nobody@example.com"}, admin_only((404, "invite"))),
    ("GET", "/admin/logs", None, admin_only(OK)),
    ("GET", "/admin/stats", None, admin_only(OK)),
    ("GET", "/admin/beat", None, admin_only(OK)),
    ("GET", "/admin/backups", None, admin_only(OK)),
    ("GET", "/admin/users", None, admin_only(OK)),
    ("GET", "/admin/users/x_nobody", None, admin_only((404, "user"))),
    ("POST", "/admin/revoke", {"username": "x_nobody"}, admin_only((404, "user"))),
    ("POST", "/admin/unlock", {"username": "x_nobody"}, admin_only((404, "user"))),
    ("POST", "/admin/disable", {"username": "x_nobody", "value": True}, admin_only((404, "user"))),
    ("POST", "/admin/admin", {"username": "x_nobody", "value": True}, admin_only((404, "user"))),
    ("POST", "/admin/delete", {"username": "x_nobody"}, admin_only((404, "user"))),
]


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "access", ADMINS="x_root@example.com") as lore:
        yield lore


@pytest.fixture(scope="module")
def people(lore, mail) -> Iterator[tuple[Users, dict]]:
    with Users(lore, mail) as made:
        accounts = {USER: made.new("x_plain", verified=True), ADMIN: made.new("x_root", verified=True)}
        yield made, accounts


def client_as(people: tuple[Users, dict], role: str) -> Api:
    """A fresh client: anonymous, or a new session of the user or the admin."""
    made, accounts = people
    return made.api() if role == ANON else made.session(accounts[role])


def send(api: Api, method: str, path: str, body: dict | None):
    if body is None:
        return api.request(method, path)
    # a logged-in client sends its token in the header with every POST, as a web app does
    return api.post(path, body, headers={"x-csrf-token": api.csrf} if api.csrf else None)


@pytest.mark.parametrize("role", [ANON, USER, ADMIN])
@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_access_matrix(lore, people, role, method, path, body, expected):
    """AC1"""
    status, code = expected[role]
    r = send(client_as(people, role), method, path, body)
    assert r.status_code == status, (role, method, path, r.status_code, r.text)
    if code is not None:
        assert r.json()["error"] == code, (role, path, r.text)


def test_every_route_of_the_api_is_in_the_matrix_or_refuses_by_its_section(lore, people):
    """A route added later is covered too: one behind the gatekeeper refuses an anonymous
    client, one behind the admin gatekeeper refuses a user."""
    doc = json.loads(client_as(people, ANON).get("/openapi.json").text)
    listed = {(m, p) for m, p, _, _ in MATRIX}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if (method.upper(), path) in listed:
                continue
            section = op["tags"][0]
            target = path.replace("{", "").replace("}", "")
            media = next(iter(op.get("requestBody", {}).get("content", {"application/json": None})))
            headers = {"content-type": media + ("; boundary=x" if media.startswith("multipart") else "")}
            for role in (ANON, USER):
                api = client_as(people, role)
                if api.csrf:
                    headers["x-csrf-token"] = api.csrf
                r = api.request(method.upper(), target, content=b"{}" if method != "get" else None,
                                headers=headers if method != "get" else None)
                if section in ("private", "admin") and role == ANON:
                    # refused: by the gatekeeper, or before it for a body of another type
                    assert r.status_code in (403, 415), (method, path, r.status_code, r.text)
                    assert r.json()["error"] == ("nocookie" if r.status_code == 403 else "type")
                if section == "admin" and role == USER:
                    assert_error(r, 403, "admin")


def test_me_tells_who_is_logged_in_and_nothing_secret(lore, people):
    for role, name in ((USER, "x_plain"), (ADMIN, "x_root")):
        api = client_as(people, role)
        r = api.get("/auth/me")
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "private, no-cache"
        me = r.json()
        assert me == {"username": name, "email": f"{name}@example.com", "created": me["created"],
                      "verified": True, "admin": role == ADMIN, "disabled": False}
        assert api.csrf not in r.text


# -- AC3: what a client cannot give itself --------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("admin", True), ("admin", 1), ("verified", True),
                                              ("disabled", False), ("role", "admin"), ("created", 0),
                                              ("hash", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA")])
def test_signup_refuses_fields_that_set_flags(lore, field, value):
    with Api(lore) as api:
        r = api.post("/auth/signup", signup_body("x_flags_1", **{field: value}))
        assert_error(r, 400, "validation", field)
    assert not any(lore.redis().exists(k) for k in (idkeys.user("x_flags_1"), idkeys.email("x_flags_1@example.com")))


def test_login_and_account_routes_refuse_extra_fields(lore, people):
    made, accounts = people
    api = made.session(accounts[USER])
    for path, body in [("/auth/login", {"username": "x_plain", "password": PASSWORD, "admin": True}),
                       ("/auth/changePassword", {"old": PASSWORD, "new": "Another-Horse-8", "admin": True}),
                       ("/auth/destroy", {"password": PASSWORD, "username": "x_root"}),
                       ("/auth/logout", {"all": True})]:
        assert_error(api.post(path, body, csrf=path != "/auth/login"), 400, "validation", list(body)[-1])
    stored = lore.redis().hgetall(idkeys.user("x_plain"))
    assert stored["admin"] == "0"
    assert api.get("/auth/csrf").status_code == 200


# -- D5: a user and its indexes, together ----------------------------------------------------


def check_user_indexes(db) -> set[str]:
    """Every user:<name> has email:<email> → name and is in `users`, and the other way round."""
    names = db.smembers(idkeys.USERS)
    prefix, _, suffix = idkeys.user("\0").partition("\0")
    hashes = {key[len(prefix):-len(suffix)] for key in db.scan_iter(idkeys.user("*"))}
    assert names == hashes, (names ^ hashes)
    for name in names:
        email = db.hget(idkeys.user(name), "email")
        assert db.hget(idkeys.user(name), "username") == name
        assert db.get(idkeys.email(email)) == name, (name, email)
    for key in db.scan_iter(idkeys.email("*")):
        name = db.get(key)
        assert db.hget(idkeys.user(name), "email") == key.split(":", 1)[1], (key, name)
    return names


def test_users_are_written_with_their_indexes_even_when_signups_race(server, mail):
    """D5: 8 signups of one username (different emails) and 8 of one email (different
    usernames), all at once: one of each wins, the others are 409, and no half user or
    orphan index is left."""
    same_name = [signup_body("x_race_1", f"x_race_1_{i}@example.com") for i in range(8)]
    same_email = [signup_body(f"x_race_e_{i}", "x_race_e@example.com") for i in range(8)]

    def signup(body: dict) -> tuple[int, dict]:
        with Api(server) as api:
            r = api.post("/auth/signup", body)
            return r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(signup, same_name + same_email))
    with Users(server, mail) as made:
        for body, (status, _) in zip(same_name + same_email, results, strict=True):
            if status == 200:
                made.track(body["username"], body["email"])
        by_name, by_email = results[:8], results[8:]
        assert sorted(s for s, _ in by_name) == [200] + [409] * 7, by_name
        assert sorted(s for s, _ in by_email) == [200] + [409] * 7, by_email
        assert {r["error"] for s, r in by_name if s == 409} == {"username"}
        assert {r["error"] for s, r in by_email if s == 409} == {"email"}
        db = server.redis()
        names = check_user_indexes(db)
        assert "x_race_1" in names and len([n for n in names if n.startswith("x_race_e_")]) == 1
        assert len(list(db.scan_iter(idkeys.email("x_race_1_*")))) == 1
        for user in made.made:
            made.session(user)
    names = check_user_indexes(server.redis())
    assert not [n for n in names if n.startswith("x_race")]
    assert not list(server.redis().scan_iter(idkeys.email("x_race*")))
