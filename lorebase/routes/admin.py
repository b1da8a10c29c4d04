"""Admin routes (after the admin gatekeeper): search users and page through them, one user's
detail, revoke a user's sessions, unlock a user's logins, disable or enable a user, grant or take the admin flag,
delete a user. An admin cannot take their own flag, disable or delete themselves (403
`self`), and no admin's rights can go when none would be left (409 `lastadmin`, decided in
one step over the roster of identity/admins.py, so two admins acting on each other at once
cannot both win)."""

from __future__ import annotations

from typing import Annotated, Any, cast

import msgspec

from ..chain import Route
from ..files import keys as fkeys
from ..http import ApiError, Reply, Request, reply
from ..identity import admins, keys, users
from ..identity.records import User
from ..notify import notify
from ..ratelimit import clear, key
from ..schema import Schema, Text


class UserIn(Schema):
    username: Annotated[str, Text(3, 32)]


class Flag(Schema):
    username: Annotated[str, Text(3, 32)]
    value: bool


class UsersQuery(Schema):
    q: Annotated[str, Text(0, 254, description="a username or email prefix, any case")] = ""
    after: Annotated[str, Text(0, 400, description="the `next` of the previous page")] = ""


class UserRow(msgspec.Struct):
    username: str
    email: str
    created: int
    verified: bool
    admin: bool
    disabled: bool


class UserPage(msgspec.Struct):
    users: list[UserRow]
    next: str | None


class SessionRow(msgspec.Struct):
    created: int
    last: int
    ip: str
    agent: str


class UserDetail(UserRow):
    last_login: int | None
    files: int
    bytes: int
    sessions: list[SessionRow]
    # the fields each application adds (Extension.user_detail), merged into this object,
    # named here in order: the notes example adds `notes`, its count
    extra: list[str]


async def list_users(req: Request) -> Reply:
    query: UsersQuery = req.data
    try:
        found, after = await users.search(req.app.db, query.q.strip().lower(), query.after)
    except users.BadCursor:
        raise ApiError(400, "validation", "after") from None
    admins = req.app.config.ADMINS
    return reply(200, {"users": [users.public(u, admins) for u in found], "next": after})


async def user_detail(req: Request) -> Reply:
    name = req.params["username"].lower()
    if not keys.USERNAME.fullmatch(name):
        raise ApiError(404, "user")
    db = req.app.db
    user, files, used, ids = await db.pipeline([
        ("HGETALL", keys.user(name)), ("ZCARD", fkeys.files(name)), ("GET", fkeys.usage(name)),
        ("SMEMBERS", keys.sessions(name))])
    if not user:
        raise ApiError(404, "user")
    record = cast(User, dict(zip(user[::2], user[1::2], strict=True)))
    detail: dict[str, Any] = users.public(record, req.app.config.ADMINS)
    last = record.get("last", "")
    detail.update(last_login=int(last) if last.isdigit() else None, files=int(files), bytes=int(used or 0),
                  sessions=await req.app.sessions.of_user(db, record, list(ids)))
    extra: list[str] = []
    for more in req.app.user_details:
        for field, value in (await more(req.app, name)).items():
            if field not in detail:  # an app cannot hide or change the built-in fields
                detail[field] = value
                extra.append(field)
    detail["extra"] = extra
    return reply(200, detail)


async def _target(req: Request, refuse_self: bool = False) -> User:
    """The user the body names (404 user); 403 self if it is the admin's own account and
    `refuse_self`."""
    user = await users.get(req.app.db, req.data.username.strip().lower())
    if user is None:
        raise ApiError(404, "user")
    if refuse_self and req.session is not None and user["username"] == req.session["user"]:
        raise ApiError(403, "self")
    return user


async def revoke(req: Request) -> Reply:
    user = await _target(req)
    count = max(0, await req.app.sessions.end_all(req.app.db, user["username"]))
    notify("admin revoke", user=user["username"], by=req.session and req.session["user"], sessions=count)
    return reply(200, {"revoked": count})


async def unlock(req: Request) -> Reply:
    """The account's failed-login count cleared: a lockout strangers caused ends now."""
    user = await _target(req)
    await clear(req.app.db, key("login-account", user["username"]))
    notify("admin unlock", user=user["username"], by=req.session and req.session["user"])
    return reply(200, {})


async def _taking_rights(req: Request, name: str) -> None:
    """The roster step before `name` loses admin rights (disabled, deleted, un-flagged): 409
    lastadmin if no other enabled admin would be left. The acting admin joins the roster
    first (an admin of ADMINS is in it only once it acted). `admins.left` must follow."""
    db, config = req.app.db, req.app.config
    if req.session is not None:
        await admins.join(db, req.session["user"], config.ADMINS)
    if not await admins.leave(db, name):
        raise ApiError(409, "lastadmin")


async def disable(req: Request) -> Reply:
    user = await _target(req, refuse_self=req.data.value)
    db, name = req.app.db, user["username"]
    if req.data.value:  # disabled and every session ended in one step
        await _taking_rights(req, name)
        try:
            await users.disable(db, req.app.sessions, name)
        finally:
            await admins.left(db, name)
    else:
        await users.set_flag(db, name, "disabled", False)
        await admins.join(db, name, req.app.config.ADMINS)
    notify("admin disable", user=name, value=req.data.value, by=req.session and req.session["user"])
    return reply(200, {})


async def set_admin(req: Request) -> Reply:
    user = await _target(req, refuse_self=not req.data.value)
    db, name, config = req.app.db, user["username"], req.app.config
    if req.data.value:
        await admins.grant(db, name, config.ADMINS)
    else:  # the same steps as `lorebase admin remove`
        try:
            await admins.take(db, user, config.ADMINS, acting=req.session["user"] if req.session is not None else None)
        except admins.Refused as refused:
            raise ApiError(409, refused.code) from None
    notify("admin flag", user=name, value=req.data.value, by=req.session and req.session["user"])
    return reply(200, {})


async def delete(req: Request) -> Reply:
    user = await _target(req, refuse_self=True)
    name = user["username"]
    await _taking_rights(req, name)
    try:
        deleted = await req.app.destroy_user(name)
    finally:
        await admins.left(req.app.db, name)
    if not deleted:
        raise ApiError(404, "user")
    notify("admin delete", user=name, by=req.session and req.session["user"])
    return reply(200, {})


def routes() -> list[Route]:
    return [
        Route("GET", "/admin/users", list_users, section="admin", query=UsersQuery, ok=UserPage,
              summary="Users whose username or email starts with q: name matches first, then email-only "
                      f"matches, {users.PAGE} a page (`after`: the previous page's `next`)"),
        Route("GET", "/admin/users/{username}", user_detail, section="admin", ok=UserDetail,
              replies={404: ["user"]},
              summary="One user: its record, last login, files, bytes, live sessions and what each app adds (`extra`)"),
        Route("POST", "/admin/revoke", revoke, section="admin", body=UserIn, replies={404: ["user"]},
              summary="End all sessions of a user"),
        Route("POST", "/admin/unlock", unlock, section="admin", body=UserIn, replies={404: ["user"]},
              summary="Clear a user's failed-login count: the account is no longer locked (429) for logins"),
        Route("POST", "/admin/disable", disable, section="admin", body=Flag,
              replies={403: ["self"], 404: ["user"], 409: ["lastadmin"]},
              summary="Disable (value true: sessions end, login refused) or enable a user; not oneself, "
                      "not the last enabled admin"),
        Route("POST", "/admin/admin", set_admin, section="admin", body=Flag,
              replies={403: ["self"], 404: ["user"], 409: ["lastadmin", "configadmin"]},
              summary="Grant or take the admin flag; not one's own, not the last enabled admin's, not one "
                      "whose rights come from ADMINS"),
        Route("POST", "/admin/delete", delete, section="admin", body=UserIn,
              replies={403: ["self"], 404: ["user"], 409: ["lastadmin"]},
              summary="Delete a user and everything of it, as its own destroy does; not oneself, not the "
                      "last enabled admin"),
    ]
