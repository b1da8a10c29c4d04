"""GET /auth/session: the pages' start-up question "am I logged in, and as whom?", answered
200 either way. `GET /auth/csrf` answers a visitor without a cookie 403 `nocookie`, which
is right for an API client but made every first visit of a page count and log a 4xx: the
admin's Errors chart and Logs screen filled with the pages' own question. This route sits
before the gatekeeper, runs the gatekeeper's own check, and turns "no session" into an
answer instead of an error; a forged cookie stays a 403 `tampered` (a security event)."""

from __future__ import annotations

from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..identity import users
from ..schema import Schema
from .account import Me
from .gate import NO_STORE, gatekeeper

LOGGED_OUT = {"csrf": None, "me": None}


class SessionOut(Schema):
    csrf: str | None
    me: Me | None


async def session(req: Request) -> Reply:
    try:
        await gatekeeper(req)
    except ApiError as error:
        if error.code == "nocookie":
            return reply(200, LOGGED_OUT, NO_STORE)
        if error.code == "session":  # a session that ended: its cookie is cleared, as the gatekeeper does
            return reply(200, LOGGED_OUT, {**error.headers, **NO_STORE})
        raise
    assert req.session is not None
    user = await req.app.current_user(req)
    if user is None:  # the account went while its session was read
        return reply(200, LOGGED_OUT, {"set-cookie": req.app.sessions.clear_cookie(), **NO_STORE})
    return reply(200, {"csrf": req.session["csrf"], "me": users.public(user, req.app.config.ADMINS)}, NO_STORE)


def routes() -> list[Route]:
    return [
        Route("GET", "/auth/session", session, section="auth", ok=SessionOut, replies={403: ["tampered"]},
              summary="Am I logged in? 200 with the CSRF token and who, or with nulls (never a 403 nocookie)"),
    ]
