"""The auth routes that need a session (after the gatekeeper and CSRF): the CSRF token
("am I logged in?"), logout, change password, destroy the account."""

from __future__ import annotations

from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..identity import users
from ..mail import enqueue, password_changed_mail
from ..notify import notify
from ..schema import Schema, Text
from .auth import NO_STORE, Password, check_new_password


class Empty(Schema):
    pass


class ChangePassword(Schema):
    old: Password  # type: ignore[valid-type]
    new: Password  # type: ignore[valid-type]


class Destroy(Schema):
    password: Password  # type: ignore[valid-type]


class CsrfOut(Schema):
    csrf: Text(1, 100)  # type: ignore[valid-type]


async def csrf(req: Request) -> Reply:
    assert req.session is not None
    return reply(200, {"csrf": req.session["csrf"]}, NO_STORE)


class Me(Schema):
    username: str
    email: str
    created: int
    verified: bool
    admin: bool
    disabled: bool


async def me(req: Request) -> Reply:
    user = await req.app.current_user(req)
    if user is None:
        raise ApiError(403, "session")
    return reply(200, users.public(user, req.app.config.ADMINS))


async def logout(req: Request) -> Reply:
    assert req.session is not None
    await req.app.sessions.delete(req.app.db, req.session["id"], req.session["user"])
    return reply(200, {}, {"set-cookie": req.app.sessions.clear_cookie(), **NO_STORE})


async def _user_with_password(req: Request, password: str) -> dict[str, str]:
    user = await req.app.current_user(req)
    if user is None or not await req.app.passwords.verify(user["hash"], password):
        raise ApiError(403, "auth")
    return user


async def change_password(req: Request) -> Reply:
    data: ChangePassword = req.data
    app = req.app
    check_new_password(data.new, "new")
    user = await _user_with_password(req, data.old)
    assert req.session is not None
    # the new hash and a new generation in one step: every other session ends, a login
    # with the old password still in flight is refused, this session carries on
    if await users.set_password(app.db, app.sessions, user["username"], await app.passwords.hash(data.new),
                                keep=req.session["id"]) < 0:
        raise ApiError(403, "session")
    await enqueue(app.db, user["email"], *password_changed_mail(app.config.BASE_URL, user["username"]))
    notify("password changed", user=user["username"], ip=req.ip)
    return reply(200, {})


async def destroy(req: Request) -> Reply:
    data: Destroy = req.data
    app = req.app
    user = await _user_with_password(req, data.password)
    await app.destroy_user(user["username"])
    notify("destroy", user=user["username"], ip=req.ip)
    return reply(200, {}, {"set-cookie": app.sessions.clear_cookie(), **NO_STORE})


def routes() -> list[Route]:
    return [
        Route("GET", "/auth/csrf", csrf, section="private", ok=CsrfOut,
              summary="The session's CSRF token; also tells whether the client is logged in"),
        Route("GET", "/auth/me", me, section="private", ok=Me, summary="Who is logged in"),
        Route("POST", "/auth/logout", logout, section="private", body=Empty, summary="End this session"),
        Route("POST", "/auth/changePassword", change_password, section="private", body=ChangePassword,
              summary="Change the password; the user's other sessions end", replies={403: ["auth"]}),
        Route("POST", "/auth/destroy", destroy, section="private", body=Destroy,
              summary="Delete the account and everything of it", replies={403: ["auth"]}),
    ]
