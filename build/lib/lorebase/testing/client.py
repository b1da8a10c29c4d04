"""A browser of a lorebase for tests: an HTTP client that keeps its session cookie, sends
its CSRF token with every state-changing request, speaks from an address of its own, and
makes accounts the way a person does (signup, the link of the verification mail, login)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Self

import httpx

from .mail import MailSink
from .servers import Lorebase

PASSWORD = "Lorebase-Test-Horse-42"  # long enough, not on the common-passwords list

_ips = itertools.count(1)


def fresh_ip() -> str:
    """A client address of its own (10.200.0.1 and up), so per-IP rate limits never carry
    over between clients. The test servers trust 127.0.0.1 as a proxy, so X-Real-IP speaks
    for the client."""
    n = next(_ips)
    return f"10.{200 + n // 62500 % 50}.{n // 250 % 250}.{n % 250 + 1}"


class Client:
    """One browser of `lore` (a Lorebase, or a lorebase's URL): its cookies (the session's
    among them) kept between requests, the CSRF token of its login sent as X-CSRF-Token with
    every request but GET and HEAD.

    `client.account("ada")` signs ada up, verifies her email through the captured mail and
    logs her in: the client then holds her session. Each step is a method of its own
    (`signup`, `verify`, `login`, `logout`, `destroy`) that returns the reply unchecked, for
    tests of the steps themselves."""

    def __init__(self, lore: Lorebase | str, mail: MailSink | None = None, ip: str | None = None,
                 timeout: float = 30.0):
        self.url = lore if isinstance(lore, str) else lore.url
        self.mail = mail
        self.ip = ip or fresh_ip()
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers={"x-real-ip": self.ip})
        self.csrf: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        """One request (httpx's arguments: `json`, `content`, `files`, `params`, `headers`...)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if self.csrf and method.upper() not in ("GET", "HEAD"):
            headers.setdefault("x-csrf-token", self.csrf)
        return self.http.request(method, path, json=json, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    # -- accounts, as a person makes them --------------------------------------------------

    def signup(self, username: str, password: str = PASSWORD, email: str | None = None) -> httpx.Response:
        """POST /auth/signup (email: `<username>@example.com` unless given)."""
        return self.post("/auth/signup", {"username": username, "email": email or f"{username}@example.com",
                                          "password": password})

    def verify(self, email: str, password: str = PASSWORD) -> httpx.Response:
        """POST /auth/verifyEmail with the token of the newest verification mail to `email`
        (waited for in the captured mail)."""
        assert self.mail is not None, "Client(lore, mail): verifying takes the captured mail"
        count = len([m for m in self.mail.to(email) if "verify" in str(m["Subject"]).lower()]) or 1
        token = MailSink.token(self.mail.wait_for(email, "verify", count=count))
        return self.post("/auth/verifyEmail", {"token": token, "password": password})

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        """POST /auth/login; on 200 the client holds the session and its CSRF token."""
        r = self.post("/auth/login", {"username": username, "password": password})
        if r.status_code == 200:
            self.csrf = r.json()["csrf"]
        return r

    def logout(self) -> httpx.Response:
        r = self.post("/auth/logout", {})
        self.csrf = None
        return r

    def destroy(self, password: str = PASSWORD) -> httpx.Response:
        """POST /auth/destroy from this client's session: the account and all its data go."""
        r = self.post("/auth/destroy", {"password": password})
        if r.status_code == 200:
            self.csrf = None
        return r

    def account(self, username: str, password: str = PASSWORD, email: str | None = None) -> Self:
        """Signed up, verified and logged in as `username` (each step must answer 200)."""
        email = email or f"{username}@example.com"
        steps: tuple[tuple[str, Callable[[], httpx.Response]], ...] = (
            ("signup", lambda: self.signup(username, password, email)),
            ("verify", lambda: self.verify(email, password)),
            ("login", lambda: self.login(username, password)))
        for step, run in steps:
            done = run()
            assert done.status_code == 200, f"{step} of {username}: {done.status_code} {done.text[:300]}"
        return self
