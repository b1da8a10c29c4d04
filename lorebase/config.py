"""Settings: one table of defaults, the few keys that differ per environment, the
gitignored secret.py, and LOREBASE_<KEY> environment variables, which win over all.

The environment name (dev or prod) is the one argument the server takes, as the seed
says; everything else is read from here.
"""

from __future__ import annotations

import difflib
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

ENVIRONMENTS = ("dev", "prod")
ROOT = Path(__file__).resolve().parent.parent  # the directory holding the lorebase package

# Every key, with its dev value. Types come from these values: an environment variable
# for a list key is comma-separated, for a bool key "1/true/yes/on" or "0/false/no/off".
DEFAULTS: dict[str, Any] = {
    "PORT": 8000,
    "HOST": "127.0.0.1",
    "DATA_DIR": "data",  # a relative path is inside the project directory
    "REDIS_URL": "",  # empty: start an embedded redis-server with its data in DATA_DIR/redis
    "REDIS_APPENDFSYNC": "everysec",  # or "always": every acknowledged write survives a crash
    "REDIS_TIMEOUT": 1.0,  # seconds a Redis command may take before the request gets 503
    "BASE_URL": "http://localhost:8000",
    "WORKERS": 0,  # 0: one per CPU
    "COOKIE_NAME": "lorebase",
    "COOKIE_SECRET": "",
    "MAIL_URL": "console://",
    "MAIL_FROM": "lorebase <noreply@localhost>",
    "S3_ENDPOINT": "",
    "S3_REGION": "us-east-1",
    "S3_BUCKET": "",
    "S3_TRASH_BUCKET": "",
    "S3_ACCESS_KEY": "",
    "S3_SECRET_KEY": "",
    "ADMINS": [],
    "WHITELIST": [],
    "TRUSTED_PROXIES": [],  # peers whose X-Forwarded-For / X-Real-IP is believed
    "APPS": [],  # the applications this server loads, in order: importable module paths (docs: Writing an app)
    "JSON_LIMIT": 16 * 1024,  # bytes of a JSON body, for a route without a limit of its own
    # master tasks
    "BACKUP_EVERY": 3600,  # seconds between two Redis backups (0: none scheduled; `lorebase backup` still works)
    "BACKUP_KEEP": 24,  # newest backups kept
    "BACKUP_DAILY": 30,  # days for which the newest backup of each day is kept too
    # the Redis ACL user backups and restores connect as (REDIS_URL's servers, these credentials):
    # the API's own user may not copy (SYNC) or wipe (FLUSHALL, RESTORE) the database. Empty:
    # REDIS_URL's own credentials (the embedded Redis, a Redis without ACL users)
    "BACKUP_REDIS_USER": "",
    "BACKUP_REDIS_PASSWORD": "",
    "BACKUP_KEY": "",  # seals every backup, >= 32 bytes (empty: one made up in DATA_DIR/backup_key; not prod+S3)
    "CHECK_EVERY": 86400,  # seconds between two consistency checks (0: none; also one when the tasks process starts)
    "LOCK_TTL": 10.0,  # seconds a scheduled task's Redis lock outlives a node that died holding it
    "PAUSE_TTL": 30.0,  # seconds a pause of writes (migrate --apply, restore) outlives the command, should it die
    "BEAT_EVERY": 10.0,  # seconds between two samples of the machine and Redis (0: no beat)
    "BEAT_SAMPLES": 3,  # consecutive samples over a threshold before it alerts (and under it before it is back)
    "BEAT_CPU": 90.0,  # % of all cores busy since the previous sample (0: no alert, for each threshold)
    "BEAT_MEMORY": 90.0,  # % of RAM used (not available)
    "BEAT_DISK": 90.0,  # % used of the disk holding DATA_DIR
    "BEAT_REDIS_MEMORY": 80.0,  # % of Redis's maxmemory used (no alert when maxmemory is 0)
    "HEADER_TIMEOUT": 10.0,  # seconds a request's line and headers may take to arrive (408, closed)
    "BODY_TIMEOUT": 30.0,  # seconds a JSON body may take to arrive, or an upload may send nothing (408)
    "STATS": True,  # count requests, logins, bytes... per minute in Redis (stats/); off: nothing counted
    "STATS_KEEP": 2 * 86400,  # seconds a minute's stats are kept
    "METRICS_TOKEN": "",  # GET /metrics also answers `Authorization: Bearer <this>` (a Prometheus scraper)
    "LOG_STREAM_MAX": 10000,  # entries kept in the Redis stream `log` (request errors, processes' events)
    "AUDIT_STREAM_MAX": 50000,  # entries kept in the Redis stream `audit` (admin actions, security events)
    "LOG_RATE": 60,  # request-error lines per client address (IPv6: /64) per minute a process writes to `log` (0: all)
    "LOG_WINDOW": 60.0,  # seconds over which LOG_RATE and AUDIT_ANONYMOUS_RATE count; then one `flood` line each
    "AUDIT_ANONYMOUS_RATE": 10,  # `tampered`, `signup`, lockout lines per kind per minute a process puts in `audit`
    "LOG_URL": "",  # also POST every notify line there, in batches of JSON lines (empty: don't)
    "LOG_BUFFER": 10000,  # lines a process holds for LOG_URL while it is down; past it, dropped and counted
    "ERROR_REPORTS_PER_MINUTE": 30,  # POST /error per client IP
    "SHUTDOWN_GRACE": 10.0,  # seconds workers get to finish in-flight requests
    "WORKER_CONNECTIONS": 1000,  # connections one worker holds at most (idle keep-alive ones make room)
    "WORKER_TIMEOUT": 10.0,  # seconds a worker may go without pinging the master before it is killed as hung
    "TASKS_TIMEOUT": 30.0,  # seconds the tasks process may go without beating to the master before it is replaced
    # identity
    "SESSION_IDLE": 7 * 86400,  # seconds a session lives unused; every use renews it
    "SESSION_MAX": 30 * 86400,  # seconds a session lives at most, used or not
    "SESSIONS_PER_USER": 100,  # live sessions a user may have; a login past it ends the oldest
    "REQUIRE_VERIFIED": False,  # login refused (403 verify) until the email is verified
    "VERIFY_TTL": 86400,  # seconds a verification link works
    "RESET_TTL": 3600,  # seconds a reset link works
    "INVITE_TTL": 7 * 86400,  # seconds an admin's invite link works
    "ARGON2_TIME": 2,  # argon2id parameters (OWASP): iterations,
    "ARGON2_MEMORY": 19456,  # KiB of memory,
    "ARGON2_PARALLELISM": 1,  # and lanes
    "HASH_THREADS": 1,  # password hashes a worker runs at once (each holds ARGON2_MEMORY); more wait
    "LOGIN_FAILS_PER_ACCOUNT": 10,  # failed logins per account per LOGIN_WINDOW
    "LOGIN_FAILS_PER_IP": 50,  # failed logins per client IP (an IPv6 /64 is one) per LOGIN_WINDOW
    "LOGIN_FAILS_PER_DEVICE": 10,  # failed logins per LOGIN_WINDOW of a browser holding a device cookie
    "DEVICE_TTL": 180 * 86400,  # seconds a device cookie (set at every good login) is kept by the browser
    "LOGIN_WINDOW": 900,
    "SIGNUPS_PER_IP": 20,  # valid signups per client IP per hour
    "RECOVER_PER_IP": 20,  # recover requests per client IP per hour
    "RECOVER_MAILS_PER_ACCOUNT": 5,  # reset mails per account per hour (past it: silently none)
    # nginx in front (`lorebase nginx`)
    "NGINX_AUTH_RATE": 10,  # requests per second per client address to /auth/ that nginx lets through,
    "NGINX_AUTH_BURST": 20,  # and how many beyond that rate it lets through at once (then 429)
    "NGINX_NODES": [],  # host:port of each API node nginx spreads requests over (empty: HOST:PORT, this node)
    # deploy/deploy.sh (read on the deploying machine, which needs none of the box's secrets)
    "DEPLOY_HOST": "",  # [user@]host that `lorebase deploy ENV` copies the release to (empty: refused)
    "DEPLOY_SSH_PORT": 22,
    "DEPLOY_KEEP": 5,  # newest releases kept on the box (the one serving and the one before it always are)
    # files
    "FILE_LIMIT": 100 * 1024 * 1024,  # bytes of one upload
    "QUOTA": 1024 * 1024 * 1024,  # bytes of files per user
    # the file server (`lorebase serve --role files`, fileserver.py)
    "FILES_URL": "",  # empty: file bytes on this node's disk; else the file server, e.g. http://10.0.0.5:8081
    "FILES_SECRET": "",  # sent by API nodes, required by the file server (X-Files-Secret); >= 32 bytes
    "FILES_HOST": "127.0.0.1",  # where `--role files` listens
    "FILES_PORT": 8081,
    "FILES_TIMEOUT": 10.0,  # seconds an API node waits on the file server (each connect, read, write): then 503
    "FILES_CONNECTIONS": 1000,  # connections the file server holds at most (idle ones make room; else closed)
}

# The range of each numeric key (a bool is no number here), checked at every load: the key
# and its range in the message. Range(low): low or more; Range(low, high): both ends included;
# above=True: more than low (a number of seconds, say, where 0 would mean nothing works).
class Range:
    def __init__(self, low: float, high: float | None = None, above: bool = False, note: str = ""):
        self.low, self.high, self.above, self.note = low, high, above, note

    def holds(self, value: float) -> bool:
        if value < self.low or (self.above and value == self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.high is not None:
            text = f"{self.low:g}-{self.high:g}"
        else:
            text = f"above {self.low:g}" if self.above else f"{self.low:g} or more"
        return f"{text} ({self.note})" if self.note else text


PORTS = Range(1, 65535)
SECONDS = Range(0, above=True)  # a timeout, a lifetime, a window
EVERY = Range(0, note="0: none")  # seconds between two runs
COUNT = Range(0)  # a cap, a rate or a size where 0 is a meaning of its own (none, or no limit)
SOME = Range(1)  # at least one
PERCENT = Range(0, 100)  # 0: no alert

RANGES: dict[str, Range] = {
    "PORT": PORTS, "REDIS_TIMEOUT": SECONDS, "WORKERS": Range(0, note="0: one per CPU"), "JSON_LIMIT": SOME,
    "BACKUP_EVERY": EVERY, "BACKUP_KEEP": SOME, "BACKUP_DAILY": COUNT, "CHECK_EVERY": EVERY,
    "LOCK_TTL": SECONDS, "PAUSE_TTL": SECONDS, "BEAT_EVERY": EVERY, "BEAT_SAMPLES": SOME,
    "BEAT_CPU": PERCENT, "BEAT_MEMORY": PERCENT, "BEAT_DISK": PERCENT, "BEAT_REDIS_MEMORY": PERCENT,
    "HEADER_TIMEOUT": SECONDS, "BODY_TIMEOUT": SECONDS, "STATS_KEEP": Range(60),
    "LOG_STREAM_MAX": COUNT, "AUDIT_STREAM_MAX": COUNT, "LOG_RATE": COUNT, "LOG_WINDOW": SECONDS,
    "AUDIT_ANONYMOUS_RATE": COUNT, "LOG_BUFFER": COUNT, "ERROR_REPORTS_PER_MINUTE": COUNT,
    "SHUTDOWN_GRACE": COUNT, "WORKER_CONNECTIONS": COUNT, "WORKER_TIMEOUT": SECONDS, "TASKS_TIMEOUT": SECONDS,
    "SESSION_IDLE": SOME, "SESSION_MAX": SOME, "SESSIONS_PER_USER": SOME, "VERIFY_TTL": SOME,
    "RESET_TTL": SOME, "INVITE_TTL": SOME, "ARGON2_TIME": SOME, "ARGON2_MEMORY": Range(8),
    "ARGON2_PARALLELISM": Range(1, 255), "HASH_THREADS": SOME, "LOGIN_FAILS_PER_ACCOUNT": SOME,
    "LOGIN_FAILS_PER_IP": SOME, "LOGIN_FAILS_PER_DEVICE": SOME, "DEVICE_TTL": SOME, "LOGIN_WINDOW": SOME,
    "SIGNUPS_PER_IP": COUNT, "RECOVER_PER_IP": COUNT, "RECOVER_MAILS_PER_ACCOUNT": COUNT,
    "NGINX_AUTH_RATE": SOME, "NGINX_AUTH_BURST": COUNT, "DEPLOY_SSH_PORT": PORTS, "DEPLOY_KEEP": SOME,
    "FILE_LIMIT": COUNT, "QUOTA": COUNT, "FILES_PORT": PORTS, "FILES_TIMEOUT": SECONDS,
    "FILES_CONNECTIONS": SOME,
}

# Variables named LOREBASE_* that are not settings, set on purpose: by the command line and the
# deploy scripts (PROJECT, PYTHON, SECRET_FILE), by a master for the one it re-executes into
# (REEXEC), by lorebase's own test suites and CI (TEST_*), and deploy/redis/users.acl's
# placeholder (SHA256). Any other LOREBASE_<NAME> is a mistyped setting, refused at start.
NOT_SETTINGS = frozenset({
    "LOREBASE_PROJECT", "LOREBASE_PYTHON", "LOREBASE_SECRET_FILE", "LOREBASE_REEXEC", "LOREBASE_SHA256",
    "LOREBASE_TEST_REDIS", "LOREBASE_TEST_FILES", "LOREBASE_TEST_APPS", "LOREBASE_TEST_PYTHONS",
})

# Only what differs in prod; the rest is the table above.
PER_ENV: dict[str, dict[str, Any]] = {
    "dev": {},
    "prod": {
        "DATA_DIR": "/var/lib/lorebase",
        "TRUSTED_PROXIES": ["127.0.0.1", "::1"],  # nginx on the same box
        "MAIL_URL": "",  # must be set: smtp://... or ses://region
    },
}

SECRET_KEYS = ("COOKIE_SECRET", "S3_SECRET_KEY", "METRICS_TOKEN", "FILES_SECRET", "BACKUP_REDIS_PASSWORD",
               "BACKUP_KEY")
MIN_SECRET_BYTES = 32
KNOWN_WEAK = {"", "changeme", "secret", "dev", "change-me", "lorebase"}


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the key."""


class Config:
    """The settings of one environment, as attributes named like the keys. Each key of
    DEFAULTS is declared here with the type of its default (tests/test_config.py holds the
    two together), so a type checker knows `config.PORT` is an int and refuses a key that
    does not exist."""

    ENV: str
    PORT: int
    HOST: str
    DATA_DIR: str
    REDIS_URL: str
    REDIS_APPENDFSYNC: str
    REDIS_TIMEOUT: float
    BASE_URL: str
    WORKERS: int
    COOKIE_NAME: str
    COOKIE_SECRET: str
    MAIL_URL: str
    MAIL_FROM: str
    S3_ENDPOINT: str
    S3_REGION: str
    S3_BUCKET: str
    S3_TRASH_BUCKET: str
    S3_ACCESS_KEY: str
    S3_SECRET_KEY: str
    ADMINS: list[str]
    WHITELIST: list[str]
    TRUSTED_PROXIES: list[str]
    JSON_LIMIT: int
    BACKUP_EVERY: int
    BACKUP_KEEP: int
    BACKUP_DAILY: int
    BACKUP_REDIS_USER: str
    BACKUP_REDIS_PASSWORD: str
    BACKUP_KEY: str
    CHECK_EVERY: int
    LOCK_TTL: float
    PAUSE_TTL: float
    BEAT_EVERY: float
    BEAT_SAMPLES: int
    BEAT_CPU: float
    BEAT_MEMORY: float
    BEAT_DISK: float
    BEAT_REDIS_MEMORY: float
    HEADER_TIMEOUT: float
    BODY_TIMEOUT: float
    STATS: bool
    STATS_KEEP: int
    METRICS_TOKEN: str
    LOG_STREAM_MAX: int
    AUDIT_STREAM_MAX: int
    LOG_RATE: int
    LOG_WINDOW: float
    AUDIT_ANONYMOUS_RATE: int
    LOG_URL: str
    LOG_BUFFER: int
    ERROR_REPORTS_PER_MINUTE: int
    SHUTDOWN_GRACE: float
    WORKER_CONNECTIONS: int
    WORKER_TIMEOUT: float
    TASKS_TIMEOUT: float
    SESSION_IDLE: int
    SESSION_MAX: int
    SESSIONS_PER_USER: int
    REQUIRE_VERIFIED: bool
    VERIFY_TTL: int
    RESET_TTL: int
    INVITE_TTL: int
    ARGON2_TIME: int
    ARGON2_MEMORY: int
    ARGON2_PARALLELISM: int
    HASH_THREADS: int
    LOGIN_FAILS_PER_ACCOUNT: int
    LOGIN_FAILS_PER_IP: int
    LOGIN_FAILS_PER_DEVICE: int
    DEVICE_TTL: int
    LOGIN_WINDOW: int
    SIGNUPS_PER_IP: int
    RECOVER_PER_IP: int
    RECOVER_MAILS_PER_ACCOUNT: int
    NGINX_AUTH_RATE: int
    NGINX_AUTH_BURST: int
    NGINX_NODES: list[str]
    DEPLOY_HOST: str
    DEPLOY_SSH_PORT: int
    DEPLOY_KEEP: int
    FILE_LIMIT: int
    QUOTA: int
    FILES_URL: str
    FILES_SECRET: str
    FILES_HOST: str
    FILES_PORT: int
    FILES_TIMEOUT: float
    FILES_CONNECTIONS: int
    APPS: list[str]

    def __init__(self, env: str, values: dict[str, Any], project: Path | None = None):
        self.ENV = env
        self.project = project or project_dir()  # the directory of config.py, secret.py, the apps
        self._values = values
        for key, value in values.items():
            setattr(self, key, value)

    if not TYPE_CHECKING:  # to a type checker, an unknown key is an error, not Any

        def __getattr__(self, name: str) -> Any:  # only reached for unknown names
            raise AttributeError(f"no config key {name}")

    @property
    def embedded_redis(self) -> bool:
        return not self.REDIS_URL

    @property
    def secure_cookies(self) -> bool:
        return str(self.BASE_URL).startswith("https://")

    @property
    def cookie_name(self) -> str:
        """COOKIE_NAME, with the `__Host-` prefix when cookies are Secure: a browser then takes
        the cookie only from this exact host over HTTPS, with Path=/ and no Domain, so a sibling
        subdomain cannot plant one of the same name."""
        return f"__Host-{self.COOKIE_NAME}" if self.secure_cookies else str(self.COOKIE_NAME)

    @property
    def redis_dir(self) -> Path:
        return Path(self.DATA_DIR) / "redis"

    @property
    def redis_socket(self) -> Path:
        """The embedded Redis's unix socket (its only way in)."""
        return self.redis_dir / "redis.sock"

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked (and passwords inside URLs), for logs and the admin UI."""
        return {k: ("***" if k in SECRET_KEYS and v else _mask_password(v)) for k, v in self._values.items()}


def _mask_password(value: Any) -> Any:
    """redis://:pw@host/0, smtp://user:pw@host → the same URL with the password as ***."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return value
    parts = urlsplit(value)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return value
    netloc = userinfo.split(":", 1)[0] + ":***@" + host
    return parts._replace(netloc=netloc).geturl()


def _coerce(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"LOREBASE_{key} must be a boolean, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"LOREBASE_{key} must be an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"LOREBASE_{key} must be a number, got {raw!r}") from None
    if isinstance(default, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def project_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The project a command works on: LOREBASE_PROJECT, else the current directory. Its
    config.py and secret.py are read, DATA_DIR is relative to it, and its own packages (APPS)
    import from it."""
    variables = os.environ if environ is None else environ
    return Path(variables.get("LOREBASE_PROJECT") or os.getcwd()).resolve()


def _secret_file(project: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    variables = os.environ if environ is None else environ
    return Path(variables.get("LOREBASE_SECRET_FILE") or (project or project_dir(variables)) / "secret.py")


def _read_settings(path: Path) -> dict[str, Any]:
    """config.py and secret.py are Python: UPPER_CASE names are settings."""
    if not path.exists():
        return {}
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - the operator's own file
    return {k: v for k, v in namespace.items() if k.isupper()}


def _project_settings(path: Path, env: str) -> dict[str, Any]:
    """The project's config.py: its UPPER_CASE keys for every environment, then the dict named
    like the environment in capitals (DEV = {...}, PROD = {...}) for that one."""
    settings = _read_settings(path)
    per_env = {name.upper() for name in ENVIRONMENTS}
    out = {k: v for k, v in settings.items() if k not in per_env}
    for name in sorted(per_env & set(settings)):  # every environment's dict: a typo in PROD shows in dev too
        if not isinstance(settings[name], dict):
            raise ConfigError(f"{path}: {name} must be a dict of settings")
        for key in settings[name]:
            if key not in DEFAULTS:
                raise ConfigError(f"{path}: unknown key {key} in {name}{_nearest(str(key), DEFAULTS)}")
    out.update(settings.get(env.upper(), {}))
    return out


def _nearest(name: str, known: Mapping[str, Any] | frozenset[str]) -> str:
    """`: did you mean X?` for the known name closest to a mistyped one, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else ""


def _unknown_variables(environ: Mapping[str, str]) -> None:
    """A LOREBASE_* variable that is neither a setting nor one of NOT_SETTINGS is a typo, which
    would otherwise leave the setting it meant at its default without a word."""
    settings = {f"LOREBASE_{key}" for key in DEFAULTS}
    for name in sorted(environ):
        if name.startswith("LOREBASE_") and name not in settings and name not in NOT_SETTINGS:
            raise ConfigError(f"unknown setting {name}{_nearest(name, frozenset(settings))} (every setting: "
                              "lorebase config; a variable LOREBASE_<KEY> sets <KEY>)")


def _check_ranges(values: dict[str, Any]) -> None:
    for key, allowed in RANGES.items():
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not allowed.holds(value):
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def load(env: str = "dev", environ: dict[str, str] | None = None, check: bool = True,
         role: str = "api") -> Config:
    """Build the settings of `env`: defaults, per-env values, secret.py, then LOREBASE_*.
    check=False: no refusal of missing prod secrets (for reading a setting such as
    DEPLOY_HOST on a machine that does not hold them); nothing is generated either.
    role="files": the file server's checks (FILES_SECRET; REDIS_URL with S3), not the API's
    (it sets no cookie and sends no mail); role="nginx": no secret at all. Whatever the role, a
    LOREBASE_* variable or a config.py/secret.py key that is no setting is refused (naming the
    nearest setting), and so is a number out of its RANGES."""
    if env not in ENVIRONMENTS:
        raise ConfigError(f"unknown environment {env!r}: use one of {', '.join(ENVIRONMENTS)}")
    environ = dict(os.environ if environ is None else environ)
    _unknown_variables(environ)
    project = project_dir(environ)
    values = dict(DEFAULTS)
    values.update(PER_ENV[env])
    for path, settings in ((project / "config.py", _project_settings(project / "config.py", env)),
                           (_secret_file(project, environ), _read_settings(_secret_file(project, environ)))):
        for key, value in settings.items():
            if key not in DEFAULTS:
                raise ConfigError(f"{path}: unknown key {key}{_nearest(key, DEFAULTS)}")
            values[key] = value
    for key, default in DEFAULTS.items():
        raw = environ.get(f"LOREBASE_{key}")
        if raw is not None:
            values[key] = _coerce(key, raw, default)
    values["ADMINS"] = [a.strip().lower() for a in values["ADMINS"]]
    values["WHITELIST"] = [w.strip().lower() for w in values["WHITELIST"]]
    if "LOREBASE_BASE_URL" not in environ and values["BASE_URL"] == DEFAULTS["BASE_URL"]:
        values["BASE_URL"] = f"http://localhost:{values['PORT']}"  # follow PORT unless set
    values["BASE_URL"] = str(values["BASE_URL"]).rstrip("/")
    values["DATA_DIR"] = str(project / values["DATA_DIR"])  # as it is when absolute
    _check_ranges(values)
    if values["WORKERS"] <= 0:
        values["WORKERS"] = os.cpu_count() or 1
    if not check:
        return Config(env, values, project)
    _check(env, values, role)
    if role == "api" and not values["COOKIE_SECRET"]:
        values["COOKIE_SECRET"] = kept_secret(Path(values["DATA_DIR"]))
    return Config(env, values, project)


def _check(env: str, values: dict[str, Any], role: str = "api") -> None:
    """What a role needs (the numeric ranges are checked for every one, in `load`): "api"
    everything; "files" the file server's own secret; "nginx" (`lorebase nginx`) no secret."""
    if values["REDIS_APPENDFSYNC"] not in ("everysec", "always"):
        raise ConfigError("REDIS_APPENDFSYNC must be everysec or always")
    if values["REDIS_URL"]:
        from .db import parse_url

        try:
            parse_url(str(values["REDIS_URL"]))
        except ValueError as error:
            raise ConfigError(f"REDIS_URL: {error}") from None
    if bool(values["BACKUP_REDIS_USER"]) != bool(values["BACKUP_REDIS_PASSWORD"]):
        raise ConfigError("BACKUP_REDIS_USER and BACKUP_REDIS_PASSWORD go together (the ACL user backups and "
                          "restores connect as), or neither")
    for node in values["NGINX_NODES"]:
        host, colon, port = str(node).strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"NGINX_NODES: {node!r} is not host:port")
    if values["LOG_URL"] and urlsplit(str(values["LOG_URL"])).scheme not in ("http", "https"):
        raise ConfigError("LOG_URL must be an http:// or https:// URL")
    if values["FILES_URL"]:
        parts = urlsplit(str(values["FILES_URL"]))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.username:
            raise ConfigError("FILES_URL must be http://host:port or https://host:port (the file server), or empty")
        if role == "api":
            check_files_secret(values)
    if role == "nginx":  # the site is made of ports, limits and timeouts: no secret of the server's
        return
    if role == "files":  # the file server takes no backup: it never needs BACKUP_KEY
        check_files_secret(values)
        if values["S3_BUCKET"] and not values["REDIS_URL"]:
            raise ConfigError("the file server runs the S3 mirror, whose queue is in Redis: set REDIS_URL "
                              "(the API nodes' Redis)")
        return
    check_backup_key(env, values)
    if env != "prod":
        return
    secret = values["COOKIE_SECRET"]
    if not isinstance(secret, str) or secret.strip().lower() in KNOWN_WEAK:
        raise ConfigError(
            "COOKIE_SECRET is missing or a default: set it in secret.py or LOREBASE_COOKIE_SECRET "
            "(generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"COOKIE_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
    if not values["MAIL_URL"]:
        raise ConfigError("MAIL_URL is not set: smtp://host:port or ses://region (console:// only prints mail)")
    if values["S3_BUCKET"] and not (values["S3_ACCESS_KEY"] and values["S3_SECRET_KEY"]):
        # boto3 may still find credentials on the instance (an IAM role); say so, don't stop
        print("lorebase: S3_BUCKET is set without S3_ACCESS_KEY/S3_SECRET_KEY; "
              "using boto3's default credentials", file=sys.stderr)


def check_files_secret(values: dict[str, Any]) -> None:
    """FILES_SECRET, which the API nodes and the file server share: in every environment (no
    node can make it up for the others), random, at least MIN_SECRET_BYTES."""
    secret = values["FILES_SECRET"]
    if not isinstance(secret, str) or secret.strip().lower() in KNOWN_WEAK:
        raise ConfigError("FILES_SECRET is missing or a default: the file server and the API nodes need the same "
                          "one (generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"FILES_SECRET is shorter than {MIN_SECRET_BYTES} bytes")


def check_backup_key(env: str, values: dict[str, Any]) -> None:
    """BACKUP_KEY seals every backup. Set, it must be random and at least MIN_SECRET_BYTES. Unset,
    a node makes one up in its data dir when it first seals or opens a backup (tasks/vault.py),
    which then restores only that node's own backups:
    refused in prod with S3 backups, which must restore on a new box, and which anyone holding
    the S3 keys (every API node, the file server) could otherwise read or plant."""
    key = values["BACKUP_KEY"]
    if not key and not (env == "prod" and values["S3_BUCKET"]):
        return
    if not isinstance(key, str) or key.strip().lower() in KNOWN_WEAK:
        raise ConfigError("BACKUP_KEY is missing or a default: with S3_BUCKET in prod, backups are sealed with it; set "
                          "it in secret.py or LOREBASE_BACKUP_KEY, the same on every API node, and keep a copy off the "
                          "box (generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"BACKUP_KEY is shorter than {MIN_SECRET_BYTES} bytes")


def kept_secret(data_dir: Path, name: str = "dev_cookie_secret") -> str:
    """Where no secret is set (a dev box; a backup key without S3), a random one kept in the
    data dir, so it survives restarts and no secret is ever a constant in the code."""
    path = data_dir / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    try:
        os.link(tmp, path)  # first writer wins when several processes race
    except FileExistsError:
        pass
    os.unlink(tmp)
    return path.read_text().strip()
