"""The avant step and the public routes: health, ping, client error reports, the OpenAPI
document. None of them needs a session."""

from __future__ import annotations

import ipaddress

import msgspec

from .. import ratelimit
from ..chain import Route
from ..http import Reply, Request, reply
from ..notify import notify
from ..schema import Int, Schema, Text


def client_ip(req: Request) -> str:
    """The peer's address, or the address nginx saw when the peer is a trusted proxy."""
    client = req.scope.get("client")
    peer = client[0] if client else ""
    if peer in req.app.config.TRUSTED_PROXIES:
        real = req.header(b"x-real-ip")
        forwarded = req.header(b"x-forwarded-for")
        candidate = (real or (forwarded.split(b",")[-1] if forwarded else b"")).strip().decode("latin-1")
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            return peer
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

    message: Text(1, 2000)  # type: ignore[valid-type]
    url: Text(0, 2048) = ""  # type: ignore[valid-type]
    stack: Text(0, 8000, multiline=True) = ""  # type: ignore[valid-type]
    line: Int(0, 10**9) = 0  # type: ignore[valid-type]
    column: Int(0, 10**9) = 0  # type: ignore[valid-type]


async def client_error(req: Request) -> Reply:
    config = req.app.config
    await ratelimit.check(req.app.db, "error", req.ip, config.ERROR_REPORTS_PER_MINUTE, 60)
    data: ClientError = req.data
    notify("client error", ip=req.ip, message=data.message, url=data.url, stack=data.stack,
           line=data.line, column=data.column, agent=req.headers.get("user-agent", "")[:300])
    return reply(200, {})


async def openapi(req: Request) -> Reply:
    return Reply(200, req.app.openapi, None)


def routes() -> list[Route]:
    return [
        Route("*", "*", avant, section="avant"),
        Route("GET", "/health", health, summary="Redis reachable?", ok=Health),
        Route("GET", "/ping", ping, summary="The smallest JSON route", ok=Pong),
        Route("POST", "/error", client_error, body=ClientError, summary="A browser reports an error",
              replies={429: ["rate"]}),
        Route("GET", "/openapi.json", openapi, summary="This API's OpenAPI 3.1 document"),
    ]
