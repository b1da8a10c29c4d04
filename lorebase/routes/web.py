"""The web client's files (public): the page at / (and at /verify, /reset and /signup, the
pages the mail links open), the admin page at /admin, their scripts and styles under /static/,
the vendored libraries under /static/vendor/<lib>/, and each application's own files
(Extension.assets) under /apps/<name>/. Rendered in the browser from the JSON
API; no templates, no build step. ETag from modification time and size (seed: Caching).

The page knows no application: it asks GET /apps which scripts and stylesheets the loaded
applications bring (Extension.web), loads them, and each script adds its screens.

Only the regular files listed in those two folders are served, by their exact names: a name
is looked up, never joined into a path, so `..`, a dot file or a folder is a 404. The pages
hold no data: the admin page is as public as its script, and every admin route it calls
answers only an admin."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import msgspec

from ..chain import Route
from ..http import JSON, ApiError, Reply, Request, etag_matches

WEB = Path(str(resources.files("lorebase").joinpath("web")))
TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
         ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml", ".png": b"image/png",
         ".ico": b"image/x-icon", "": b"text/plain; charset=utf-8"}  # "": a LICENSE
_cache: dict[str, tuple[int, int, bytes]] = {}


VENDOR = WEB / "vendor"


def _listed(folder: Path, name: str) -> bool:
    """Whether `name` is a regular file of `folder` that may be served (not a dot file)."""
    if name.startswith(".") or name not in {p.name for p in folder.iterdir()}:
        return False
    path = folder / name
    return path.is_file() and not path.is_symlink() and path.suffix in TYPES


def _file(name: str, req: Request, root: Path = WEB) -> Reply:
    path = root / name
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
    cached = _cache.get(str(path))
    if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
        cached = (stat.st_mtime_ns, stat.st_size, path.read_bytes())
        _cache[str(path)] = cached
    return Reply(200, cached[2], headers, content_type=content_type)


async def page(req: Request) -> Reply:
    return _file("index.html", req)


async def admin_page(req: Request) -> Reply:
    return _file("admin.html", req)


async def favicon(req: Request) -> Reply:
    """What a browser asks for on its own (a page without a `<link rel=icon>`): an answer,
    not a 404 in the logs of every first visit."""
    return _file("favicon.svg", req)


async def asset(req: Request) -> Reply:
    name = req.params["name"]
    if not _listed(WEB, name):
        raise ApiError(404, "notfound")
    return _file(name, req)


async def vendored(req: Request) -> Reply:
    lib, name = req.params["lib"], req.params["name"]
    if lib.startswith(".") or lib not in {p.name for p in VENDOR.iterdir() if p.is_dir()} \
            or not _listed(VENDOR / lib, name):
        raise ApiError(404, "notfound")
    return _file(f"vendor/{lib}/{name}", req)


async def app_asset(req: Request) -> Reply:
    """An application's web file (Extension.assets), looked up as the client's own are."""
    folder = req.app.assets.get(req.params["app"])
    name = req.params["name"]
    if folder is None or not folder.is_dir() or not _listed(folder, name):
        raise ApiError(404, "notfound")
    return _file(name, req, folder)


class AppWeb(msgspec.Struct):
    """One loaded application's files for the web client, as GET /apps lists them."""

    name: str
    scripts: list[str]
    styles: list[str]


def _listing(req: Request) -> tuple[bytes, str]:
    """GET /apps's body and ETag: the same for the life of the process (APPS is read at start)."""
    apps = [AppWeb(ext.name, [f"/apps/{ext.name}/{n}" for n in ext.web if n.endswith(".js")],
                   [f"/apps/{ext.name}/{n}" for n in ext.web if n.endswith(".css")])
            for ext in req.app.extensions if ext.web]
    body = msgspec.json.encode(apps)
    return body, f'"{hashlib.sha256(body).hexdigest()[:16]}"'


async def app_list(req: Request) -> Reply:
    """The loaded applications' scripts and stylesheets, which the web client loads."""
    body, etag = _listing(req)
    headers = {"etag": etag, "cache-control": "no-cache"}
    inm = req.header(b"if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Reply(304, b"", headers, content_type=JSON)
    return Reply(200, body, headers, content_type=JSON)


def routes() -> list[Route]:
    return [
        Route("GET", "/", page, summary="The web client", serves="text/html"),
        Route("GET", "/verify", page, summary="The web client's page for a verification link", serves="text/html"),
        Route("GET", "/reset", page, summary="The web client's page for a reset link", serves="text/html"),
        Route("GET", "/signup", page, summary="The web client's page for an invite link", serves="text/html"),
        Route("GET", "/admin", admin_page, summary="The admin page (its data only for an admin)", serves="text/html"),
        Route("GET", "/favicon.ico", favicon, summary="The pages' icon (favicon.svg, as SVG)", serves="image/svg+xml"),
        Route("GET", "/static/{name}", asset, summary="The web client's script, style and images", serves="*/*"),
        Route("GET", "/static/vendor/{lib}/{name}", vendored, summary="A vendored library's file (uPlot)",
              serves="*/*"),
        Route("GET", "/apps", app_list, summary="The loaded applications' scripts and styles for the web client",
              ok=list[AppWeb]),
        Route("GET", "/apps/{app}/{name}", app_asset, summary="An application's web file (Extension.assets)",
              serves="*/*"),
    ]
