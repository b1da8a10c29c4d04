"""The admin gatekeeper and the admin routes, on an instance with ADMINS set: who is an
admin (a verified email of ADMINS, or the flag), every admin route refusing a non-admin
(AC4), and revoke / disable / the admin flag taking effect on the next request (S8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import PASSWORD, Api, Users, assert_error, dedicated, session_cookies
from .lore import MailSink

# every admin route (the served OpenAPI document must list no other: see
# test_the_route_table_lists_every_admin_route), GETs first, the delete last
ROUTES = [
    ("GET", "/admin/users", None),
    ("GET", "/admin/users/{target}", None),
    ("POST", "/admin/invites", {"email": "invited-{target}@example.com"}),
    ("GET", "/admin/invites", None),
    ("POST", "/admin/invites/revoke", {"email": "invited-{target}@example.com"}),
    ("GET", "/admin/logs", None),
    ("GET", "/admin/stats", None),
    ("GET", "/admin/beat", None),
    ("GET", "/admin/backups", None),
    ("POST", "/admin/backups", {}),
    ("POST", "/admin/revoke", {"username": "{target}"}),
    ("POST", "/admin/unlock", {"username": "{target}"}),
    ("POST", "/admin/disable", {"username": "{target}", "value": True}),
    ("POST", "/admin/admin", {"username": "{target}", "value": True}),
    ("POST", "/admin/delete", {"username": "{target}"}),  # last: it deletes the target
]
POSTS = [(path, body) for method, path, body in ROUTES if method == "POST"]
USER_POSTS = [(path, body) for path, body in POSTS if "username" in body]  # those that name a user
PUBLIC_FIELDS = {"username", "email", "created", "verified", "admin", "disabled"}


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail):
    with dedicated(tmp_path_factory, mail, "admin", ADMINS="A_Root@example.com, a_claim@example.com") as lore:
        yield lore


@pytest.fixture(scope="module")
def root(lore, mail) -> Iterator[Api]:
    """A logged-in admin: the verified owner of an email of ADMINS."""
    with Users(lore, mail) as made:
        user = made.new("a_root", verified=True)
        yield made.session(user)


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


def call(api: Api, method: str, path: str, body: dict | None, target: str, **kw):
    if body is None:
        return api.request(method, path.format(target=target), **kw)
    body = {k: (v.format(target=target) if isinstance(v, str) else v) for k, v in body.items()}
    return api.post(path, body, csrf=api.csrf is not None, **kw)


def test_an_admins_email_makes_an_admin_only_once_verified(lore, users):
    """Anyone can sign up with an email of ADMINS; it grants nothing until the mail's link
    proves the address is theirs."""
    claimant = users.new("a_claim", email="a_claim@example.com")
    api = users.session(claimant)
    assert_error(api.get("/admin/users"), 403, "admin")
    assert_error(api.post("/admin/admin", {"username": "a_claim", "value": True}, csrf=True), 403, "admin")
    users.verify(claimant)
    assert api.get("/admin/users").status_code == 200  # the same session, on its next request


def test_every_admin_route_refuses_a_non_admin(lore, users, root):
    plain = users.new("a_plain_1", verified=True)
    api = users.session(plain)
    for method, path, body in ROUTES:
        for target in ("a_plain_1", "a_root"):
            assert_error(call(api, method, path, body, target), 403, "admin")
    with Api(lore) as anonymous:
        for method, path, body in ROUTES:
            assert_error(call(anonymous, method, path, body, "a_plain_1"), 403, "nocookie")
    stored = lore.redis().hgetall(idkeys.user("a_plain_1"))
    assert stored["admin"] == "0" and stored["disabled"] == "0"
    assert lore.redis().hget(idkeys.user("a_root"), "disabled") == "0"
    assert root.get("/auth/csrf").status_code == 200  # nothing was revoked
    for path, body in POSTS:  # the admin's own POSTs need its token too
        assert_error(root.post(path, {k: (v.format(target="a_plain_1") if isinstance(v, str) else v)
                                      for k, v in body.items()}), 403, "csrf")
        assert_error(root.post(path, {**{k: (v.format(target="a_plain_1") if isinstance(v, str) else v)
                                         for k, v in body.items()}, "csrf": "x" * 43}), 403, "csrf")
    assert lore.redis().exists(idkeys.user("a_plain_1"))


def test_the_route_table_lists_every_admin_route(lore):
    """A new admin route cannot be missed by the matrix above: the served route table (the
    OpenAPI document is made from the chain's routes) has no admin route ROUTES lacks."""
    with Api(lore) as api:
        paths = api.get("/openapi.json").json()["paths"]
    served = {(method.upper(), path) for path, item in paths.items() if path.startswith("/admin/")
              for method in item if method in ("get", "post", "put", "patch", "delete")}
    # /admin itself is the admin page, a public file like the web client's (its data is
    # all behind the admin routes): in the web section, never in the admin one
    assert set(paths["/admin"]) == {"get"} and paths["/admin"]["get"]["tags"] != ["admin"]
    assert [p for p in paths if p.startswith("/admin") and p != "/admin" and not p.startswith("/admin/")] == []
    assert served == {(method, path.replace("{target}", "{username}")) for method, path, _ in ROUTES}


def test_an_admin_gets_2xx_from_every_admin_route(lore, users, root):
    target = users.new("a_matrix_1", verified=True)
    users.session(target)
    for method, path, body in ROUTES:
        r = call(root, method, path, body, "a_matrix_1")
        assert 200 <= r.status_code < 300, (method, path, r.status_code, r.text)
    target.gone = True  # the last route deleted it
    assert not lore.redis().exists(idkeys.user("a_matrix_1"))


def test_the_user_list_shows_public_fields_only(lore, users, root):
    users.new("a_listed_1")
    r = root.get("/admin/users?q=a_")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "private, no-cache"
    assert set(r.json()) == {"users", "next"} and r.json()["next"] is None
    listed = {u["username"]: u for u in r.json()["users"]}
    assert all(set(u) == PUBLIC_FIELDS for u in listed.values()), r.json()
    assert listed["a_root"]["admin"] is True and listed["a_root"]["verified"] is True
    assert listed["a_listed_1"] == {"username": "a_listed_1", "email": "a_listed_1@example.com",
                                    "created": listed["a_listed_1"]["created"], "verified": False,
                                    "admin": False, "disabled": False}
    assert "argon2" not in r.text and "hash" not in r.text and "csrf" not in r.text


def test_the_admin_flag_takes_effect_on_the_next_request(lore, users, root):
    user = users.new("a_flag_1")
    api = users.session(user)
    assert_error(api.get("/admin/users"), 403, "admin")
    assert root.post("/admin/admin", {"username": " A_FLAG_1 ", "value": True}, csrf=True).json() == {}
    assert api.get("/admin/users").status_code == 200
    assert root.post("/admin/admin", {"username": "a_flag_1", "value": False}, csrf=True).json() == {}
    assert_error(api.get("/admin/users"), 403, "admin")
    assert lore.redis().hget(idkeys.user("a_flag_1"), "admin") == "0"


def test_disabling_ends_the_sessions_and_login_fails_like_a_wrong_password(lore, mail, users, root):
    """S8, A1"""
    user = users.new("a_disable_1")
    first, second = users.session(user), users.session(user)
    r = root.post("/admin/disable", {"username": "a_disable_1", "value": True}, csrf=True)
    assert r.status_code == 200 and r.json() == {}
    for api in (first, second):
        r = api.get("/auth/csrf")
        assert_error(r, 403, "session")
        assert session_cookies(r)
    shapes = []
    for login, password in [("a_disable_1", PASSWORD), ("a_disable_1", "Wrong-Password-9"),
                            ("a_disable_nobody", PASSWORD)]:
        with Api(lore) as api:
            r = api.login(login, password)
            assert_error(r, 403, "auth")
            shapes.append((r.status_code, r.content, sorted((k, v) for k, v in r.headers.items() if k != "date")))
    assert shapes[0] == shapes[1] == shapes[2]
    listed = {u["username"]: u for u in root.get("/admin/users?q=a_disable_1").json()["users"]}
    assert listed["a_disable_1"]["disabled"] is True
    # a password reset does not enable the account
    with Api(lore) as api:
        assert api.post("/auth/recover", {"username": "a_disable_1"}).status_code == 200
        token = MailSink.token(mail.wait_for(user.email, "reset your password"))
        assert api.post("/auth/reset", {"token": token, "password": "Another-Horse-8-Stable"}).status_code == 200
        user.password = "Another-Horse-8-Stable"
        assert_error(api.login("a_disable_1", user.password), 403, "auth")
    assert root.post("/admin/disable", {"username": "a_disable_1", "value": False}, csrf=True).status_code == 200
    users.session(user)  # enabled again: login works


def test_revoke_ends_every_session_of_the_user_on_the_next_request(lore, users, root):
    """S8"""
    user = users.new("a_revoke_1")
    bystander = users.new("a_revoke_2")
    sessions = [users.session(user) for _ in range(3)]
    other = users.session(bystander)
    r = root.post("/admin/revoke", {"username": "a_revoke_1"}, csrf=True)
    assert r.status_code == 200 and r.json() == {"revoked": 3}
    for api in sessions:
        assert_error(api.get("/auth/csrf"), 403, "session")
    assert not any(api.sid and lore.redis().exists(idkeys.session(api.sid)) for api in sessions)
    assert other.get("/auth/csrf").status_code == 200
    again = users.session(user)  # revoking ends sessions, not the account
    assert root.post("/admin/revoke", {"username": "a_revoke_1"}, csrf=True).json() == {"revoked": 1}
    assert_error(again.get("/auth/csrf"), 403, "session")


def test_admin_routes_answer_404_for_an_unknown_user(lore, root):
    for path, body in USER_POSTS:
        r = root.post(path, {**body, "username": "a_nobody"}, csrf=True)
        assert_error(r, 404, "user")
    for name in ("a_nobody", "A:B", "a%00b", "x" * 40):
        assert_error(root.get(f"/admin/users/{name}"), 404, "user")
