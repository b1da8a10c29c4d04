"""Admin routes (after the admin gatekeeper): list users, revoke a user's sessions,
disable or enable a user, grant or take the admin flag."""

from __future__ import annotations

from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..identity import users
from ..notify import notify
from ..schema import Schema, Text


class UserIn(Schema):
    username: Text(3, 32)  # type: ignore[valid-type]


class Flag(Schema):
    username: Text(3, 32)  # type: ignore[valid-type]
    value: bool


async def list_users(req: Request) -> Reply:
    db = req.app.db
    names = sorted(await users.names(db))[:1000]
    found = [await users.get(db, name) for name in names]
    admins = req.app.config.ADMINS
    return reply(200, [users.public(u, admins) for u in found if u is not None])


async def _target(req: Request) -> dict[str, str]:
    user = await users.get(req.app.db, req.data.username.strip().lower())
    if user is None:
        raise ApiError(404, "user")
    return user


async def revoke(req: Request) -> Reply:
    user = await _target(req)
    count = max(0, await req.app.sessions.end_all(req.app.db, user["username"]))
    notify("admin revoke", user=user["username"], by=req.session and req.session["user"], sessions=count)
    return reply(200, {"revoked": count})


async def disable(req: Request) -> Reply:
    user = await _target(req)
    if req.data.value:  # disabled and every session ended in one step
        await users.disable(req.app.db, req.app.sessions, user["username"])
    else:
        await users.set_flag(req.app.db, user["username"], "disabled", False)
    notify("admin disable", user=user["username"], value=req.data.value, by=req.session and req.session["user"])
    return reply(200, {})


async def set_admin(req: Request) -> Reply:
    user = await _target(req)
    await users.set_flag(req.app.db, user["username"], "admin", req.data.value)
    notify("admin flag", user=user["username"], value=req.data.value, by=req.session and req.session["user"])
    return reply(200, {})


def routes() -> list[Route]:
    return [
        Route("GET", "/admin/users", list_users, section="admin", summary="All users (up to 1000)"),
        Route("POST", "/admin/revoke", revoke, section="admin", body=UserIn, replies={404: ["user"]},
              summary="End all sessions of a user"),
        Route("POST", "/admin/disable", disable, section="admin", body=Flag, replies={404: ["user"]},
              summary="Disable (value true: sessions end, login refused) or enable a user"),
        Route("POST", "/admin/admin", set_admin, section="admin", body=Flag, replies={404: ["user"]},
              summary="Grant or take the admin flag"),
    ]
