"""The application: the chain built from the extensions (the built-in parts, then APPS), and
what a worker opens at start-up and closes at shutdown.

Your own routes live in a package of yours, as an Extension (lorebase/extension.py) that APPS
names; `routes(config)` below places each route at the end of its section.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import msgspec

from . import __version__, db
from .chain import SECTIONS, Chain, Route
from .config import Config
from .extension import DestroyHook, Extension, UserDetail, extensions
from .files.store import Store
from .http import Request
from .identity import users
from .identity.devices import Devices
from .identity.passwords import Passwords
from .identity.records import User
from .identity.sessions import Sessions
from .notify import notify
from .openapi import document
from .stats import FLOWS


def routes(config: Config, exts: Sequence[Extension] | None = None) -> list[Route]:
    """Every extension's routes, each at the end of its section, in the extensions' order."""
    found = [route for ext in (extensions(config) if exts is None else exts) for route in ext.routes_for(config)]
    return sorted(found, key=lambda route: SECTIONS.index(route.section))  # stable: order within a section stays


class App(Chain):
    """The chain plus what its routes share: Redis, sessions, passwords, files, the extensions."""

    def __init__(self, config: Config, chain_routes: list[Route], exts: Sequence[Extension]):
        super().__init__(chain_routes, config)
        self.sessions = Sessions(config)
        self.devices = Devices(config)
        self.passwords = Passwords(config)
        self.store = Store(config)
        self.extensions = list(exts)
        # called with (app, username) before a user is deleted: the applications first (their
        # data may name the user's files), then the built-in parts
        self.destroy_hooks: list[DestroyHook] = [hook for ext in reversed(self.extensions) for hook in ext.on_destroy]
        # what the admin's user detail adds, per extension
        self.user_details: list[UserDetail] = [ext.user_detail for ext in self.extensions if ext.user_detail]
        # each application's web files, served at /apps/<name>/<file>
        self.assets: dict[str, Path] = {ext.name: Path(ext.assets) for ext in self.extensions if ext.assets}

    async def destroy_user(self, username: str) -> bool:
        """A user and everything of it, in destroy's three steps: first every session ends and
        no new one can open (the username stays taken, so nobody can sign up as it while its
        data is removed), marked `destroying`; then the apps' data (notes, files); then the
        user, its indexes and tokens. If this dies half-way, `lorebase check --repair`
        finishes it from the mark. The user's own destroy and an admin's delete run it. False
        if the user was gone already."""
        mark = await users.begin_destroy(self.db, self.sessions, username)
        return bool(mark) and await self.erase_user(username, mark)

    async def erase_user(self, username: str, destroying: str) -> bool:
        """Destroy's steps 2 and 3, after `users.begin_destroy`: the apps' data (notes, files
        to the S3 trash), then the user, its indexes and tokens, if it still carries the
        `destroying` mark. The route runs it; so does `lorebase check --repair` for a destroy
        that died half-way. Each step is safe to run again."""
        for hook in self.destroy_hooks:
            await hook(self, username)
        user = await users.get(self.db, username)
        return user is not None and await users.delete(self.db, user, destroying)

    async def current_user(self, req: Request) -> User | None:
        """The user record of the request's session, read once per request."""
        if req.user is None and req.session is not None:
            req.user = await users.get(self.db, req.session["user"])
        return req.user


async def watch_maintenance(app: App) -> None:
    """Once a second: is the `maintenance` key there (`lorebase migrate` pausing writes)? The
    chain then answers state-changing requests 503 `maintenance`; nothing per request."""
    from .pause import MAINTENANCE

    while True:
        try:
            app.maintenance = bool(await app.db.call("EXISTS", MAINTENANCE))
        except (db.RedisError, db.Unavailable):
            pass  # Redis down: writes fail on their own
        await asyncio.sleep(1.0)


def create_app(config: Config, chain_routes: list[Route] | None = None) -> App:
    exts = extensions(config)
    for ext in exts:
        for name, text in ext.stats.items():
            FLOWS.setdefault(name, text)
    app = App(config, chain_routes or routes(config, exts), exts)

    flusher: list[asyncio.Task[None]] = []

    async def start() -> None:
        app.db = db.connect(config)
        notify.attach_async(app.db)
        flusher.append(asyncio.get_running_loop().create_task(watch_maintenance(app)))
        if app.stats.enabled:
            flusher.append(asyncio.get_running_loop().create_task(app.stats.run(app.db)))

    async def stop() -> None:
        for task in flusher:  # its last counts written, then stopped
            task.cancel()
        await asyncio.gather(*flusher, return_exceptions=True)
        await notify.close()
        await app.store.blobs.close()  # the file server's connections, with FILES_URL
        await app.db.close()

    app.on_start, app.on_stop = start, stop
    app.openapi = msgspec.json.encode(document(app.routes, "lorebase", __version__))
    return app
