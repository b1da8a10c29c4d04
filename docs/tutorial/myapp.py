"""myapp: the application of the tutorial (docs/using/writing-an-app.md), whole, as it sits in
a project's myapp/__init__.py. The page includes it piece by piece; a test runs it."""

from __future__ import annotations

import time

from lorebase import ApiError, App, Extension, Reply, Request, Route, Schema, Text, reply
from lorebase.extension import user_tag


# --8<-- [start:hello]
async def hello(req: Request) -> Reply:
    assert req.session is not None  # a private route: only a live session gets here
    return reply(200, {"hello": req.session["user"]})
# --8<-- [end:hello]


# --8<-- [start:keys]
def bookmarks_key(username: str) -> str:
    """A user's bookmarks, a hash: URL → unix ms it was saved. The user's hash tag keeps it in
    the user's slot on a Redis Cluster, beside its session and its files."""
    return f"myapp:bookmarks:{user_tag(username)}"
# --8<-- [end:keys]


# --8<-- [start:routes]
class Bookmark(Schema):
    url: Text(8, 2048, pattern=r"^https?://[^\x00-\x20\x7f]+\Z")  # no space or control character


async def save(req: Request) -> Reply:
    assert req.session is not None
    await req.app.db.call("HSET", bookmarks_key(req.session["user"]), req.data.url, int(time.time() * 1000))
    return reply(200, {})


async def bookmarks(req: Request) -> Reply:
    assert req.session is not None
    saved = await req.app.db.call("HGETALL", bookmarks_key(req.session["user"]))
    pairs = dict(zip(saved[::2], saved[1::2], strict=True))  # replies come decoded, as str
    return reply(200, [{"url": url, "saved": int(ms)} for url, ms in sorted(pairs.items())])


async def forget(req: Request) -> Reply:
    assert req.session is not None
    if not await req.app.db.call("HDEL", bookmarks_key(req.session["user"]), req.data.url):
        raise ApiError(404, "notfound")
    return reply(200, {})
# --8<-- [end:routes]


# --8<-- [start:destroy]
async def remove_user_bookmarks(app: App, username: str) -> None:
    """Destroy's second step: the user's data goes (safe to run twice)."""
    await app.db.call("DEL", bookmarks_key(username))
# --8<-- [end:destroy]


# --8<-- [start:extension]
extension = Extension(
    "myapp",
    routes=[
        Route("GET", "/hello", hello, section="private", summary="Who you are"),
        Route("POST", "/bookmarks", save, section="private", body=Bookmark, summary="Save a URL"),
        Route("GET", "/bookmarks", bookmarks, section="private", summary="Your saved URLs"),
        Route("POST", "/bookmarks/delete", forget, section="private", body=Bookmark,
              summary="Forget a URL", replies={404: ["notfound"]}),
    ],
    on_destroy=[remove_user_bookmarks],
)
# --8<-- [end:extension]
