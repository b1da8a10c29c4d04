"""The auth routes that need a session (after the gatekeeper and CSRF): the CSRF token
("am I logged in?"), logout, the user's own sessions (list, end one or all others),
change password, change the email (mailed a link), destroy the account."""

from __future__ import annotations

from typing import Annotated

from ..chain import Route
from ..errors import Taken
from ..http import ApiError, Reply, Request, reply
from ..identity import admins, tokens, users
from ..identity.records import User
from ..identity.sessions import handle as session_handle
from ..mail import change_mail, change_notice_mail, enqueue, password_changed_mail
from ..notify import notify
from ..schema import Schema, Text
from .auth import NO_STORE, WRONG_PASSWORD, Password, check_new_password


class Empty(Schema):
    pass


class ChangePassword(Schema):
    old: Password
    new: Password


class Destroy(Schema):
    password: Password


class ChangeEmail(Schema):
    password: Password
    email: Annotated[str, Text(3, 300, description="the new address; it becomes the account's once "
                                                   "the link mailed to it is used")]


class CsrfOut(Schema):
    csrf: Annotated[str, Text(1, 100)]


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


class SessionOut(Schema):
    handle: str
    created: int
    last: int
    ip: str
    agent: str
    current: bool


async def list_sessions(req: Request) -> Reply:
    assert req.session is not None
    found = await req.app.sessions.listing(req.app.db, req.session["user"], req.session["id"])
    return reply(200, found, NO_STORE)


class EndSessions(Schema):
    # a handle is hex (sessions.handle): anything else can name no session, and the
    # constant-time comparison takes only ASCII
    handle: Annotated[str, Text(0, 64, pattern=r"^[0-9a-f]*\Z")] = ""
    others: bool = False


async def end_sessions(req: Request) -> Reply:
    data = req.payload(EndSessions)
    assert req.session is not None
    if bool(data.handle) == data.others:  # exactly one of the two
        raise ApiError(400, "validation", "handle" if not data.others else "others")
    if data.handle == session_handle(req.session["id"]):
        raise ApiError(400, "validation", "handle")  # this session ends with /auth/logout
    ended = await req.app.sessions.end_some(req.app.db, req.session["user"], req.session["id"],
                                            None if data.others else data.handle)
    if ended is None:
        raise ApiError(404, "notfound")
    notify("sessions ended", user=req.session["user"], ended=ended, ip=req.ip)
    return reply(200, {"ended": ended})


async def _user_with_password(req: Request, password: str) -> User:
    user: User | None = await req.app.current_user(req)
    if user is None or not await req.app.passwords.verify(user["hash"], password):
        raise ApiError(403, "auth", message=WRONG_PASSWORD)
    return user


async def change_password(req: Request) -> Reply:
    data = req.payload(ChangePassword)
    app = req.app
    check_new_password(data.new, "new")
    user = await _user_with_password(req, data.old)
    assert req.session is not None
    # the new hash and a new generation in one step: every other session ends, a login
    # with the old password still in flight is refused, this session carries on
    if await users.set_password(app.db, app.sessions, user["username"], await app.passwords.hash(data.new),
                                keep=req.session["id"]) < 0:
        raise ApiError(403, "session")
    await enqueue(app.db, app.config.COOKIE_SECRET, user["email"],
                  *password_changed_mail(app.config.BASE_URL, user["username"]))
    notify("password changed", user=user["username"], ip=req.ip)
    return reply(200, {})


async def change_email(req: Request) -> Reply:
    """A verification link to the new address and a notice (no link) to the old one; the
    account's email changes only when the link is used (POST /auth/verifyEmail)."""
    data = req.payload(ChangeEmail)
    app = req.app
    config, db = app.config, app.db
    email = users.normal_email(data.email)
    user = await _user_with_password(req, data.password)
    if email == user.get("email"):
        raise ApiError(400, "validation", "email", message="That is already the account's email.")
    if await users.keeps(db, email, config.VERIFY_TTL):
        raise Taken("email")  # checked again, race-safe, when the link is used
    name = user["username"]
    token = await tokens.issue(db, "change", name, email, config.VERIFY_TTL, user.get("gen", ""))
    await enqueue(db, config.COOKIE_SECRET, email, *change_mail(config.BASE_URL, name, token, config.VERIFY_TTL))
    if user.get("email"):
        await enqueue(db, config.COOKIE_SECRET, user["email"], *change_notice_mail(name, email))
    notify("email change asked", user=name, ip=req.ip)
    return reply(200, {})


async def destroy(req: Request) -> Reply:
    data = req.payload(Destroy)
    app = req.app
    user = await _user_with_password(req, data.password)
    await admins.leave(app.db, user["username"], keep_one=False)  # out of the roster before its record goes
    try:
        await app.destroy_user(user["username"])
    finally:
        await admins.left(app.db, user["username"])
    notify("destroy", user=user["username"], ip=req.ip)
    return reply(200, {}, {"set-cookie": app.sessions.clear_cookie(), **NO_STORE})


def routes() -> list[Route]:
    return [
        Route("GET", "/auth/csrf", csrf, section="private", ok=CsrfOut,
              summary="The session's CSRF token; also tells whether the client is logged in"),
        Route("GET", "/auth/me", me, section="private", ok=Me, summary="Who is logged in"),
        Route("POST", "/auth/logout", logout, section="private", body=Empty, summary="End this session"),
        Route("GET", "/auth/sessions", list_sessions, section="private", ok=list[SessionOut],
              summary="The user's live sessions, the current one marked"),
        Route("POST", "/auth/sessions/end", end_sessions, section="private", body=EndSessions,
              replies={404: ["notfound"]}, summary="End one of the user's other sessions by its handle, "
                                                    "or all the others"),
        Route("POST", "/auth/changePassword", change_password, section="private", body=ChangePassword,
              summary="Change the password; the user's other sessions end", replies={403: ["auth"]}),
        Route("POST", "/auth/changeEmail", change_email, section="private", body=ChangeEmail,
              summary="Ask to change the email: a link to the new address (which becomes the "
                      "account's when it is used), a notice to the old one",
              replies={403: ["auth"], 409: ["email"]}),
        Route("POST", "/auth/destroy", destroy, section="private", body=Destroy,
              summary="Delete the account and everything of it", replies={403: ["auth"]}),
    ]
