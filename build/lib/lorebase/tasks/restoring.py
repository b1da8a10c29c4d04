"""What `lorebase restore` makes sure of before it replaces a database, and what it says:
the nodes serving from that Redis (a restore under them is refused unless told to go on),
what the backup replaces (its age, users and keys now and in it), and where the files'
bytes come from afterwards (S3 only when S3 is configured).

Nodes are found from what they already keep in Redis: every tasks process has a worker in
each durable queue it runs (tasks/queue.py: `{mail}:workers` on every API node, `{s3}:workers`
where the S3 mirror runs), an entry renewed every 5 s, dropped at a clean stop, and counted
dead 30 s after a crash, all by Redis's clock.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from ..db import connect_sync
from ..identity.keys import USERS
from . import queue


def serving(client: Any) -> list[str]:
    """The nodes with a live tasks process on this Redis: `<host> (pid <pid>)`, sorted."""
    now = int(client.time()[0])
    found = set()
    for keys in queue.durable().values():
        for worker, until in client.hgetall(keys["workers"]).items():
            if int(until) >= now:
                found.add(node_of(_text(worker)))
    return sorted(found)


def node_of(worker: str) -> str:
    """`web-1.4242.a1b2c3` (queue.new_worker: host, pid, random) → `web-1 (pid 4242)`."""
    host, _, rest = worker.rpartition(".")[0].rpartition(".")
    return f"{host} (pid {rest})" if host and rest.isdigit() else worker


def age(seconds: float) -> str:
    """45 s, 12 min, 3 h 12 min, 2 days 4 h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days {s % 86400 // 3600} h"


def summary(manifest: dict[str, Any], source: Any, target: Any, now: float) -> list[str]:
    """What a restore replaces, said before it does: the backup's time and age, its users and
    keys, and the database's now."""
    created = float(manifest["created"])
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created))
    return [f"backup {manifest['name']}: taken {when}, {age(now - created)} ago",
            f"  in the backup:      {int(source.scard(USERS))} users, {int(source.dbsize())} keys",
            f"  in the database now: {int(target.scard(USERS))} users, {int(target.dbsize())} keys "
            "(all replaced by the backup's)"]


def announcer(url: str, out: TextIO) -> Any:
    """backup.restore's `ready`: prints the summary once the backup is verified."""
    def ready(source: Any, manifest: dict[str, Any]) -> None:
        target = connect_sync(url, 30, decode=False)
        try:
            lines = summary(manifest, source, target, time.time())
        finally:
            target.close()
        for line in lines:
            print(line, file=out, flush=True)
    return ready


def files_note(config: Any) -> str:
    """Where the restored files' bytes are: a backup holds only their records."""
    if config.S3_BUCKET:
        return ("files whose bytes are not on this disk come back from S3 on download, or now with "
                "`lorebase files check --repair`")
    where = f"the file server ({config.FILES_URL})" if config.FILES_URL else f"{config.DATA_DIR}/files"
    return (f"S3 is not configured: a backup holds no file bytes, and a file whose bytes are not in {where} "
            "cannot be fetched back (the check below names any)")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
