"""The seam through which an application joins lorebase, and each built-in part too.

An application is a module of yours that holds an `Extension` named `extension`; the setting
APPS lists such modules (`"pkg.mod"`, or `"pkg.mod:attribute"` for another name), and every
process of a server loads them, in that order, after the built-in parts (identity, files,
admin). An extension contributes, each optional:

- routes, each with its chain section (public, auth, private, admin...): placed at the end
  of that section, so the gatekeeper, the CSRF check and the admin gate run before them as
  they run before the built-ins;
- destroy hooks: its data of a user goes in destroy's second step (after every session
  ended, before the user record goes); a hook must be safe to run twice;
- consistency checks for `lorebase check`, each reporting findings through the CheckContext;
- a line of the admin's user detail: fields merged into `GET /admin/users/{name}`;
- durable queues and scheduled tasks, run by the tasks process (a job at least once; a
  scheduled task once per cluster per period);
- stats flows: named counters (`app.stats.flow(name)`), kept per minute and on /metrics;
- web assets, served at `/apps/<name>/<file>`; the files of them named in `web` (scripts,
  stylesheets) are listed by `GET /apps`, and the web client loads them so that an app's
  script can add its screens (`lorebase.screen({...})`, docs/using/writing-an-app.md);
- migrations, files `lorebase migrate` runs like lorebase's own.

The core knows no application: nothing under lorebase/ imports one (tests/test_structure.py).
Key builders stay with their owners; `user_tag(username)` gives the hash tag that puts an
app's keys of a user in the user's slot on a Redis Cluster (with its session and its files).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .identity.keys import tag as user_tag
from .tasks import SCHEDULED

if TYPE_CHECKING:
    from .app import App
    from .chain import Route
    from .config import Config
    from .db import Client

__all__ = ["CheckContext", "Extension", "Queue", "Scheduled", "TaskContext", "load_apps", "user_tag"]

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
WEB_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.(js|css)\Z")  # a name in assets, no folder
BUILTIN_QUEUES = ("mail", "s3")  # an application's queue or task may not take these names
BUILTIN_TASKS = SCHEDULED  # lorebase's own, named once in tasks/__init__.py

DestroyHook = Callable[["App", str], Awaitable[None]]
UserDetail = Callable[["App", str], Awaitable[Mapping[str, int | str]]]


class CheckContext(Protocol):
    """What a consistency check works with (`lorebase check`, lorebase/check.py). It runs on
    redis-py (`db`, synchronous) while the server serves: a scan only proposes a candidate;
    confirm each finding, and repair it, with one Lua script (`run`) at that moment."""

    config: Config
    db: Any  # redis.Redis, decode_responses=True: synchronous, strings
    repair: bool  # --repair: fix what can be fixed; otherwise only report

    @property
    def flag(self) -> str:
        """'1' with --repair, else '0': the argument a repairing script takes."""
        ...

    def found(self, key: str, what: str, done: str = "", tidy: bool = False) -> None:
        """Reports a finding: the key at fault, what is wrong, and (with --repair) what was
        done. `tidy`: harmless by design, pruned by --repair, not counted as a problem."""
        ...

    def count(self, what: str, amount: int) -> None:
        """How many `what` were looked at, for the summary line."""
        ...

    def run(self, lua: str, keys: list[str], args: list[Any]) -> Any:
        """A Lua script, registered once per check."""
        ...

    def each(self, phase: str, items: list[str]) -> Iterator[str]:
        """The items, with a progress bar on a terminal."""
        ...

    def exists(self, username: str) -> bool:
        """Whether the user exists now."""
        ...

    def tails(self, builder: Callable[[str], str]) -> list[str]:
        """The name in every key `builder` makes (`notes:{<name>}` → name), by one SCAN."""
        ...

    def file_owner(self, file_id: str) -> str | None:
        """The user whose file this is, now (None: nobody's)."""
        ...

    def finish_destroy(self, username: str, mark: str) -> bool:
        """Destroy's steps 2 and 3 for a user marked `destroying` (every extension's destroy
        hook, then the user if it still carries `mark`): whether the user was deleted."""
        ...

    def remove_orphan_files(self, username: str) -> int:
        """The files of a user who does not exist, removed as a destroy removes them; how many."""
        ...

    def drop_orphans(self, username: str, keys: list[str]) -> int:
        """How many of `keys` exist while the user does not (deleted with --repair, in one
        script, only while the user is still absent); 0 if the user exists."""
        ...


CheckFn = Callable[[CheckContext], None]


@dataclass(frozen=True)
class TaskContext:
    """What a queue's job or a scheduled task runs with, in the tasks process."""

    config: Config
    db: Client


@dataclass(frozen=True)
class Queue:
    """A durable queue (lorebase/tasks/queue.py): a job pushed is run at least once, by the
    tasks process of whichever node takes it, retried with backoff when `run` raises, and put
    in `{<name>}:dead` after `max_tries`. Its keys are `{<name>}:queue`, `{<name>}:doing:*`,
    `{<name>}:retry`, `{<name>}:dead`, `{<name>}:workers`: one slot on a Cluster."""

    name: str
    run: Callable[[TaskContext, dict[str, Any]], Awaitable[str]]  # what it did, in a few words
    max_tries: int | None = 10
    backoff: Callable[[int], float] = field(default=lambda tries: min(2.0 ** tries, 3600.0))

    @property
    def key(self) -> str:
        return f"{{{self.name}}}:queue"

    async def push(self, db: Client, job: Mapping[str, Any]) -> None:
        """Queues a job (a JSON object) for the tasks process."""
        await db.call("LPUSH", self.key, json.dumps(dict(job), separators=(",", ":")))


@dataclass(frozen=True)
class Scheduled:
    """A task run every `every` seconds, once per cluster (a Redis lock: `task:{<name>}`);
    `run` says what it did, in a few words (notified). An admin's "run now" works for it too."""

    name: str
    every: float
    run: Callable[[TaskContext], Awaitable[str]]


@dataclass
class Extension:
    """What one application (or built-in part) adds to lorebase; see the module docstring."""

    name: str
    routes: Sequence[Route] | Callable[[Config], Sequence[Route]] = ()
    on_destroy: Sequence[DestroyHook] = ()
    checks: Sequence[CheckFn] = ()
    user_detail: UserDetail | None = None
    queues: Sequence[Queue] = ()
    schedule: Sequence[Scheduled] = ()
    stats: Mapping[str, str] = field(default_factory=dict)  # flow name → its help text
    assets: Path | None = None
    migrations: Path | None = None
    web: Sequence[str] = ()  # files of `assets` the web client loads, in order: *.js and *.css

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"extension name {self.name!r}: lower-case letters, digits and _, 1-32")
        for flow in self.stats:
            if not NAME.match(flow):
                raise ValueError(f"extension {self.name}: stats flow {flow!r}: lower-case letters, digits and _")
        if self.web and self.assets is None:
            raise ValueError(f"extension {self.name}: web files need an assets directory")
        for name in self.web:
            if not WEB_FILE.match(name):
                raise ValueError(f"extension {self.name}: web file {name!r}: a file name of assets ending .js or .css")

    def routes_for(self, config: Config) -> list[Route]:
        return list(self.routes(config) if callable(self.routes) else self.routes)


def import_app(path: str) -> Extension:
    """The Extension an APPS entry names: `pkg.mod` (its `extension`) or `pkg.mod:attr`."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"APPS: cannot import {module_name!r}: {error}") from error
    found = getattr(module, attribute or "extension", None)
    if not isinstance(found, Extension):
        raise TypeError(f"APPS: {module_name} has no Extension named {attribute or 'extension'!r}")
    return found


def load_apps(config: Config) -> list[Extension]:
    """The applications APPS names, in order; the project directory (config.project) comes
    first on sys.path so that its own packages import."""
    project = str(config.project)
    if project not in sys.path:
        sys.path.insert(0, project)
    apps = [import_app(path) for path in config.APPS]
    seen: set[str] = set()
    queues, tasks = set(BUILTIN_QUEUES), set(BUILTIN_TASKS)
    for app in apps:
        if app.name in seen:
            raise ValueError(f"APPS: two extensions named {app.name!r}")
        seen.add(app.name)
        for queue in app.queues:
            if not NAME.match(queue.name) or queue.name in queues:
                raise ValueError(f"APPS: {app.name}: queue name {queue.name!r} is taken or not a-z0-9_")
            queues.add(queue.name)
        for task in app.schedule:
            if not NAME.match(task.name) or task.name in tasks:
                raise ValueError(f"APPS: {app.name}: scheduled task name {task.name!r} is taken or not a-z0-9_")
            tasks.add(task.name)
    return apps


def app_queues(config: Config) -> list[str]:
    """The keys (`{<name>}:queue`) of the applications' durable queues: for the levels, the
    check of queued jobs and the restore guard."""
    return [queue.key for ext in load_apps(config) for queue in ext.queues]
