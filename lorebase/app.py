"""The application: the whole chain in one list, read top to bottom (seed: Routes), and
what a worker opens at start-up and closes at shutdown.

To add your own routes, write a module like lorebase/routes/public.py and put its routes
in the section where they belong, with chain.insert(routes, "private", mine()).
"""

from __future__ import annotations

import msgspec

from . import __version__
from .chain import Chain, Route
from .config import Config
from .db import Redis
from .notify import notify
from .openapi import document
from .routes import public


def routes() -> list[Route]:
    return [
        *public.routes(),  # avant, then the public routes
    ]


def create_app(config: Config, chain_routes: list[Route] | None = None) -> Chain:
    app = Chain(chain_routes or routes(), config)

    async def start() -> None:
        app.db = Redis(config.REDIS_URL, timeout=config.REDIS_TIMEOUT)
        notify.attach_async(app.db)

    async def stop() -> None:
        await notify.close()
        await app.db.close()

    app.on_start, app.on_stop = start, stop
    app.openapi = msgspec.json.encode(document(app.routes, "lorebase", __version__))
    return app
