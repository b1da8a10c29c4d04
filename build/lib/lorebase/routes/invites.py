"""The admin's invites (after the admin gatekeeper): invite an email (the mail carries the
single-use token), list the live invites, revoke one. The signup with a token is in auth.py."""

from __future__ import annotations

from typing import Annotated

from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..identity import invites, users
from ..mail import enqueue, invite_mail
from ..notify import notify
from ..schema import Schema, Text


class InviteIn(Schema):
    email: Annotated[str, Text(3, 300)]


class InviteOut(Schema):
    email: str
    created: int
    expires: int
    by: str


def _email(req: Request) -> str:
    return users.normal_email(req.payload(InviteIn).email)


async def invite(req: Request) -> Reply:
    app, email = req.app, _email(req)
    if await users.keeps(app.db, email, int(app.config.VERIFY_TTL)):
        # an account holds that address already; one that never verified it within VERIFY_TTL
        # does not: the invited signup takes it, in the holder's own step (users.create)
        raise ApiError(409, "email")
    by = req.session["user"] if req.session else ""
    ttl = int(app.config.INVITE_TTL)
    token = await invites.issue(app.db, email, by, ttl)
    await enqueue(app.db, app.config.COOKIE_SECRET, email, *invite_mail(app.config.BASE_URL, token, ttl))
    notify("invite", email=email, by=by)
    return reply(200, {})


async def list_invites(req: Request) -> Reply:
    return reply(200, await invites.pending(req.app.db))


async def revoke(req: Request) -> Reply:
    email = _email(req)
    if not await invites.revoke(req.app.db, email):
        raise ApiError(404, "invite")
    notify("invite revoked", email=email, by=req.session["user"] if req.session else "")
    return reply(200, {})


def routes() -> list[Route]:
    return [
        Route("POST", "/admin/invites", invite, section="admin", body=InviteIn, replies={409: ["email"]},
              summary="Invite an email: a mail with a single-use signup link (INVITE_TTL)"),
        Route("GET", "/admin/invites", list_invites, section="admin", ok=list[InviteOut],
              summary="The live invites, the one expiring last first"),
        Route("POST", "/admin/invites/revoke", revoke, section="admin", body=InviteIn, replies={404: ["invite"]},
              summary="Revoke an email's invite: its link stops working"),
    ]
