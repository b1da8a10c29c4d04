"""The `lorebase` command."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from . import config as configmod


def _load(env: str) -> configmod.Config:
    try:
        return configmod.load(env)
    except configmod.ConfigError as error:
        print(f"lorebase: config: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from . import master

    return master.serve(_load(args.env))


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_load(args.env).public(), indent=2, sort_keys=True))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from .app import create_app

    sys.stdout.write(create_app(_load(args.env)).openapi.decode() + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lorebase",
        description="lorebase: an HTTP JSON API server with identity, files, notify and a master process. "
                    "Settings come from lorebase/config.py, secret.py and LOREBASE_<KEY> variables.")
    p.add_argument("--version", action="version", version=f"lorebase {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def env_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("env", nargs="?", default="dev", choices=configmod.ENVIRONMENTS,
                        help="the environment: dev (default) or prod")

    sp = sub.add_parser("serve", help="run the master, its workers and (with no REDIS_URL) an embedded Redis",
                        description="Run the server in the foreground until SIGTERM or Ctrl-C.")
    env_arg(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("config", help="print the effective settings of an environment, secrets masked")
    env_arg(sp)
    sp.set_defaults(func=cmd_config)

    sp = sub.add_parser("openapi", help="print the OpenAPI 3.1 document (the same as GET /openapi.json)")
    env_arg(sp)
    sp.set_defaults(func=cmd_openapi)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
