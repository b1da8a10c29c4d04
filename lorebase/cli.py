"""The `lorebase` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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


def _redis(config: configmod.Config) -> Any:
    """A client for the environment's Redis: REDIS_URL, or the embedded one's socket."""
    import redis

    from .redisserver import EmbeddedRedis

    if config.embedded_redis:
        embedded = EmbeddedRedis(config)
        if not embedded.running_elsewhere():
            print(f"lorebase: the embedded Redis ({embedded.socket}) is not running: start `lorebase serve` first",
                  file=sys.stderr)
            raise SystemExit(2)
        return embedded.client(timeout=30)
    return redis.Redis.from_url(config.REDIS_URL, decode_responses=True, socket_timeout=30)


def cmd_files_check(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from .files.check import check

    config = _load(args.env)
    try:
        left = check(config, _redis(config), repair=args.repair, verify=args.verify)
    except (BotoCoreError, ClientError) as error:
        print(f"lorebase files check: S3 unreachable or refusing ({error}); nothing more checked", file=sys.stderr)
        return 2
    return 1 if left else 0


def cmd_s3_setup(args: argparse.Namespace) -> int:
    from .files import s3

    config = _load(args.env)
    if not (config.S3_BUCKET and config.S3_TRASH_BUCKET):
        print("lorebase: set S3_BUCKET and S3_TRASH_BUCKET first", file=sys.stderr)
        return 2
    for line in s3.setup(config):
        print(line)
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

    files = sub.add_parser("files", help="the file store: `files check [--repair]`")
    files_sub = files.add_subparsers(dest="files_command", metavar="SUBCOMMAND", required=True)
    sp = files_sub.add_parser("check", help="compare Redis metadata, the disk and S3; print what disagrees",
                              description="Exit 1 if problems were found (without --repair).")
    env_arg(sp)
    sp.add_argument("--repair", action="store_true", help="fetch missing local copies from S3, queue missing "
                    "S3 uploads, drop dangling ids")
    sp.add_argument("--verify", action="store_true", help="also hash every local file against its SHA-256")
    sp.set_defaults(func=cmd_files_check)

    s3p = sub.add_parser("s3", help="S3: `s3 setup` creates the buckets and the trash's 30-day expiry")
    s3_sub = s3p.add_subparsers(dest="s3_command", metavar="SUBCOMMAND", required=True)
    sp = s3_sub.add_parser("setup", help="create S3_BUCKET and S3_TRASH_BUCKET if missing; "
                           "trash objects expire after 30 days")
    env_arg(sp)
    sp.set_defaults(func=cmd_s3_setup)

    sp = sub.add_parser("openapi", help="print the OpenAPI 3.1 document (the same as GET /openapi.json)")
    env_arg(sp)
    sp.set_defaults(func=cmd_openapi)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
