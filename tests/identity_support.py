"""Helpers of the identity tests: a client that keeps its own session cookie and CSRF token
(and checks every reply it gets against the cookie and cache rules), users made and
removed through the routes, dedicated instances with other settings.

Nothing here reaches into lorebase: users are created with POST /auth/signup, verified
with the token of the mail the SMTP sink received, and deleted with POST /auth/destroy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lorebase.identity import keys as idkeys

from .lore import Lorebase, MailSink, topology_redis, wait_for

COOKIE = "lorebase"
SECURE_COOKIE = "__Host-lorebase"  # with Secure cookies (an https BASE_URL) the name is prefixed
DEVICE_COOKIE = "lorebase-device"  # the device cookie a login sets (the browser was seen to log in)
SECURE_DEVICE_COOKIE = "__Host-lorebase-device"
PASSWORD = "Correct-Horse-7-Battery"  # fixed, long enough, not a common password
JSON_TYPE = {"content-type": "application/json"}

# every password, CSRF token and session id the identity tests used: none may be logged
SECRETS: set[str] = set()

_ips = itertools.count(1)


def fresh_ip() -> str:
    """A client address of its own (10.77.0.0/16), so per-IP limits never leak between tests.
    The test servers trust 127.0.0.1 as a proxy, so X-Real-IP speaks for the client."""
    n = next(_ips)
    return f"10.77.{n // 250}.{n % 250 + 1}"


def assert_error(response: httpx.Response, status: int, code: str, path: str | None = None,
                 message: str | None = None) -> None:
    """The reply is `status` with exactly {"error": code} (plus "path" when given), and the
    words of its "message" when given (a reply may carry one either way)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    expected: dict[str, Any] = {"error": code}
    if path is not None:
        expected["path"] = path
    body = response.json()
    said = body.pop("message", None)
    assert body == expected
    if message is not None:
        assert said == message, said


# -- cookies ----------------------------------------------------------------------------


def session_cookies(response: httpx.Response) -> list[str]:
    """The Set-Cookie headers of the reply that set or clear the session cookie."""
    return [h for h in response.headers.get_list("set-cookie")
            if h.split("=", 1)[0].strip() in (COOKIE, SECURE_COOKIE)]


def device_cookies(response: httpx.Response) -> list[str]:
    """The Set-Cookie headers of the reply that set the device cookie."""
    return [h for h in response.headers.get_list("set-cookie")
            if h.split("=", 1)[0].strip() in (DEVICE_COOKIE, SECURE_DEVICE_COOKIE)]


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1].strip()


def cookie_attributes(header: str) -> dict[str, str]:
    """Attribute name (lower-cased) → value ("" for flags) of one Set-Cookie header."""
    attrs: dict[str, str] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        assert name not in attrs, f"attribute {name} twice in {header!r}"
        attrs[name] = value.strip()
    return attrs


def check_cookie(header: str, secure: bool) -> None:
    """S1: HttpOnly; Path=/; SameSite=Lax; Secure exactly when the base URL is https; a set
    cookie expires far in the future, a cleared one has Max-Age=0."""
    attrs = cookie_attributes(header)
    assert "httponly" in attrs, header
    assert attrs.get("path") == "/", header
    assert attrs.get("samesite", "").lower() == "lax", header
    assert ("secure" in attrs) == secure, header
    assert "domain" not in attrs, header  # host-only
    if cookie_value(header):
        assert "max-age" not in attrs, header
        expires = parsedate_to_datetime(attrs["expires"])
        assert expires.year >= time.gmtime().tm_year + 50, header
    else:
        assert attrs.get("max-age") == "0", header


def forge(sid: str, key: bytes) -> str:
    """A cookie value `<sid>.<signature>` signed with `key` (HMAC-SHA256, urlsafe base64)."""
    mac = hmac.new(key, sid.encode(), hashlib.sha256).digest()
    return f"{sid}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


# -- a client ---------------------------------------------------------------------------

_UNSET: Any = object()
_TLS = ssl.create_default_context()  # one, shared: making one per client costs 30 ms


class Api:
    """One browser of a lorebase: its own address, the session cookie it was given (sent
    explicitly, so a test can also send any other), its CSRF token, and the device cookie its
    last good login set (sent with every request, as a browser does; `device` to change it).

    Every reply it gets is checked: never a 500, every session Set-Cookie has the right
    attributes (S1), a reply that sets a cookie or carries a CSRF token is no-store, and
    no reply carries a password hash or the session id."""

    def __init__(self, lore: Lorebase, ip: str | None = None, secure: bool = False):
        self.lore = lore
        self.http = httpx.Client(base_url=lore.url, timeout=30, verify=_TLS)
        self.ip = ip or fresh_ip()
        self.secure = secure
        self.cookie: str | None = None
        self.csrf: str | None = None
        self.device: str | None = None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @property
    def sid(self) -> str | None:
        return self.cookie.rpartition(".")[0] if self.cookie else None

    def request(self, method: str, path: str, body: Any = _UNSET, *, content: bytes | None = None,
                headers: dict[str, str] | None = None, cookie: Any = _UNSET) -> httpx.Response:
        sent = {"x-real-ip": self.ip}
        if body is not _UNSET:
            content = json.dumps(body).encode()
        if content is not None:
            sent.update(JSON_TYPE)
        explicit = cookie is not _UNSET  # a one-off cookie: what the reply sets is not kept
        cookie = self.cookie if not explicit else cookie
        jar = []
        if cookie is not None:
            jar.append(f"{SECURE_COOKIE if self.secure else COOKIE}={cookie}")
        if self.device is not None:
            jar.append(f"{SECURE_DEVICE_COOKIE if self.secure else DEVICE_COOKIE}={self.device}")
        if jar:
            sent["cookie"] = "; ".join(jar)
        sent.update(headers or {})
        r = self.http.request(method, path, content=content, headers=sent)
        self.http.cookies.clear()  # the cookie is ours to send, not the jar's
        self.check(r)
        set_cookies = session_cookies(r)
        if set_cookies and not explicit:
            self.cookie = cookie_value(set_cookies[-1]) or None
            if self.cookie:
                SECRETS.add(self.cookie.rpartition(".")[0])
        for header in device_cookies(r):
            self.device = cookie_value(header) or None
            if self.device:
                SECRETS.add(self.device)
        return r

    def check(self, r: httpx.Response) -> None:
        assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
        set_cookies = session_cookies(r)
        assert len(set_cookies) <= 1, set_cookies
        for header in set_cookies:
            check_cookie(header, self.secure)
            assert header.split("=", 1)[0] == (SECURE_COOKIE if self.secure else COOKIE), header
        is_json = r.content and r.headers.get("content-type", "").startswith("application/json")
        body = r.json() if is_json else None
        carries_csrf = isinstance(body, dict) and isinstance(body.get("csrf"), str)  # null: logged out
        if set_cookies or carries_csrf:
            assert r.headers.get("cache-control") == "no-store", (r.request.url, r.status_code, r.headers)
        if carries_csrf:
            SECRETS.add(body["csrf"])
        assert "$argon2" not in r.text, r.text[:300]
        sids = [self.sid] + [cookie_value(h).rpartition(".")[0] for h in set_cookies]
        for sid in sids:
            if sid:  # S9: the session id travels in the cookie only
                assert sid not in r.text, "the session id is in a reply body"
                assert sid not in str(r.headers.get("location", "")), "the session id is in a URL"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = _UNSET, csrf: bool = False, **kw: Any) -> httpx.Response:
        """POST JSON; with csrf=True the body (a dict) gets this session's token in `csrf`."""
        if csrf:
            assert self.csrf is not None, "not logged in"
            body = {**({} if body is _UNSET else body), "csrf": self.csrf}
        return self.request("POST", path, body, **kw)

    def login(self, login: str, password: str) -> httpx.Response:
        remember(password)
        r = self.post("/auth/login", {"username": login, "password": password})
        if r.status_code == 200:
            assert set(r.json()) == {"csrf"}, r.json()
            self.csrf = r.json()["csrf"]
            assert session_cookies(r), "login set no cookie"
        return r

    def ok_login(self, user: User) -> Api:
        r = self.login(user.name, user.password)
        assert r.status_code == 200, r.text
        return self


# -- users ------------------------------------------------------------------------------


@dataclass
class User:
    name: str
    email: str
    password: str = PASSWORD
    gone: bool = False
    apis: list[Api] = field(default_factory=list)


def remember(password: str) -> None:
    if len(password) >= 8:  # shorter ones are refused before anything could log them
        SECRETS.add(password)


def signup_body(name: str, email: str | None = None, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    remember(password)
    return {"username": name, "email": email or f"{name}@example.com", "password": password, **extra}


class Users:
    """Makes users through the routes and destroys, at the end, those a test left.
    `users.new("s_x_1")` signs up s_x_1 (from an address of its own); verified=True also
    redeems the mail's token; login=True returns a logged-in Api as `user.apis[0]`."""

    def __init__(self, lore: Lorebase, mail: MailSink, secure: bool = False):
        self.lore = lore
        self.mail = mail
        self.secure = secure
        self.made: list[User] = []
        self.apis: list[Api] = []

    def __enter__(self) -> Users:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for user in self.made:
                if not user.gone:
                    self.destroy(user)
        finally:
            for api in self.apis:
                api.close()

    def api(self, ip: str | None = None) -> Api:
        api = Api(self.lore, ip, self.secure)
        self.apis.append(api)
        return api

    def new(self, name: str, password: str = PASSWORD, email: str | None = None, verified: bool = False,
            login: bool = False) -> User:
        user = User(name, email or f"{name}@example.com", password)
        r = self.api().post("/auth/signup", signup_body(name, user.email, password))
        assert r.status_code == 200, r.text
        assert r.json() == {}
        self.made.append(user)
        if verified:
            self.verify(user)
        if login:
            self.session(user)
        return user

    def track(self, name: str, email: str, password: str = PASSWORD) -> User:
        """A user the test signed up itself, to be destroyed at the end like the others."""
        user = User(name, email, password)
        self.made.append(user)
        return user

    def barrier(self, user: User) -> None:
        """Wait until every mail queued so far is sent: the outbox is first in, first out
        with one sender, so once a reset mail asked for now arrives, all before it are out.
        (Each call costs one of the user's 5 reset mails an hour.)"""
        before = len(self.reset_mails(user))
        r = self.api().post("/auth/recover", {"username": user.name})
        assert r.status_code == 200, r.text
        self.mail.wait_for(user.email, "reset your password", count=before + 1)

    def reset_mails(self, user: User) -> list[Any]:
        return [m for m in self.mail.to(user.email) if "reset your password" in str(m["Subject"]).lower()]

    def verify(self, user: User) -> None:
        token = MailSink.token(self.mail.wait_for(user.email, "verify"))
        api = self.api()
        r = api.post("/auth/verifyEmail", {"token": token, "password": user.password})
        assert r.status_code == 200, r.text
        # a verification proved with the password logs in: end that session, so a test counts
        # only the sessions it made
        api.csrf = r.json()["csrf"]
        assert api.post("/auth/logout", {}, csrf=True).status_code == 200

    def session(self, user: User, ip: str | None = None) -> Api:
        """A new logged-in client of `user`."""
        api = self.api(ip).ok_login(user)
        user.apis.append(api)
        return api

    def destroy(self, user: User) -> None:
        """POST /auth/destroy from a live session of the user, or a new one."""
        for api in [*user.apis, None]:
            if api is None:
                api = self.session(user)
            r = api.post("/auth/destroy", {"password": user.password}, csrf=True)
            if r.status_code == 200:
                assert r.json() == {}
                user.gone = True
                return
        raise AssertionError(f"could not destroy {user.name}: {r.status_code} {r.text}")


@contextmanager
def dedicated(tmp_path_factory: pytest.TempPathFactory, mail: MailSink, name: str,
              **overrides: Any) -> Iterator[Lorebase]:
    """A lorebase of its own (two workers, mail to the sink, 127.0.0.1 trusted as a proxy)
    with other settings; stopped at the end, which must exit 0."""
    settings: dict[str, Any] = {"TRUSTED_PROXIES": "127.0.0.1", "MAIL_URL": mail.url}
    settings.update(overrides)
    base = Path(tmp_path_factory.mktemp(name))
    with topology_redis(base, settings) as on, Lorebase(base / "data", **on).running() as lore:
        yield lore
    assert_no_secret_logged(lore)


def assert_no_secret_logged(lore: Lorebase) -> None:
    """C3: no password, CSRF token or session id any identity test used is in the log."""
    log = lore.log_text()
    leaked = sorted(s for s in SECRETS if s in log)
    assert not leaked, f"secrets in the log of {lore.url}: {leaked[:5]}"


def token_key(kind: str, token: str) -> str:
    """Where a one-time token is kept: under its user (the token is `<username>.<random>`),
    its SHA-256 the value, never the token itself."""
    return idkeys.token(kind, token.rpartition(".")[0])


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def wait_gone(lore: Lorebase, key: str, timeout: float = 10.0) -> None:
    """Poll Redis until `key` has expired."""
    wait_for(lambda: not lore.redis().exists(key), timeout, 0.05, f"{key} to expire")


def worker_cpu(lore: Lorebase) -> dict[int, float]:
    """CPU seconds used so far by each worker (the master's children named
    `lorebase: worker<N>`), by pid."""
    assert lore.proc is not None
    out = {}
    for child in psutil.Process(lore.proc.pid).children():
        try:
            if " ".join(child.cmdline()).startswith("lorebase: worker"):
                times = child.cpu_times()
                out[child.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return out
