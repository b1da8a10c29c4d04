"""The application: the whole chain in one list, read top to bottom (seed: Routes), and
what a worker opens at start-up and closes at shutdown.

Your own routes go in a module like lorebase/apps/notes.py, placed in the section where
they belong: `insert(base, "private", notes.routes())` below is how the example does it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from . import __version__, db
from .apps import notes
from .chain import Chain, Route, insert
from .config import Config
from .files.store import Store
from .http import Request
from .identity import users
from .identity.devices import Devices
from .identity.passwords import Passwords
from .identity.sessions import Sessions
from .notify import notify
from .openapi import document
from .routes import account, admin, admin_ops, auth, files, gate, invites, public, web


def routes(config: Config) -> list[Route]:
    base = [
        *public.routes(),  # avant, then health, ping, error reports, the OpenAPI document
        *web.routes(),  # the web client's page and assets
        *auth.routes(),  # signup, verifyEmail, login, recover, reset
        *gate.gatekeeper_routes(),  # past here: a live session
        *gate.csrf_routes(),  # past here: state changes carry the session's CSRF token
        *account.routes(),  # csrf, logout, changePassword, destroy
        *files.routes(config),  # upload, list, download, delete
        *gate.admin_routes(),  # past here: admins only
        *invites.routes(),  # invite an email, list, revoke
        *admin.routes(),
        *admin_ops.routes(),  # logs, stats and beat series, backups
    ]
    return insert(base, "private", notes.routes())  # the example app


class App(Chain):
    """The chain plus what its routes share: Redis, sessions, passwords, files, app hooks."""

    def __init__(self, config: Config, chain_routes: list[Route]):
        super().__init__(chain_routes, config)
        self.sessions = Sessions(config)
        self.devices = Devices(config)
        self.passwords = Passwords(config)
        self.store = Store(config)
        # called with (app, username) before a user is deleted: apps remove their data
        self.destroy_hooks: list[Callable[[Any, str], Awaitable[None]]] = [
            notes.remove_user_notes, files.remove_user_files]

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

    async def current_user(self, req: Request) -> dict[str, str] | None:
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
    app = App(config, chain_routes or routes(config))

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
