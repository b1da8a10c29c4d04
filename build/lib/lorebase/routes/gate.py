"""The three gates of the chain: the gatekeeper (a live session or 403), the CSRF check
(every state-changing request carries the session's token), and the admin gatekeeper."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from ..chain import Route
from ..http import ApiError, Request
from ..identity import users
from ..notify import notify

NO_STORE = {"cache-control": "no-store"}  # a reply that sets a cookie is never cached


async def gatekeeper(req: Request) -> None:
    """No cookie → 403 nocookie; a forged one → 403 tampered; a dead session → 403 session
    (and the cookie is cleared). A live session is renewed and put on the request."""
    sessions = req.app.sessions
    value = req.cookies.get(sessions.name)
    if not value:
        raise ApiError(403, "nocookie")
    sid = sessions.unsign(value)
    if sid is None:
        notify("tampered", ip=req.ip, path=req.path, rid=req.log["id"])
        raise ApiError(403, "tampered", headers={"set-cookie": sessions.clear_cookie(), **NO_STORE})
    session = await sessions.load(req.app.db, sid)
    if session is None:
        raise ApiError(403, "session", headers={"set-cookie": sessions.clear_cookie(), **NO_STORE})
    req.session = session
    return None


def _same_origin(req: Request, origin: str) -> bool:
    """The Origin's scheme must be BASE_URL's (so a page served over plain http cannot post
    to the https site), and its host BASE_URL's or the one the request was sent to."""
    parts, base = urlsplit(origin), urlsplit(req.app.config.BASE_URL)
    host = parts.netloc.lower()
    if not host or parts.scheme.lower() != base.scheme.lower():
        return False
    return host in (base.netloc.lower(), req.headers.get("host", "").lower())


async def csrf(req: Request) -> None:
    """State-changing requests: same-origin, and the session's token in the body field
    `csrf` or the X-CSRF-Token header (compared in constant time). The field is taken out
    of the body, so the route's schema and handler never see it."""
    site = req.header(b"sec-fetch-site")
    if site == b"cross-site":
        raise ApiError(403, "origin")
    origin = req.header(b"origin")
    if origin is not None and not _same_origin(req, origin.decode("latin-1")):
        raise ApiError(403, "origin")
    token = None
    if isinstance(req.data, dict):
        token = req.data.pop("csrf", None)
    if token is None:
        header = req.header(b"x-csrf-token")
        token = header.decode("latin-1") if header is not None else None
    assert req.session is not None
    if token is None and req.route is not None and req.route.accepts == "multipart":
        req.session["csrf_in_body"] = True  # the upload checks its `csrf` field, before `file`
        return None
    expected = req.session["csrf"]
    if not isinstance(token, str) or not _equal(token, expected):
        raise ApiError(403, "csrf")
    return None


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode())


async def admin_gatekeeper(req: Request) -> None:
    """Past here, only admins: emails in config ADMINS, or the admin flag on the user."""
    user = await req.app.current_user(req)
    if user is None or not users.is_admin(user, req.app.config.ADMINS):
        raise ApiError(403, "admin")
    return None


def gatekeeper_routes() -> list[Route]:
    return [Route("*", "*", gatekeeper, section="gatekeeper")]


def csrf_routes() -> list[Route]:
    return [Route("UNSAFE", "*", csrf, section="csrf")]


def admin_routes() -> list[Route]:
    return [Route("*", "*", admin_gatekeeper, section="admin gatekeeper")]
