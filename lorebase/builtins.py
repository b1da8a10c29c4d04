"""lorebase's own parts, as extensions (extension.py): the chain's steps and public routes,
identity, files and the admin. A server loads them first, in this order, then APPS; the
chain then places every route at the end of its section, so this list reads as the chain
does (seed: Routes). `lorebase check` runs their checks in this order too, before the
applications'."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .extension import Extension, load_apps
from .files import check as files_check
from .identity import check as identity_check
from .routes import account, admin, admin_ops, auth, files, gate, invites, public, session, web

if TYPE_CHECKING:
    from .config import Config


def builtin(config: Config) -> list[Extension]:
    return [
        Extension("chain", routes=[
            *public.routes(),  # avant, then health, ping, error reports, the OpenAPI document
            *web.routes(),  # the web client's page and assets
            *gate.gatekeeper_routes(),  # past here: a live session
            *gate.csrf_routes(),  # past here: state changes carry the session's CSRF token
            *gate.admin_routes(),  # past here: admins only
        ]),
        Extension("identity", routes=[
            *auth.routes(),  # signup, verifyEmail, login, recover, reset
            *session.routes(),  # the pages' "am I logged in?", 200 either way
            *account.routes(),  # csrf, logout, changePassword, destroy
            *invites.routes(),  # (admin) invite an email, list, revoke
        ], checks=identity_check.CHECKS),
        Extension("files", routes=files.routes, on_destroy=[files.remove_user_files], checks=files_check.CHECKS),
        Extension("admin", routes=[
            *admin.routes(),  # users, sessions, roles
            *admin_ops.routes(),  # logs, stats and beat series, backups
        ]),
    ]


def extensions(config: Config) -> list[Extension]:
    """Every extension a server runs: the built-in parts, then APPS."""
    return [*builtin(config), *load_apps(config)]
