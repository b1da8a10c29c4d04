"""CSRF and cross-site requests: every POST behind the gatekeeper carries the session's
token (C1, C2), never in the query string or the log (C3), cross-site requests are
refused (C4/C5), GET changes nothing, JSON routes refuse other content types (C6), and
no reply grants CORS to an arbitrary origin (C7)."""

from __future__ import annotations

import pytest

from lorebase.identity import keys as idkeys

from .identity_support import (
    PASSWORD,
    SECRETS,
    Api,
    assert_error,
    assert_no_secret_logged,
    fresh_ip,
)

# the POST routes behind the gatekeeper, each with a body that would pass the gates and
# do nothing harmful (a wrong password) or end only this session (logout)
PRIVATE_POSTS = [
    ("/auth/changePassword", {"old": "Wrong-Password-9", "new": "Another-Horse-8"}, 403, "auth"),
    ("/auth/destroy", {"password": "Wrong-Password-9"}, 403, "auth"),
    ("/auth/logout", {}, 200, None),
]
IDENTITY_POSTS = ["/auth/signup", "/auth/verifyEmail", "/auth/login", "/auth/recover", "/auth/reset",
                  "/auth/logout", "/auth/changePassword", "/auth/destroy", "/admin/revoke", "/admin/unlock",
                  "/admin/disable", "/admin/admin"]


pytestmark = pytest.mark.usefixtures("no_secret_logged")


def passes_gates(api: Api, path: str, body: dict, status: int, code: str | None, **kw) -> None:
    r = api.post(path, body, **kw)
    if code is None:
        assert r.status_code == status, r.text
    else:
        assert_error(r, status, code)


# -- C1, C2: the token -----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status", "code"), PRIVATE_POSTS)
def test_missing_short_foreign_or_wrong_type_token_is_403_csrf(server, users, path, body, status, code):
    name = "c_token_" + path.rsplit("/", 1)[1].lower()[:12]
    user = users.new(name)
    other_user = users.new(name + "_b")
    api, mine_too, foreign = users.session(user), users.session(user), users.session(other_user)
    wrong_tokens = ["", "x", api.csrf[:10], api.csrf[:-1], api.csrf + "x", api.csrf.swapcase(),
                    " " + api.csrf, mine_too.csrf, foreign.csrf, "é" * 43]
    assert_error(api.post(path, body), 403, "csrf")  # none at all
    for token in wrong_tokens:
        assert_error(api.post(path, {**body, "csrf": token}), 403, "csrf")
        if token == token.strip():  # (a header value loses its surrounding spaces)
            assert_error(api.post(path, body, headers={"x-csrf-token": token.encode()}), 403, "csrf")
    for token in [None, 1, 0, True, [api.csrf], {"csrf": api.csrf}, 1.5]:
        assert_error(api.post(path, {**body, "csrf": token}), 403, "csrf")
    assert api.get("/auth/csrf").json() == {"csrf": api.csrf}  # nothing happened
    # the right token, in the body or in the header, passes the gate
    passes_gates(api, path, body, status, code, headers={"x-csrf-token": api.csrf})
    if status != 200:
        passes_gates(api, path, body, status, code, csrf=True)


def test_the_token_dies_at_logout_and_a_new_one_comes_with_the_next_login(server, users):
    user = users.new("c_renew_1")
    api = users.session(user)
    old_csrf, old_cookie = api.csrf, api.cookie
    assert api.post("/auth/logout", {}, headers={"x-csrf-token": old_csrf}).status_code == 200
    assert api.login(user.name, PASSWORD).status_code == 200
    assert api.csrf != old_csrf
    assert_error(api.post("/auth/logout", {"csrf": old_csrf}), 403, "csrf")
    assert_error(api.post("/auth/logout", {"csrf": api.csrf}, cookie=old_cookie), 403, "session")
    assert api.get("/auth/csrf").json() == {"csrf": api.csrf}
    assert api.get("/auth/csrf").json() == {"csrf": api.csrf}  # reading it changes nothing


# -- C3: not in the query string, not in the log ------------------------------------------


def test_a_token_in_the_query_string_or_a_cookie_is_not_accepted(server, users):
    user = users.new("c_query_1")
    api = users.session(user)
    for query in (f"?csrf={api.csrf}", f"?x-csrf-token={api.csrf}", f"?csrf={api.csrf}&csrf={api.csrf}"):
        assert_error(api.post("/auth/logout" + query, {}), 403, "csrf")
    r = api.http.post("/auth/logout", content=b"{}", headers={
        "content-type": "application/json", "x-real-ip": api.ip,
        "cookie": f"lorebase={api.cookie}; csrf={api.csrf}; x-csrf-token={api.csrf}"})
    api.http.cookies.clear()
    assert_error(r, 403, "csrf")
    assert api.get("/auth/csrf").status_code == 200


def test_no_password_token_or_session_id_is_ever_logged(server, mail, users):
    """C3: after flows that fail with secrets in every place a request can hold them, none
    of the secrets of this test (or any identity test before it) is in the server's log."""
    user = users.new("c_log_1")
    api, other = users.session(user), users.session(user)
    secrets = {PASSWORD, "Wrong-Password-Logged-9", api.csrf, other.csrf, api.sid, other.sid}
    SECRETS.update(secrets)
    api.login(user.name, "Wrong-Password-Logged-9")
    api.post(f"/auth/logout?csrf={other.csrf}", {"csrf": other.csrf})
    api.post("/auth/logout", {}, headers={"x-csrf-token": other.csrf})
    api.post("/auth/changePassword", {"old": "Wrong-Password-Logged-9", "new": PASSWORD}, csrf=True)
    api.post("/auth/changePassword", {"old": PASSWORD, "new": PASSWORD + "\x00"}, csrf=True)
    api.post("/auth/verifyEmail", {"token": other.csrf})
    api.post("/auth/reset", {"token": other.csrf, "password": "Wrong-Password-Logged-9"})
    api.get("/auth/csrf", cookie=other.cookie + "x")  # tampered: notified with its path and ip
    api.get(f"/auth/csrf?token={other.csrf}&password={PASSWORD}")
    api.request("POST", "/auth/login", content=b'{"username": "c_log_1", "password": "Wrong-Password-Logged-9"')
    users.barrier(user)  # the tasks process has logged its mails too
    log = server.log_text()
    assert log, "no log at all"
    for secret in secrets:
        assert secret not in log, "a secret is in the log"
    assert_no_secret_logged(server)


# -- C4, C5: cross-site requests; GET changes nothing ------------------------------------


@pytest.mark.parametrize(("name", "headers"), [
    ("c_origin_https", {"origin": "https://evil.example"}),
    ("c_origin_http", {"origin": "http://evil.example"}),
    ("c_origin_null", {"origin": "null"}),
    ("c_origin_port", {"origin": "http://127.0.0.1:1"}),
    ("c_origin_suffix", {"origin": "http://127.0.0.1.evil.example"}),
    ("c_origin_scheme", {"origin": "SAME_HTTPS"}),  # the right host over another scheme
    ("c_origin_fetch", {"sec-fetch-site": "cross-site"}),
    ("c_origin_fetch_same", {"sec-fetch-site": "cross-site", "origin": "SAME"}),
])
def test_a_cross_site_request_is_403_origin_even_with_the_token(server, users, name, headers):
    user = users.new(name)
    api = users.session(user)
    same = {"SAME": server.url, "SAME_HTTPS": server.url.replace("http://", "https://")}
    sent = {k: same.get(v, v) for k, v in headers.items()}
    for path, body, _, _ in PRIVATE_POSTS:
        assert_error(api.post(path, body, csrf=True, headers=sent), 403, "origin")
    assert api.get("/auth/csrf").json() == {"csrf": api.csrf}  # still logged in


def test_same_origin_requests_pass(server, users):
    user = users.new("c_same_1")
    api = users.session(user)
    for headers in ({"origin": server.url}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"},
                    {"origin": server.url, "sec-fetch-site": "same-origin"}):
        passes_gates(api, "/auth/changePassword", PRIVATE_POSTS[0][1], 403, "auth", csrf=True, headers=headers)
    assert api.post("/auth/logout", {}, csrf=True, headers={"origin": server.url}).status_code == 200


def test_get_and_head_change_nothing(server, users):
    user = users.new("c_get_1")
    api = users.session(user)
    for path in IDENTITY_POSTS:
        for method in ("GET", "HEAD"):
            r = api.request(method, path + f"?csrf={api.csrf}&password={PASSWORD}&username={user.name}")
            assert r.status_code == 405, (method, path, r.status_code)
    csrf = api.get("/auth/csrf").json()
    assert api.get("/auth/csrf", headers={"origin": "https://evil.example"}).json() == csrf
    assert csrf == {"csrf": api.csrf}
    assert server.redis().smembers(idkeys.sessions("c_get_1")) == {api.sid}


# -- C6: other content types ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "content_type"), [
    ("c_type_plain", "text/plain"),
    ("c_type_form", "application/x-www-form-urlencoded"),
    ("c_type_multipart", "multipart/form-data; boundary=x"),
    ("c_type_charset", "text/plain;charset=UTF-8"),
])
def test_identity_routes_answer_other_content_types_with_415(server, users, name, content_type):
    """The body types a cross-site form can send without a preflight: all refused."""
    user = users.new(name)
    api = users.session(user)
    for path in IDENTITY_POSTS:
        body = f'{{"csrf": "{api.csrf}", "username": "{user.name}", "password": "{PASSWORD}"}}'.encode()
        r = api.request("POST", path, content=body,
                        headers={"content-type": content_type, "x-csrf-token": api.csrf})
        assert_error(r, 415, "type")
    assert api.get("/auth/csrf").status_code == 200


# -- C7: no CORS ------------------------------------------------------------------------------


def test_no_reply_grants_cors_to_another_origin(server, users):
    user = users.new("c_cors_1")
    api = users.session(user)
    evil = {"origin": "https://evil.example"}
    replies = [
        api.request("OPTIONS", "/auth/login", headers={**evil, "access-control-request-method": "POST",
                                                       "access-control-request-headers": "content-type"}),
        api.request("OPTIONS", "/auth/csrf", headers={**evil, "access-control-request-method": "GET"}),
        api.get("/auth/csrf", headers=evil),
        api.post("/auth/login", {"username": user.name, "password": "Wrong-Password-9"}, headers=evil),
        api.post("/auth/recover", {"username": "c_cors_nobody"}, headers={**evil, "x-real-ip": fresh_ip()}),
        api.get("/health", headers=evil),
        api.get("/admin/users", headers=evil),
    ]
    for r in replies:
        cors = {k: v for k, v in r.headers.items() if k.startswith("access-control-")}
        assert cors == {}, (r.request.method, r.request.url, cors)
