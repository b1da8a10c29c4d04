"""The avant step and the public routes: health, ping, client error reports, the OpenAPI
document. None of them needs a session."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from .. import ratelimit, stats
from ..chain import Route
from ..http import ApiError, Reply, Request, proxied_address, reply
from ..identity import users
from ..notify import notify
from ..schema import Int, Schema, Text

PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


def client_ip(req: Request) -> str:
    """The peer's address, or the address nginx saw when the peer is a trusted proxy."""
    client = req.scope.get("client")
    peer = client[0] if client else ""
    if peer in req.app.config.TRUSTED_PROXIES:
        real = req.header(b"x-real-ip")
        forwarded = req.header(b"x-forwarded-for")
        return proxied_address(real or (forwarded.split(b",")[-1] if forwarded else b""), peer)
    return peer


async def avant(req: Request) -> None:
    """Every request: the log object (start time, id) is made with the Request; here the
    client's address is settled for the routes after."""
    req.ip = client_ip(req)
    return None


class Health(msgspec.Struct):
    redis: str


async def health(req: Request) -> Reply:
    await req.app.db.call("PING")
    return reply(200, {"redis": "ok"})


class Pong(msgspec.Struct):
    pong: bool


async def ping(req: Request) -> Reply:
    return reply(200, {"pong": True})


class ClientError(Schema):
    """What a browser reports about an error of its own."""

    message: Annotated[str, Text(1, 2000)]
    url: Annotated[str, Text(0, 2048)] = ""
    stack: Annotated[str, Text(0, 8000, multiline=True)] = ""
    line: Annotated[int, Int(0, 10**9)] = 0
    column: Annotated[int, Int(0, 10**9)] = 0


async def client_error(req: Request) -> Reply:
    config = req.app.config
    await ratelimit.check(req.app.db, "error", ratelimit.address(req.ip), config.ERROR_REPORTS_PER_MINUTE, 60)
    data = req.payload(ClientError)
    notify("client error", ip=req.ip, message=data.message, url=data.url, stack=data.stack,
           line=data.line, column=data.column, agent=req.headers.get("user-agent", "")[:300])
    return reply(200, {})


async def openapi(req: Request) -> Reply:
    return Reply(200, req.app.openapi, None)


async def _admin(req: Request) -> bool:
    """Does the request carry a live session of an admin? (/metrics sits before the gatekeeper,
    so that a scraper with a token and no session gets through.)"""
    sessions = req.app.sessions
    value = req.cookies.get(sessions.name)
    sid = sessions.unsign(value) if value else None
    session = await sessions.load(req.app.db, sid) if sid else None
    if session is None:
        return False
    req.session = session
    user = await req.app.current_user(req)
    return user is not None and users.is_admin(user, req.app.config.ADMINS)


async def metrics(req: Request) -> Reply:
    """The Prometheus text format, for `Authorization: Bearer <METRICS_TOKEN>` or an admin's
    session; 403 admin to anyone else."""
    app = req.app
    given = req.header(b"authorization") or b""
    token_ok = given[:7].lower() == b"bearer " and stats.equal_token(given[7:].decode("latin-1").strip(),
                                                                     app.config.METRICS_TOKEN)
    if not token_ok and not await _admin(req):
        raise ApiError(403, "admin")
    day = int(time.time() // 86400)
    unique_names = list(stats.UNIQUES)
    replies = await app.db.pipeline([("HGETALL", stats.TOTAL),
                                     *(("PFCOUNT", stats.unique_key(name, day)) for name in unique_names)])
    total = stats.fields(replies[0])
    uniques = dict(zip(unique_names, replies[1:], strict=True))
    levels: dict[str, float] = dict(await stats.read_stocks(app.db, stats.queues(app.config)))
    return Reply(200, stats.render(total, levels, uniques).encode(), {"cache-control": "no-store"},
                 content_type=PROMETHEUS)


def routes() -> list[Route]:
    return [
        Route("*", "*", avant, section="avant"),
        Route("GET", "/health", health, summary="Redis reachable?", ok=Health),
        Route("GET", "/ping", ping, summary="The smallest JSON route", ok=Pong),
        Route("POST", "/error", client_error, body=ClientError, summary="A browser reports an error",
              replies={429: ["rate"]}),
        Route("GET", "/openapi.json", openapi, summary="This API's OpenAPI 3.1 document"),
        Route("GET", "/metrics", metrics, summary="Prometheus metrics: an admin's session or Bearer METRICS_TOKEN",
              replies={403: ["admin"]}),
    ]
