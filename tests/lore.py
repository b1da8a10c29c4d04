"""Test harness: real lorebase processes and real Redis servers on free loopback ports,
with their data in temp dirs (lorebase.testing, the plugin a project tests itself with),
plus what only lorebase's own suites vary: the Redis topology (LOREBASE_TEST_REDIS) and
where the files live (LOREBASE_TEST_FILES). Nothing here reaches into lorebase's internals:
tests talk HTTP to the server and, where a test is about storage, read Redis as redis-cli
would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from lorebase import testing
from lorebase.testing import (
    FILES_SECRET,
    MailSink,
    RedisServer,
    ServerProcess,
    free_cluster_port,
    free_port,
    wait_for,
)

__all__ = ["FILES_SECRET", "ROOT", "FileServer", "Lorebase", "MailSink", "RedisServer", "ServerProcess",
           "free_cluster_port", "free_port", "test_files", "topology", "topology_redis", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent


TOPOLOGIES = ("single", "slots", "cluster", "sentinel")


def topology() -> str:
    """Which Redis the identity, files and notes tests run their servers on (the env var
    LOREBASE_TEST_REDIS): 'single' (unset: each lorebase's embedded Redis), 'slots' (a
    one-node Redis Cluster, `RedisServer(cluster=True)`: every CROSSSLOT refused, no
    redirection), 'cluster' (three primaries and three replicas, tests/topology.py: the client's
    routing and redirections too) or 'sentinel' (a primary, a replica, three sentinels), each
    through REDIS_URL."""
    chosen = os.environ.get("LOREBASE_TEST_REDIS", "") or "single"
    if chosen not in TOPOLOGIES:
        raise RuntimeError(f"LOREBASE_TEST_REDIS={chosen!r}: use one of {', '.join(TOPOLOGIES)}")
    return chosen


@contextmanager
def topology_redis(base: Path, overrides: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`overrides` with REDIS_URL pointing at the chosen topology's Redis, started for the
    block (unless they name a Redis already); as they are for 'single'."""
    chosen = topology()
    if chosen == "single" or overrides.get("REDIS_URL"):
        yield overrides
        return
    from .topology import BACKUP_USER, Cluster, Sentinels

    made: Any
    users: dict[str, str] = BACKUP_USER  # the deploy's users.acl: backups connect as `backup`
    if chosen == "slots":
        users = {}
        made = RedisServer(base / "cluster", cluster=True).start()
    elif chosen == "cluster":
        made = Cluster(base / "cluster").start()
    else:
        made = Sentinels(base / "sentinel").start()
    try:
        yield {**overrides, "REDIS_URL": made.url, **users}
    finally:
        made.stop()


def test_files() -> str:
    """Where the files tests keep the bytes (the env var LOREBASE_TEST_FILES): 'local' (unset:
    each lorebase's own disk) or 'server' (each lorebase gets a `--role files` process of its
    own on the same DATA_DIR, reached through FILES_URL: every byte goes over HTTP, and what a
    test sees on disk is what the file server wrote; with S3 settings it also runs the mirror,
    on the lorebase's Redis)."""
    chosen = os.environ.get("LOREBASE_TEST_FILES", "") or "local"
    if chosen not in ("local", "server"):
        raise RuntimeError(f"LOREBASE_TEST_FILES={chosen!r}: use local or server")
    return chosen


class FileServer(testing.FileServer):
    """`lorebase serve --role files` run from the repository (its config.py)."""

    def __init__(self, data_dir: Path, port: int | None = None, **overrides: Any):
        super().__init__(data_dir, port, ROOT, **overrides)


class Lorebase(testing.Lorebase):
    """`lorebase serve` run from the repository (or `root`, a copy of it). With
    LOREBASE_TEST_FILES=server (test_files()) and no FILES_URL given, a file server of its own
    on the same DATA_DIR starts and stops with it."""

    def __init__(self, data_dir: Path, env: str = "dev", root: Path = ROOT, **overrides: Any):
        if os.environ.get("LOREBASE_TEST_APPS") == "none":  # lorebase alone: no app, not even the example
            overrides.setdefault("APPS", "")
        super().__init__(data_dir, env, root, **overrides)
        self.root = root  # the source tree `python -m lorebase` runs from
        self.files: FileServer | None = None
        if test_files() == "server" and "FILES_URL" not in overrides:
            s3 = {k: v for k, v in overrides.items() if k.startswith("S3_")}
            if s3:  # the file server runs the mirror: it needs the Redis of the queue
                s3["REDIS_URL"] = overrides.get("REDIS_URL") or f"unix://{data_dir / 'redis' / 'redis.sock'}"
            self.files = FileServer(data_dir, **s3)
            self.overrides.update({"FILES_URL": self.files.url, "FILES_SECRET": FILES_SECRET})

    def start(self, wait: bool = True) -> Self:
        if self.files is not None and (self.files.proc is None or self.files.proc.poll() is not None):
            self.files.start()
        return super().start(wait)

    def stop(self, timeout: float = 30.0) -> int:
        code = super().stop(timeout)
        if self.files is not None:
            files_code = self.files.stop(timeout)
            assert files_code == 0, f"the file server exited with {files_code}:\n{self.files.log_text()[-2000:]}"
        return code
