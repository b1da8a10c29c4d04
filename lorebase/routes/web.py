"""The web client's files (public): the page at / (and at /verify, /reset and /signup, the
pages the mail links open), and its script and style under /static/. Rendered in the browser from the
JSON API; no templates, no build step. ETag from modification time and size (seed: Caching)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ..chain import Route
from ..http import ApiError, Reply, Request, etag_matches

WEB = Path(str(resources.files("lorebase").joinpath("web")))
TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
         ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml", ".png": b"image/png",
         ".ico": b"image/x-icon"}
_cache: dict[str, tuple[int, int, bytes]] = {}


def _file(name: str, req: Request) -> Reply:
    path = WEB / name
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise ApiError(404, "notfound") from None
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"etag": etag, "cache-control": "no-cache"}
    content_type = TYPES.get(path.suffix, b"application/octet-stream")
    inm = req.header(b"if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Reply(304, b"", headers, content_type=content_type)
    cached = _cache.get(name)
    if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
        cached = (stat.st_mtime_ns, stat.st_size, path.read_bytes())
        _cache[name] = cached
    return Reply(200, cached[2], headers, content_type=content_type)


async def page(req: Request) -> Reply:
    return _file("index.html", req)


async def asset(req: Request) -> Reply:
    name = req.params["name"]
    if name not in {p.name for p in WEB.iterdir()} or name.startswith("."):
        raise ApiError(404, "notfound")
    return _file(name, req)


def routes() -> list[Route]:
    return [
        Route("GET", "/", page, summary="The web client", serves="text/html"),
        Route("GET", "/verify", page, summary="The web client's page for a verification link", serves="text/html"),
        Route("GET", "/reset", page, summary="The web client's page for a reset link", serves="text/html"),
        Route("GET", "/signup", page, summary="The web client's page for an invite link", serves="text/html"),
        Route("GET", "/static/{name}", asset, summary="The web client's script, style and images", serves="*/*"),
    ]
