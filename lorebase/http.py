"""Requests and replies over raw ASGI: the Request a route sees, the one `reply` function,
the one error type, and what every reply carries (security headers, ETag, gzip).

The error hierarchy is one class: ApiError(status, code[, path]). Its public body is
{"error": code} plus "path" for validation errors; the cause goes to notify, never out.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import secrets
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from .identity.records import Session, User

if TYPE_CHECKING:
    from .app import App
    from .chain import Route

JSON = b"application/json"
GZIP_MIN = 1400  # below one packet, compressing costs more than it saves

# Every reply: no MIME sniffing, no referrer to other sites, never framed. An API reply or a
# file is a document that may load nothing at all; only the web client's pages get a policy
# that lets them load their own script, style and images (and the legacy X-Frame-Options).
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
]
PAGE_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]
HTML = b"text/html; charset=utf-8"

_encode = msgspec.json.Encoder().encode


# a reply after which the connection cannot carry another request: the rest of the body
# was not read (too slow, too large), so the server closes it rather than wait or drain
CLOSE = {"connection": "close"}


class ApiError(Exception):
    """An expected failure with its status and stable code; `path` names the field at fault;
    `message`, where the code alone would mislead, says it in words for a person (the code
    stays what clients branch on)."""

    def __init__(self, status: int, code: str, path: str | None = None,
                 headers: dict[str, str] | None = None, detail: Any = None, message: str | None = None):
        super().__init__(code)
        self.status = status
        self.code = code
        self.path = path
        self.headers = headers or {}
        self.detail = detail  # for notify only
        self.message = message

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code}
        if self.path is not None:
            out["path"] = self.path
        if self.message is not None:
            out["message"] = self.message
        return out


class Reply:
    """What a route returns when it replies. Built by `reply`; sent by the chain."""

    __slots__ = ("body", "code", "content_type", "cookies", "headers", "status", "stream")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None,
                 content_type: bytes = JSON, stream: Any = None, code: str | None = None,
                 cookies: tuple[str, ...] = ()):
        self.status = status
        self.body = body
        self.headers = headers
        self.cookies = cookies  # Set-Cookie values beyond the one `headers` can hold
        self.content_type = content_type
        self.stream = stream  # an async iterator of bytes, for files
        self.code = code  # the error code, for notify


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None,
          cookies: tuple[str, ...] = ()) -> Reply:
    """The one reply function: JSON body (any msgspec-encodable value), status, headers, and
    `cookies`, Set-Cookie values sent besides one in `headers`."""
    if body is None:
        body = {}
    code = body.get("error") if isinstance(body, dict) and status >= 400 else None
    return Reply(status, _encode(body), headers, code=code, cookies=cookies)


def error_reply(error: ApiError) -> Reply:
    return Reply(error.status, _encode(error.body()), error.headers or None, code=error.code)


T = TypeVar("T")


class Request:
    """One request: what the chain has learnt about it so far, for the routes after.

    `data` is the body as the chain has it: parsed JSON for the steps (the CSRF step takes
    its field out of it), then the route's validated schema for the handler. A handler reads
    it typed with `payload`: `note = req.payload(NoteIn)`."""

    __slots__ = (
        "_cookies",
        "_headers",
        "_query",
        "app",
        "body",
        "data",
        "ip",
        "log",
        "method",
        "params",
        "path",
        "raw_headers",
        "receive",
        "route",
        "scope",
        "session",
        "user",
    )

    def __init__(self, scope: dict[str, Any], receive: Any, app: App):
        self.app = app  # the services the routes share: .db, .config, .sessions, .store, .stats...
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.params: dict[str, str] = {}
        # the avant step's log object: start time and request id
        self.log: dict[str, Any] = {"t": time.perf_counter(), "id": secrets.token_hex(8)}
        self.body: bytes = b""
        self.data: Any = None  # parsed JSON, then the validated schema: read it with `payload`
        self._headers: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self.ip: str = ""
        self.user: User | None = None  # the session's user record, once a route read it (App.current_user)
        self.session: Session | None = None  # the live session, once the gatekeeper loaded it
        self.route: Route | None = None  # the endpoint's Route, once the chain found it

    def payload(self, schema: type[T]) -> T:
        """The validated body (or query) as the route's schema `schema`, typed for the
        handler. A TypeError if the route declared another schema (a bug of the route)."""
        data = self.data
        if not isinstance(data, schema):
            raise TypeError(f"{self.method} {self.path}: the payload is a {type(data).__name__}, "
                            f"not a {schema.__name__}")
        return data

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; a repeated header keeps its last value."""
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}
        return self._headers

    def header(self, name: bytes) -> bytes | None:
        """A header's raw value without building the dict (the hot path's way)."""
        for key, value in self.raw_headers:
            if key == name:
                return value
        return None

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            header = b"; ".join(value for key, value in self.raw_headers if key == b"cookie")
            self._cookies = parse_cookies(header.decode("latin-1"))
        return self._cookies

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated key is an error the route's schema reports."""
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            try:
                pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False,
                                  encoding="utf-8", errors="strict", max_num_fields=50)
            except (UnicodeDecodeError, ValueError):
                raise ApiError(400, "validation", "query") from None
            query: dict[str, str] = {}
            for key, value in pairs:
                if key in query:
                    raise ApiError(400, "validation", key)
                query[key] = value
            self._query = query
        return self._query


def client_address(scope: dict[str, Any], headers: list[tuple[bytes, bytes]], trusted: list[str]) -> str:
    """The peer's address, or the one a trusted proxy (nginx) saw: X-Real-IP, else the
    last X-Forwarded-For hop. The same rule as the avant step, for replies sent before it ran."""
    client = scope.get("client")
    peer = client[0] if client else ""
    if peer not in trusted:
        return peer
    real = forwarded = None
    for key, value in headers:
        if key == b"x-real-ip" and real is None:
            real = value
        elif key == b"x-forwarded-for" and forwarded is None:
            forwarded = value
    return proxied_address(real or (forwarded.split(b",")[-1] if forwarded else b""), peer)


def proxied_address(candidate: bytes, peer: str) -> str:
    """The address a trusted proxy's header names, normalised, or the peer's when it names
    none. An IPv6 zone (`fe80::1%eth0`) is refused: it names an interface of the proxy's own
    host, not a client, and its free text would make one client many addresses."""
    text = candidate.strip().decode("latin-1")
    if "%" in text:
        return peer
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return peer


def parse_cookies(header: str) -> dict[str, str]:
    """Cookie header (RFC 6265 5.4: `name=value` pairs joined by `; `) → dict; a repeated
    name keeps its first value (browsers send the older cookie of one path first: ours, not
    one tossed in later by a sibling subdomain), a pair without `=` is skipped, double quotes around a value
    are dropped; a header over 8 KiB counts as no cookies."""
    if not header or len(header) > 8192:
        return {}
    jar: dict[str, str] = {}
    for pair in reversed(header.split(";")):  # backwards, so the first of a name is the one kept
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        jar[name] = value
    return jar


def etag_of(body: bytes) -> str:
    """96 bits of the body's SHA-1 (the hardware-accelerated hash here, twice blake2b's speed
    on a 4 KB reply): a validator, not a signature."""
    return '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:24] + '"'


def etag_matches(if_none_match: bytes, etag: str) -> bool:
    """Weak comparison, as RFC 9110 asks for If-None-Match: W/ prefixes are ignored."""
    value = if_none_match.decode("latin-1").strip()
    if value == "*":
        return True
    bare = etag.removeprefix("W/")
    for candidate in value.split(","):
        if candidate.strip().removeprefix("W/") == bare:
            return True
    return False


def compress(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=5, mtime=0)


def wants_gzip(accept_encoding: bytes | None) -> bool:
    if not accept_encoding:
        return False
    for part in accept_encoding.decode("latin-1").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
