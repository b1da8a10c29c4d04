"""The route chain (seed: Routes): one ordered list of routes, read top to bottom.

A route whose path is "*" is a step that every later route passes through (avant,
gatekeeper, CSRF, admin gatekeeper); any other route is an endpoint. A step either
replies (returns a Reply or raises ApiError) or passes (returns None), never both.

Before any route, the chain applies the HTTP rules: 414 for a request target over 2048
characters, 404/405 for no route, 415 for a body of the wrong type, 413 for one over the
limit, 400 for a missing or malformed body. Right before an endpoint runs, its payload
is checked against its schema (400 validation with the field's path).
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import db as dbmod
from .errors import DomainError, api_error
from .http import (
    CLOSE,
    GZIP_MIN,
    HTML,
    JSON,
    PAGE_SECURITY_HEADERS,
    SECURITY_HEADERS,
    ApiError,
    Reply,
    Request,
    client_address,
    compress,
    error_reply,
    etag_matches,
    etag_of,
    wants_gzip,
)
from .notify import notify
from .schema import parse_json, validate
from .stats import BUCKETS_S, Stats

Handler = Callable[[Request], Awaitable[Reply | None]]
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TARGET = 2048
SECTIONS = ("avant", "public", "auth", "gatekeeper", "csrf", "private", "admin gatekeeper", "admin")


@dataclass
class Route:
    """One entry of the chain.

    method: "GET", "POST", ... or "*" (any) or "UNSAFE" (state-changing methods), for steps.
    path: "/notes", "/files/{id}", or "*" for a step.
    body: the schema (a Schema subclass) of a JSON body; the route then takes a body.
    query: the schema of the query string (its values are strings).
    accepts: "json" (default when body is set) or "multipart" (the route reads the stream).
    limit: the body limit in bytes (default: JSON_LIMIT).
    replies: status → error codes this route can answer with, for the OpenAPI document.
    """

    method: str
    path: str
    handler: Handler
    section: str = "public"
    body: type | None = None
    query: type | None = None
    accepts: str | None = None
    limit: int | None = None
    summary: str = ""
    ok: Any = None  # the schema of the 200 reply, for the OpenAPI document
    serves: str = "application/json"  # the media type of the 200 reply, for the OpenAPI document
    replies: dict[int, list[str]] = field(default_factory=dict)
    private: bool = False  # set by the chain: behind the gatekeeper
    pattern: re.Pattern[str] | None = None
    tally: Any = field(default=None, repr=False, compare=False)  # set by the chain: its stats.Tally

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"unknown section {self.section!r}")
        if self.body is not None and self.accepts is None:
            self.accepts = "json"
        if "{" in self.path:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
            self.pattern = re.compile(f"^{regex}\\Z")

    @property
    def is_step(self) -> bool:
        return self.path == "*"

    def applies_to(self, method: str) -> bool:
        return self.method == "*" or self.method == method or (self.method == "UNSAFE" and method in UNSAFE)


class Endpoint:
    """An endpoint with the steps that run before it, worked out once at start-up.

    `body_at`: how many steps run before a JSON body is read. A private route reads its
    body only once the gatekeeper let the request through (the CSRF step after it may need
    the body), so an anonymous request costs no parsing, whatever it sends."""

    __slots__ = ("body_at", "route", "steps")

    def __init__(self, route: Route, steps: list[Route]):
        self.route = route
        self.steps = [s.handler for s in steps]
        gates = [i for i, s in enumerate(steps) if s.section == "gatekeeper"]
        self.body_at = gates[-1] + 1 if gates else 0


class Chain:
    """The ASGI application: routing, the HTTP rules, the steps, the reply."""

    def __init__(self, routes: list[Route], config: Any, on_start: Any = None, on_stop: Any = None):
        self.routes = routes
        self.config = config
        self.on_start = on_start
        self.on_stop = on_stop
        self.stats = Stats(config)
        self.maintenance = False  # writes paused by `lorebase migrate` (app.watch_maintenance)
        last = -1
        for route in routes:
            index = SECTIONS.index(route.section)
            if index < last:
                raise ValueError(f"route {route.method} {route.path} of section {route.section} is out of order")
            last = index
        self.static: dict[str, dict[str, Endpoint]] = {}
        self.dynamic: list[tuple[re.Pattern[str], dict[str, Endpoint]]] = []
        steps: list[Route] = []
        behind_gate = False
        for route in routes:
            if route.section in ("gatekeeper",):
                behind_gate = True
            if route.is_step:
                steps.append(route)
                continue
            route.private = behind_gate
            endpoint = Endpoint(route, [s for s in steps if s.applies_to(route.method)])
            if route.pattern is None:
                methods = self.static.setdefault(route.path, {})
            else:
                for pattern, existing in self.dynamic:
                    if pattern.pattern == route.pattern.pattern:
                        methods = existing
                        break
                else:
                    methods = {}
                    self.dynamic.append((route.pattern, methods))
            if route.method in methods:
                raise ValueError(f"two routes for {route.method} {route.path}")
            methods[route.method] = endpoint
            route.tally = self.stats.tally(route.method, route.path)
        self.json_limit = config.JSON_LIMIT
        self.db: dbmod.Client = None  # type: ignore[assignment]  # the worker's Redis client, set at start-up
        self.openapi: bytes = b"{}"  # the OpenAPI document, set by the app

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_start:
                        await self.on_start()
                except Exception as error:  # noqa: BLE001
                    notify.exception("error", error, where="startup")
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_stop:
                    await self.on_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def find(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        methods = self.static.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidates in self.dynamic:
                match = pattern.match(path)
                if match:
                    methods, params = candidates, match.groupdict()
                    break
            else:
                raise ApiError(404, "notfound")
        endpoint = methods.get("GET" if method == "HEAD" else method)
        if endpoint is None:
            allow = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            raise ApiError(405, "method", headers={"allow": ", ".join(allow)})
        return endpoint, params

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # the chain served is always an App (app.py); a cast() here would be a call per request
        req = Request(scope, receive, self)  # type: ignore[arg-type]
        try:
            result = await self.run(req)
        except ApiError as error:
            result = error_reply(error)
        except DomainError as error:  # identity's and files' own failures, replied as errors.TABLE says
            result = error_reply(api_error(error))
        except dbmod.Unavailable as error:
            notify("redis down", error=str(error), path=req.path, rid=req.log["id"])
            result = error_reply(ApiError(503, "redis"))
        except Exception as error:  # noqa: BLE001 - the client gets a code, notify the trace
            notify.exception("error", error, method=req.method, path=req.path, ip=req.ip, rid=req.log["id"])
            result = error_reply(ApiError(500, "server"))
        status, sent = await self.send(req, result, send)
        stats = self.stats
        if stats.enabled:  # counted inline: a call and a few lookups per request cost W2 ~4 %
            route = req.route
            tally = route.tally if route is not None else stats.unmatched(req.method)
            seconds = time.perf_counter() - req.log["t"]
            statuses = tally.statuses
            statuses[status] = statuses.get(status, 0) + 1
            tally.buckets[bisect_left(BUCKETS_S, seconds)] += 1
            tally.sum += seconds
            if seconds > tally.high:
                tally.high = seconds
            if seconds < tally.low:
                tally.low = seconds
            tally.sent += sent
            if req.session is not None:
                stats.active.add(req.session["user"])
            stats.ips.add(req.ip)

    async def run(self, req: Request) -> Reply:
        query = req.scope.get("query_string") or b""
        # the request target as sent: path, then "?" and the query when there is one
        target = len(req.scope.get("raw_path") or req.path) + (len(query) + 1 if query else 0)
        if target > MAX_TARGET:
            raise ApiError(414, "url")
        endpoint, req.params = self.find(req.method, req.path)
        route = endpoint.route
        req.route = route
        if self.maintenance and req.method in UNSAFE:
            raise ApiError(503, "maintenance", headers={"retry-after": "5"})
        at = -1
        if route.accepts is not None:
            self.check_body_headers(req, route)
            at = endpoint.body_at if route.accepts == "json" else -1
        for i, step in enumerate(endpoint.steps):
            if i == at:
                await self.read_body(req, route)
            result = await step(req)
            if result is not None:
                return result
        if at == len(endpoint.steps):
            await self.read_body(req, route)
        if route.body is not None and route.accepts == "json":
            req.data = validate(req.data, route.body, req.body)
        elif route.query is not None:
            req.data = validate(req.query, route.query)
        result = await route.handler(req)
        if result is None:
            raise ApiError(404, "notfound")
        return result

    def check_body_headers(self, req: Request, route: Route) -> None:
        """The HTTP rules a body's headers settle, before any step: type and declared size."""
        content_type = (req.header(b"content-type") or b"").split(b";")[0].strip().lower()
        expected = JSON if route.accepts == "json" else b"multipart/form-data"
        length_header = req.header(b"content-length")
        chunked = req.header(b"transfer-encoding") is not None
        if content_type != expected:
            if not content_type and not chunked and length_header in (None, b"0"):
                raise ApiError(400, "validation", "")  # no body at all
            raise ApiError(415, "type")
        limit = route.limit or self.json_limit
        if length_header is not None:
            try:
                declared = int(length_header)
            except ValueError:
                raise ApiError(400, "length") from None
            if declared > limit:
                raise ApiError(413, "size")

    async def read_body(self, req: Request, route: Route) -> None:
        """A JSON body, read to its end within the route's limit, then parsed."""
        limit = route.limit or self.json_limit
        chunks = []
        size = 0
        while True:  # a body too slow to arrive is cut by the protocol (protocol.py)
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "disconnect")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "size", headers=CLOSE)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        req.body = b"".join(chunks)
        if not req.body.strip():
            raise ApiError(400, "validation", "")
        req.data = parse_json(req.body)

    async def send(self, req: Request, result: Reply, send: Any) -> tuple[int, int]:
        """Sends the reply; its status and the body bytes sent."""
        status = result.status
        headers = list(PAGE_SECURITY_HEADERS if result.content_type == HTML else SECURITY_HEADERS)
        body = result.body
        cache_control = False
        if result.headers:
            for key, value in result.headers.items():
                name = key.lower().encode("latin-1")
                cache_control = cache_control or name == b"cache-control"
                headers.append((name, value.encode("latin-1")))
        for cookie in result.cookies:
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        route = req.route
        if result.stream is None:
            headers.append((b"content-type", result.content_type))
            if not cache_control:
                headers.append((b"cache-control", b"private, no-cache" if route is not None and route.private
                                else b"no-cache"))
            if status == 200 and req.method in ("GET", "HEAD") and not (result.headers and "etag" in result.headers):
                etag = etag_of(body)
                gzipped = False
                if len(body) >= GZIP_MIN:  # the encoding depends on Accept-Encoding: say so, either way
                    headers.append((b"vary", b"accept-encoding"))
                    gzipped = wants_gzip(req.header(b"accept-encoding"))
                    if gzipped:
                        etag = "W/" + etag
                inm = req.header(b"if-none-match")
                if inm is not None and etag_matches(inm, etag):
                    # a 304 carries the ETag and Vary the 200 would have (RFC 9110 15.4.5)
                    headers.append((b"etag", etag.encode()))
                    await send({"type": "http.response.start", "status": 304, "headers": headers})
                    await send({"type": "http.response.body", "body": b""})
                    return 304, 0
                if gzipped:
                    body = compress(body)
                    headers.append((b"content-encoding", b"gzip"))
                headers.append((b"etag", etag.encode()))
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if result.stream is None:
            sent = len(body)
            await send({"type": "http.response.body", "body": body})
        else:
            sent = 0
            async for chunk in result.stream:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        if status >= 400:
            if not req.ip:  # failed before the avant step ran
                req.ip = client_address(req.scope, req.raw_headers, self.config.TRUSTED_PROXIES)
            notify("reply", status=status, error=result.code, method=req.method, path=req.path[:200],
                   ip=req.ip, rid=req.log["id"], ms=round((time.perf_counter() - req.log["t"]) * 1000, 2))
        return status, sent
