"""The `lorebase` command."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from . import config as configmod


def _load(env: str, role: str = "api") -> configmod.Config:
    try:
        return configmod.load(env, role=role)
    except configmod.ConfigError as error:
        print(f"lorebase: config: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.env, args.role)
    if args.role == "files":
        from . import fileserver

        return fileserver.serve(config)
    from . import master

    return master.serve(config)


def cmd_config(args: argparse.Namespace) -> int:
    if args.get is None:
        print(json.dumps(_load(args.env).public(), indent=2, sort_keys=True))
        return 0
    # one setting, unmasked and unchecked, for scripts (deploy.sh reads DEPLOY_HOST this way)
    if args.get not in configmod.DEFAULTS:
        print(f"lorebase config: no key {args.get}", file=sys.stderr)
        return 2
    try:
        value = getattr(configmod.load(args.env, check=False), args.get)
    except configmod.ConfigError as error:
        print(f"lorebase: config: {error}", file=sys.stderr)
        return 2
    print(",".join(map(str, value)) if isinstance(value, list) else value)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from .app import create_app

    sys.stdout.write(create_app(_load(args.env)).openapi.decode() + "\n")
    return 0


def _redis(config: configmod.Config) -> Any:
    """A client for the environment's Redis: REDIS_URL, or the embedded one's socket."""
    from .db import connect_sync
    from .redisserver import EmbeddedRedis

    if config.embedded_redis:
        embedded = EmbeddedRedis(config)
        if not embedded.running_elsewhere():
            print(f"lorebase: the embedded Redis ({embedded.socket}) is not running: start `lorebase serve` first",
                  file=sys.stderr)
            raise SystemExit(2)
    return connect_sync(config, timeout=30)


def _files_check(config: configmod.Config, db: Any, repair: bool = False, verify: bool = False,
          out: TextIO = sys.stdout, progress: TextIO | None = sys.stderr) -> int:
    """`lorebase files check`: the store's part alone, each finding printed as `<id>: <what>`
    (with --repair and something done: ` (<what was done>)`), then a summary; how many
    problems are left: all those found, or with `repair` those it could not fix. Raises
    blobs.Unavailable if the file server does not answer, botocore's errors if S3 refuses."""
    from .check import Check, Finding
    from .files.check import store

    def line(finding: Finding) -> str:
        return f"{finding.key}: {finding.what}" + (f" ({finding.done})" if finding.done else "")

    ctx = Check(config, db, repair, out, progress, line=line)
    waiting = store(ctx, verify)
    report = ctx.report()
    problems = len(report.problems)
    summary = f"{report.counts.get('files', 0)} files checked, {problems} problem{'s' if problems != 1 else ''}"
    if repair:
        summary += f", {problems - report.left} repaired"
    if waiting:
        summary += f" ({waiting} S3 upload{'s' if waiting != 1 else ''} pending)"
    print(summary, file=out, flush=True)
    return report.left


def cmd_files_check(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from .files.blobs import Unavailable

    config = _load(args.env)
    try:
        left = _files_check(config, _redis(config), repair=args.repair, verify=args.verify)
    except (BotoCoreError, ClientError) as error:
        print(f"lorebase files check: S3 unreachable or refusing ({error}); nothing more checked", file=sys.stderr)
        return 2
    except Unavailable as error:
        print(f"lorebase files check: the file server ({config.FILES_URL}) does not answer ({error.detail}); "
              "nothing more checked", file=sys.stderr)
        return 2
    return 1 if left else 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.env)
    return _run_check(config, _redis(config), args.repair, "lorebase check")


def _run_check(config: configmod.Config, client: Any, repair: bool, who: str) -> int:
    """The consistency check with its exit code: 0 clean, 1 problems left, 2 Redis or S3
    unreachable (said on stderr)."""
    import redis
    from botocore.exceptions import BotoCoreError, ClientError

    from .check import check
    from .files.blobs import Unavailable

    try:
        report = check(config, client, repair=repair, progress=sys.stderr)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        print(f"{who}: cannot reach Redis ({error}); nothing more checked", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as error:
        print(f"{who}: S3 unreachable or refusing ({error}); nothing more checked", file=sys.stderr)
        return 2
    except Unavailable as error:
        print(f"{who}: the file server ({config.FILES_URL}) does not answer ({error.detail}); nothing more checked",
              file=sys.stderr)
        return 2
    return 1 if report.left else 0


def _redis_url(config: configmod.Config) -> str | None:
    """The URL of the environment's Redis if it is running: REDIS_URL, or the embedded one's
    socket while `lorebase serve` runs. None: the embedded Redis is not running."""
    from .db import address
    from .redisserver import EmbeddedRedis

    if not config.embedded_redis or EmbeddedRedis(config).running_elsewhere():
        return address(config)
    return None


def cmd_backup(args: argparse.Namespace) -> int:
    from .tasks import backup

    words = list(args.words)
    env = next((w for w in words if w in configmod.ENVIRONMENTS), "dev")
    unknown = [w for w in words if w not in (*configmod.ENVIRONMENTS, "list")]
    if unknown:
        print(f"lorebase backup: unknown argument {unknown[0]!r} (lorebase backup [list] [ENV])", file=sys.stderr)
        return 2
    config = _load(env)
    where = backup.store(config)
    if "list" in words:
        found, ignored = backup.catalog(where)
        for obj, why in sorted(ignored.items()):
            print(f"ignored {obj}: {why}", file=sys.stderr)
        for manifest in found:
            name = manifest["name"]
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest["created"]))
            print(f"{name}  {when}  {manifest['size']} bytes  {manifest['keys']} keys  {len(manifest['files'])} files")
        return 0
    if _redis_url(config) is None:
        print("lorebase backup: the embedded Redis is not running: start `lorebase serve` first", file=sys.stderr)
        return 2
    try:
        manifest = backup.take(config, backup.redis_url(config), where)
    except backup.BackupError as error:
        print(f"lorebase backup: {error}", file=sys.stderr)
        return 1
    print(f"{manifest['name']}: {manifest['keys']} keys, {len(manifest['files'])} files, "
          f"{manifest['size']} bytes, sha256 {manifest['sha256']} in {where.where}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .db import connect_sync
    from .pause import paused
    from .redisserver import EmbeddedRedis
    from .tasks import backup, restoring

    config = _load(args.env)
    where = backup.store(config)
    running = _redis_url(config) is not None
    embedded = None
    try:
        name = backup.resolve(where, args.name)
        if running:
            url = backup.redis_url(config)
        else:  # no lorebase running: start the embedded Redis for the restore
            embedded = EmbeddedRedis(config)
            embedded.start()
            url = embedded.url
        if not _may_restore(url, args.force):
            return 1
        with paused(lambda: connect_sync(url, 30), f"restore {name}", lapse=float(config.PAUSE_TTL)):
            print("writes paused (503 maintenance) until the restore and its check are done", flush=True)
            report = backup.restore(where, name, url, ready=restoring.announcer(url, sys.stdout))
            print(f"restored {report['name']} into {url.split('@')[-1]}: {report['keys']} keys, {report['users']} "
                  f"users, {report['files']} files")
            print(restoring.files_note(config))
            print("consistency check of the restored database:", flush=True)
            client = connect_sync(url, 30)
            try:
                if _run_check(config, client, False, "lorebase restore: check") != 0:
                    print("the restore is done; `lorebase check --repair` fixes what can be fixed")
            finally:
                client.close()
    except backup.BackupError as error:
        print(f"lorebase restore: {error}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()  # SIGTERM: the AOF and the RDB are written before it exits
    return 0


def _may_restore(url: str, force: bool) -> bool:
    """No node serves from the Redis at `url`, or --force: said on stderr, either way."""
    from .db import connect_sync
    from .tasks import restoring

    client = connect_sync(url, 30)
    try:
        nodes = restoring.serving(client)
    finally:
        client.close()
    if not nodes:
        return True
    names = ", ".join(nodes)
    if not force:
        print(f"lorebase restore: refused: lorebase is serving from this Redis: {names}. Stop it there first, "
              "or pass --force to replace the database under it (writes paused meanwhile; whatever was "
              "written since the backup is lost); nothing was changed", file=sys.stderr)
        return False
    print(f"lorebase restore: --force: replacing the database under {names}", file=sys.stderr)
    return True


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrate
    from .tasks import backup

    config = _load(args.env)
    if _redis_url(config) is None:
        print("lorebase migrate: the embedded Redis is not running: start `lorebase serve` first", file=sys.stderr)
        return 2
    try:
        return (migrate.apply if args.apply else migrate.rehearse)(config, args.script)
    except (migrate.MigrationError, backup.BackupError) as error:
        print(f"lorebase migrate: {error}", file=sys.stderr)
        return 1


def cmd_migrations(args: argparse.Namespace) -> int:
    from . import migrate

    config = _load(args.env)
    if _redis_url(config) is None:
        print("lorebase migrations: the embedded Redis is not running: start `lorebase serve` first", file=sys.stderr)
        return 2
    return migrate.listing(config)


def cmd_admin(args: argparse.Namespace) -> int:
    """`lorebase admin add|remove USERNAME [ENV]`, `lorebase admin list [ENV]`: the admin flag
    through identity/admins.py, the steps `POST /admin/admin` takes (so the last enabled admin
    is never un-flagged). Exit 0 done, 1 refused, 2 bad usage (no such user, Redis down)."""
    import asyncio
    import getpass

    from . import db as dbmod
    from .identity import admins, users
    from .notify import notify

    who = f"lorebase admin {args.admin_command}"
    config = _load(args.env)
    notify.setup(config.ENV, "cli", config)
    by = f"cli:{getpass.getuser()}"  # the audit's `by`: the command line, as which system user
    if _redis_url(config) is None:
        print(f"{who}: the embedded Redis is not running: start `lorebase serve` first", file=sys.stderr)
        return 2

    async def act(client: dbmod.Client) -> int:
        if args.admin_command == "list":
            after: str | None = ""
            while after is not None:
                found, after = await users.search(client, "", after)
                for row in found:
                    if users.is_admin(row, config.ADMINS):
                        how = "flag" if row.get("admin") == "1" else "ADMINS"
                        print(f"{row['username']}  {row.get('email') or '-'}  ({how})")
            return 0
        name = args.username.strip().lower()
        user = await users.get(client, name)
        if user is None:
            print(f"{who}: no user {name!r} (sign up first, then run this again)", file=sys.stderr)
            return 2
        if args.admin_command == "add":
            await admins.grant(client, name, config.ADMINS)
            await notify.record(client, "admin flag", user=name, value=True, by=by)
            if user.get("disabled") == "1":
                print(f"{name} has the admin flag now, but is disabled: no rights until enabled")
            else:
                print(f"{name} is an admin now (the admin flag is set): /admin is theirs at their next request")
            return 0
        if user.get("admin") != "1" and not users.is_admin(user, config.ADMINS):
            print(f"{name} was not an admin: nothing changed")
            return 0
        try:
            await admins.take(client, user, config.ADMINS)
        except admins.Refused as refused:
            why = (f"{name}'s rights come from ADMINS in the settings ({user.get('email')}); the flag changes "
                   "nothing: take the address out of ADMINS instead" if refused.code == "configadmin" else
                   f"{name} is the last enabled admin: make another admin first (lorebase admin add USERNAME)")
            print(f"{who}: refused: {why}; nothing changed", file=sys.stderr)
            return 1
        await notify.record(client, "admin flag", user=name, value=False, by=by)
        print(f"{name} is no longer an admin (the admin flag is cleared)")
        return 0

    async def run() -> int:
        client = dbmod.connect(config, timeout=30)
        try:
            return await act(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except (dbmod.Unavailable, OSError) as error:
        print(f"{who}: cannot reach Redis ({error}); nothing changed", file=sys.stderr)
        return 2


def cmd_nginx(args: argparse.Namespace) -> int:
    from . import nginx

    if bool(args.cert) != bool(args.key):
        print("lorebase nginx: give --cert and --key together (or neither, for certbot's files)", file=sys.stderr)
        return 2
    config = _load(args.env, role="nginx")  # no cookie secret, no mail: the site uses none of them
    try:
        site = nginx.render(config, args.domain, args.cert, args.key, args.http_port, args.https_port,
                            args.static, args.listen)
    except ValueError as error:
        print(f"lorebase nginx: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(site)
    return 0


def cmd_s3_setup(args: argparse.Namespace) -> int:
    from .files import s3

    config = _load(args.env)
    if not (config.S3_BUCKET and config.S3_TRASH_BUCKET):
        print("lorebase: set S3_BUCKET and S3_TRASH_BUCKET first", file=sys.stderr)
        return 2
    for line in s3.setup(config):
        print(line)
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    from . import scaffold

    try:
        written = scaffold.new(args.dir, args.lorebase)
    except scaffold.ScaffoldError as error:
        print(f"lorebase new: {error}", file=sys.stderr)
        return 2
    print(f"lorebase new: wrote {len(written)} files in {args.dir}")
    print(f"  cd {args.dir} && scripts/test    # mypy and the tests\n  scripts/dev                      # serve it")
    return 0


def _deploy_script(name: str, args: list[str]) -> int:
    """Runs deploy/<name>.sh of this lorebase package (the one copy of the deploy scripts, for
    every project) on the project (LOREBASE_PROJECT, else the current directory), with this
    interpreter's lorebase to read its settings; never returns but on a missing sh. They are
    POSIX sh (a Mac's /bin/sh, Debian's dash): the `sh` on the PATH runs them, no bash needed."""
    sh = shutil.which("sh") or ("/bin/sh" if os.access("/bin/sh", os.X_OK) else None)
    if not sh:
        print(f"lorebase {name}: the deploy scripts need a POSIX sh (sh on the PATH, or /bin/sh)", file=sys.stderr)
        return 2
    script = Path(__file__).resolve().parent / "deploy" / f"{name}.sh"
    env = {**os.environ, "LOREBASE_PROJECT": str(configmod.project_dir()), "LOREBASE_PYTHON": sys.executable}
    os.execve(sh, [sh, str(script), *args], env)  # noqa: S606 - our own script


def cmd_provision(args: argparse.Namespace) -> int:
    return _deploy_script("provision", [args.host, *args.options])


def cmd_deploy(args: argparse.Namespace) -> int:
    return _deploy_script("deploy", [args.env, *([args.confirm] if args.confirm else [])])


def _command(parent: Any, name: str, help: str, description: str = "", **kw: Any) -> argparse.ArgumentParser:
    """A subcommand whose own --help starts with the line `lorebase --help` shows for it."""
    first = help[0].upper() + help[1:] + ("" if help.endswith(".") else ".")
    made: argparse.ArgumentParser = parent.add_parser(name, help=help, description=f"{first} {description}".strip(),
                                                      **kw)
    return made


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lorebase",
        description="lorebase: an HTTP JSON API server with identity, files, notify and a master process. "
                    "Settings come from lorebase/config.py, secret.py and LOREBASE_<KEY> variables.",
        epilog="A first day: `lorebase serve`, sign up on http://localhost:8000 (in dev the verification link is "
               "in the log), then `lorebase admin add YOURNAME` to become an admin (/admin). "
               "`lorebase COMMAND --help` says more of each command.")
    p.add_argument("--version", action="version", version=f"lorebase {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def env_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("env", nargs="?", default="dev", choices=configmod.ENVIRONMENTS,
                        help="the environment: dev (default) or prod")

    sp = _command(sub, "serve", help="run the master, its workers and (with no REDIS_URL) an embedded Redis",
                        description="Run the server in the foreground until SIGTERM or Ctrl-C.")
    env_arg(sp)
    sp.add_argument("--role", choices=("api", "files"), default="api",
                    help="api (default): the HTTP API; files: the file server for API nodes whose FILES_URL points "
                         "here (FILES_HOST:FILES_PORT, FILES_SECRET), with the S3 mirror and the beat")
    sp.set_defaults(func=cmd_serve)

    sp = _command(sub, "config", help="print the effective settings of an environment, secrets masked")
    env_arg(sp)
    sp.add_argument("--get", metavar="KEY", help="print only this key's value, as it is (lists comma-separated); "
                                                   "prod's checks are not run")
    sp.set_defaults(func=cmd_config)

    files = _command(sub, "files", help="the file store: `files check [--repair]`")
    files_sub = files.add_subparsers(dest="files_command", metavar="SUBCOMMAND", required=True)
    sp = _command(files_sub, "check", help="compare Redis metadata, the disk and S3; print what disagrees",
                              description="Exit 1 if problems were found (without --repair).")
    env_arg(sp)
    sp.add_argument("--repair", action="store_true", help="fetch missing local copies from S3, queue missing "
                    "S3 uploads, drop dangling ids")
    sp.add_argument("--verify", action="store_true", help="also hash every local file against its SHA-256")
    sp.set_defaults(func=cmd_files_check)

    sp = _command(sub, "check", help="the consistency check: users and their indexes, sessions, tokens, notes, "
                        "usage, files (as `files check`), queued jobs; print what disagrees",
                        description="One line per problem, then a summary; a progress bar on stderr when it is a "
                                    "terminal. Exit 0 clean, 1 problems left, 2 Redis or S3 unreachable.")
    env_arg(sp)
    sp.add_argument("--repair", action="store_true", help="fix each problem that can be fixed, each re-checked "
                    "atomically first; finish destroys that stopped half-way")
    sp.set_defaults(func=cmd_check)

    s3p = _command(sub, "s3", help="S3: `s3 setup` creates the buckets and the trash's 30-day expiry")
    s3_sub = s3p.add_subparsers(dest="s3_command", metavar="SUBCOMMAND", required=True)
    sp = _command(s3_sub, "setup", help="create S3_BUCKET and S3_TRASH_BUCKET if missing; "
                           "trash objects expire after 30 days")
    env_arg(sp)
    sp.set_defaults(func=cmd_s3_setup)

    sp = _command(sub, "backup", help="`backup [ENV]`: a Redis backup now; `backup list [ENV]`: the backups",
                  usage="%(prog)s [-h] [list] [{dev,prod}]",
                        description="A consistent snapshot of Redis, gzipped, with its SHA-256 and a manifest, "
                                    "to s3://S3_BUCKET/backups/<env>/ (or DATA_DIR/backups/<env>/ without S3); "
                                    "then the retention. `list` prints one line per backup, newest first.")
    sp.add_argument("words", nargs="*", metavar="list|ENV",
                    help="list: print the backups instead of taking one; ENV: dev (default) or prod")
    sp.set_defaults(func=cmd_backup)

    sp = _command(sub, "restore", help="replace the database with a backup: `restore NAME|latest [ENV]`",
                        description="Checks the backup's SHA-256 and loads it into a scratch Redis first (a "
                                    "corrupted one is refused, nothing touched); refuses while a lorebase node "
                                    "serves from that Redis (naming them) unless --force; says what it replaces; "
                                    "then, writes paused, empties the target Redis and copies every key in. With "
                                    "the embedded Redis and no lorebase running, it starts that Redis for the "
                                    "restore. Connects as BACKUP_REDIS_USER when set.")
    sp.add_argument("name", help="a name from `lorebase backup list`, or latest")
    env_arg(sp)
    sp.add_argument("--force", action="store_true", help="go on while lorebase serves from that Redis: its writes "
                    "get 503 maintenance during the restore, and whatever it wrote since the backup is lost")
    sp.set_defaults(func=cmd_restore)

    sp = _command(sub, "migrate", help="a structural change to the database: `migrate SCRIPT [ENV]` rehearses it "
                        "on a copy, `--apply` runs it on the live database (a backup first, restored on failure)",
                        description="SCRIPT is a file of migrations/ (NNNN_what.py) with migrate(db), and optionally "
                                    "check(db) -> problems and PAUSE = True (writes answer 503 maintenance while it "
                                    "runs). Prints what changed, by key pattern, and the command that undoes it.")
    sp.add_argument("script", type=Path)
    env_arg(sp)
    sp.add_argument("--apply", action="store_true", help="run it on the live database")
    sp.set_defaults(func=cmd_migrate)

    sp = _command(sub, "migrations", help="every migration lorebase and the loaded apps have, applied or pending",
                        description="One line per migration file (lorebase's own, then each application's "
                                    "Extension.migrations): the name it is recorded under, `applied <when>` or "
                                    "`pending`, and its path.")
    env_arg(sp)
    sp.set_defaults(func=cmd_migrations)

    admin = _command(sub, "admin", help="who is an admin: `admin add|remove USERNAME [ENV]`, `admin list [ENV]`",
                     description="Sets or clears a user's admin flag in the environment's Redis (the embedded one "
                                 "runs while `lorebase serve` does), as the admin page's Make/Remove admin does: "
                                 "removing the last enabled admin, or one whose rights come from ADMINS, is refused.")
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="SUBCOMMAND", required=True)
    for name, what in (("add", "give USERNAME the admin flag (they reach /admin at their next request)"),
                       ("remove", "take USERNAME's admin flag (refused for the last enabled admin, or one of "
                                  "ADMINS)")):
        sp = _command(admin_sub, name, help=what, description="Exit 0 done, 1 refused, 2 no such user.")
        sp.add_argument("username", metavar="USERNAME")
        env_arg(sp)
        sp.set_defaults(func=cmd_admin)
    sp = _command(admin_sub, "list", help="every enabled admin: username, email, and whether by flag or ADMINS")
    env_arg(sp)
    sp.set_defaults(func=cmd_admin)

    sp = _command(sub, "nginx", help="print the nginx site for this environment (HTTPS, limits, static files)",
                        description="The server blocks to put in /etc/nginx/sites-available/: HTTP redirects to "
                                    "HTTPS (certbot's challenge excepted), HSTS, the body limit and timeouts from "
                                    "lorebase's config, X-Real-IP/X-Forwarded-For set by nginx, a request rate "
                                    "on /auth/, static files served by nginx. Without --cert/--key it uses "
                                    "certbot's files for --domain.")
    env_arg(sp)
    sp.add_argument("--domain", required=True, help="the site's name (server_name)")
    sp.add_argument("--cert", help="a certificate file (self-contained site; else certbot's fullchain.pem)")
    sp.add_argument("--key", help="its private key")
    sp.add_argument("--http-port", type=int, default=80)
    sp.add_argument("--https-port", type=int, default=443)
    sp.add_argument("--static", type=Path, default=None, help="the web client's files (default: the installed ones)")
    sp.add_argument("--listen", default="", metavar="ADDRESS", help="listen on this address only (default: all)")
    sp.set_defaults(func=cmd_nginx)

    sp = _command(sub, "new", help="write a new project in DIR: an application of your own on lorebase",
                        description="DIR (made if missing, refused unless empty) gets a pyproject.toml depending on "
                                    "lorebase, a package named after DIR with one route and its test, config.py "
                                    "(APPS), a .gitignore (secret.py, data/), scripts/dev, scripts/test and a README.")
    sp.add_argument("dir", type=Path, metavar="DIR")
    sp.add_argument("--lorebase", metavar="PATH|SPEC", default=None,
                    help="the lorebase the project depends on: a path (a checkout or a wheel), a requirement "
                         f"('lorebase>=0.1') or a version (default: this one, {__version__})")
    sp.set_defaults(func=cmd_new)

    sp = _command(sub, "provision", help="set a Debian/Ubuntu box up over ssh for lorebase (idempotent): packages, "
                        "Redis, nginx, TLS, the service; `provision [user@]HOST [--port N] [--domain D] "
                        "[--mail-url URL] [--no-upgrade] [--refresh-weekly | --no-refresh-weekly]`",
                        description="Runs lorebase's deploy/provision.sh (docs: Deploy). The login needs root, or "
                                    "sudo without a password; DEPLOY_SSH (default: ssh) is the ssh command.")
    sp.add_argument("host", metavar="[USER@]HOST")
    sp.add_argument("options", nargs=argparse.REMAINDER, metavar="...",
                    help="--port N, --domain D, --mail-url URL, --no-upgrade, --refresh-weekly (the weekly "
                         "upgrade and reboot: off unless asked; not on a data server), --no-refresh-weekly")
    sp.set_defaults(func=cmd_provision)

    sp = _command(sub, "deploy", help="deploy the project's last commit to ENV's box (DEPLOY_HOST): `deploy ENV "
                        "[confirm]`, prod only with confirm",
                        description="Runs lorebase's deploy/deploy.sh on the project (LOREBASE_PROJECT, else the "
                                    "current directory; it must be in git): pack, copy, install (a new release "
                                    "with its own venv), activate (no request dropped; rolled back unless it "
                                    "serves), prune (docs: Deploy).")
    sp.add_argument("env", choices=configmod.ENVIRONMENTS, help="the environment: dev or prod")
    sp.add_argument("confirm", nargs="?", choices=("confirm",), help="prod needs it")
    sp.set_defaults(func=cmd_deploy)

    sp = _command(sub, "openapi", help="print the OpenAPI 3.1 document (the same as GET /openapi.json)")
    env_arg(sp)
    sp.set_defaults(func=cmd_openapi)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
