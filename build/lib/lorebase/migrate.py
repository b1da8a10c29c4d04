"""`lorebase migrate SCRIPT [--apply]`: the seed's protocol for a structural change to a
production database, as one command ("Making structural changes to a production database").

A migration is a Python file, named `<number>_<what>.py` (a path; or the bare name of one of
lorebase's own, in `lorebase/migrations/`, shipped with the package, or of a loaded
application's, in its Extension.migrations directory), with
- `migrate(db)`: the change, on a redis-py client (replies decoded to str);
- `check(db) -> list[str]` (optional): its sanity checks, the problems it sees afterwards;
- `PAUSE = True` (optional): writes must stop while it runs on the live database.

Without --apply (the rehearsal): a fresh backup, restored into a scratch Redis; the script
runs there; its checks and the consistency check run there; what changed is printed (keys
added, removed, changed, by pattern). The live database is not touched.

With --apply: a fresh backup, verified by loading it into a scratch Redis; writes paused if
the script asks (every worker answers 503 `maintenance` to state-changing requests within a
second of the `maintenance` key appearing; `pause.paused` keeps the key for the whole run); the
script on the live database; the checks again; on any failure the backup is restored. At
the end, the command that restores the pre-migration backup. `migrations` (a hash: name →
unix time it was applied; an application's as `<app>/<name>`) records what ran.
`lorebase migrations [ENV]` lists every known migration, applied or pending.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from .db import connect_sync
from .pause import paused as pausing
from .tasks import backup

APPLIED = "migrations"  # hash: migration name → unix time it was applied
class MigrationError(Exception):
    pass


OWN = Path(__file__).resolve().parent / "migrations"  # lorebase's own migrations (in the wheel too)


def sources(config: Any) -> list[tuple[str, Path]]:
    """Where migrations live, by owner: lorebase's own (owner ""), then each loaded
    application's Extension.migrations directory."""
    from .extension import load_apps

    found: list[tuple[str, Path]] = [("", OWN)]
    found += [(ext.name, Path(ext.migrations)) for ext in load_apps(config) if ext.migrations is not None]
    return found


def known(config: Any) -> list[tuple[str, Path]]:
    """Every migration file of `sources`, as (its recorded name, its path), in order."""
    return [(label(owner, path), path) for owner, folder in sources(config) if folder.is_dir()
            for path in sorted(folder.glob("[0-9]*_*.py"))]


def label(owner: str, path: Path) -> str:
    """The name a migration is recorded under in `migrations`: an application's carries its name."""
    return f"{owner}/{path.stem}" if owner else path.stem


def find(path: Path, config: Any = None) -> tuple[Path, str]:
    """The file and recorded name of `path`: a path as given; a bare name that is no file here
    (`0002_cluster_keys.py`), one of lorebase's own or a loaded application's, so an installed
    lorebase runs them without its repository. A name two owners have is refused."""
    owners = sources(config) if config is not None else [("", OWN)]
    if path.is_file() or path.parent != Path():
        here = path.resolve().parent
        owner = next((name for name, folder in owners if folder.resolve() == here), "")
        return path, label(owner, path)
    matches = [(folder / path.name, owner) for owner, folder in owners if (folder / path.name).is_file()]
    if len(matches) > 1:
        owners_of = ", ".join(owner or "lorebase" for _, owner in matches)
        raise MigrationError(f"{path.name}: more than one owner has it ({owners_of}): give its path")
    return (matches[0][0], label(matches[0][1], path)) if matches else (path, path.stem)


def load(path: Path) -> ModuleType:
    if not path.is_file():
        raise MigrationError(f"{path}: no such migration")
    if not path.stem.split("_", 1)[0].isdigit():
        raise MigrationError(f"{path.name}: a migration's name starts with its number (0001_what.py)")
    spec = importlib.util.spec_from_file_location(f"lorebase_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "migrate", None)):
        raise MigrationError(f"{path.name}: it has no migrate(db)")
    return module


def listing(config: Any, out: TextIO = sys.stdout) -> int:
    """`lorebase migrations`: every known migration, applied (when) or pending."""
    url = backup.redis_url(config)
    client = _client(url)
    try:
        applied = client.hgetall(APPLIED)
    finally:
        client.close()
    for name, path in known(config):
        when = applied.get(name)
        state = time.strftime("applied %Y-%m-%d %H:%M UTC", time.gmtime(int(when))) if when else "pending"
        print(f"{name}  {state}  {path}", file=out)
    return 0


def pattern(key: str) -> str:
    """`user:alice` → `user:*`, `stats:u:active_users:20424` → `stats:*`: the family of a key."""
    head, colon, _ = key.partition(":")
    return f"{head}:*" if colon else key


def fingerprint(url: str) -> dict[str, str]:
    """Every key with a digest of its value, to tell what a script changed. A hash's fields and
    a set's members are read and sorted; any other value is read with DUMP (as bytes). A hash
    or set encoded as a hash table DUMPs its entries in the table's order, which a mere read may
    change after a load (a step of Redis's incremental rehash): its DUMP would report a key the
    script only read as changed."""
    raw = connect_sync(url, 60, decode=False)
    out: dict[str, str] = {}
    try:
        batch: list[bytes] = []
        for key in raw.scan_iter(count=1000):
            batch.append(key)
            if len(batch) >= 500:
                out.update(_digests(raw, batch))
                batch = []
        out.update(_digests(raw, batch))
    finally:
        raw.close()
    return out


def _digests(raw: Any, batch: list[bytes]) -> dict[str, str]:
    """The digest of each key's value (a key gone since the scan left out): two round trips."""
    if not batch:
        return {}
    kinds = raw.pipeline(transaction=False)
    for key in batch:
        kinds.type(key)
    reads = raw.pipeline(transaction=False)
    for key, kind in zip(batch, kinds.execute(), strict=True):
        if kind == b"hash":
            reads.hgetall(key)
        elif kind == b"set":
            reads.smembers(key)
        else:
            reads.dump(key)
    out = {}
    for key, value in zip(batch, reads.execute(), strict=True):
        if isinstance(value, dict):
            value = repr(sorted(value.items())).encode()
        elif isinstance(value, set):
            value = repr(sorted(value)).encode()
        if value:  # None: DUMP of a key gone since; empty: a hash or set gone since
            out[key.decode("utf-8", "replace")] = hashlib.sha256(value).hexdigest()
    return out


def _url_of(client: Any) -> str:
    """The unix:// URL of a scratch Redis's client."""
    return f"unix://{client.connection_pool.connection_kwargs['path']}"


def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, Counter[str]]:
    added = Counter(pattern(k) for k in after.keys() - before.keys())
    removed = Counter(pattern(k) for k in before.keys() - after.keys())
    changed = Counter(pattern(k) for k in before.keys() & after.keys() if before[k] != after[k])
    return {"added": added, "removed": removed, "changed": changed}


def show(diff: dict[str, Counter[str]], out: TextIO) -> None:
    if not any(diff.values()):
        print("  no key changed", file=out)
    for what, counts in diff.items():
        for family, n in sorted(counts.items()):
            print(f"  {what:8} {family:32} {n}", file=out)


def sanity(config: Any, module: ModuleType, db: Any, out: TextIO) -> list[str]:
    """The script's own checks, then the consistency check; the problems."""
    from .check import check

    problems = [f"the script's check: {p}" for p in (module.check(db) if hasattr(module, "check") else [])]
    report = check(config, db, out=out, progress=None)
    problems += [f"consistency: {f.key}: {f.what}" for f in report.problems]
    return problems


def _client(url: str) -> Any:
    return connect_sync(url, 60)


def rehearse(config: Any, path: Path, out: TextIO = sys.stdout) -> int:
    """The script on a copy of the live database; 0 if its checks pass, 1 if not."""
    path, _ = find(path, config)
    module = load(path)
    url = backup.redis_url(config)  # its user may copy (backup) and wipe (restore) the database
    where = backup.store(config)
    manifest = backup.take(config, url, where)
    print(f"backup {manifest['name']} taken; rehearsing {path.name} on a copy of it", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="lorebase-migrate-") as tmp:
        rdb = Path(tmp) / "dump.rdb"
        backup.fetch_checked(where, manifest["name"], rdb)
        with backup.scratch(rdb) as raw:
            copy_url = _url_of(raw)
            copy = connect_sync(copy_url, 60)
            try:
                before = fingerprint(copy_url)
                try:
                    module.migrate(copy)
                except Exception as error:  # noqa: BLE001 - the script's failure is the answer
                    print(f"{path.name} failed on the copy: {type(error).__name__}: {error}", file=out)
                    return 1
                print("what it changed on the copy:", file=out)
                show(changes(before, fingerprint(copy_url)), out)
                problems = sanity(config, module, copy, out)
            finally:
                copy.close()
    for problem in problems:
        print(f"problem: {problem}", file=out)
    if problems:
        print(f"{path.name} is not safe to apply: {len(problems)} problem(s) on the copy", file=out)
        return 1
    print(f"{path.name} passed on the copy: `lorebase migrate {path} {config.ENV} --apply` applies it", file=out)
    return 0


def _run(config: Any, module: ModuleType, live: Any, url: str, out: TextIO) -> str:
    """The script on the live database, what it changed, its checks; what failed ("": nothing)."""
    before = fingerprint(url)
    try:
        module.migrate(live)
    except Exception as error:  # noqa: BLE001 - the script's failure is the answer
        return f"{type(error).__name__}: {error}"
    print("what it changed:", file=out)
    show(changes(before, fingerprint(url)), out)
    return "; ".join(sanity(config, module, live, out))


def apply(config: Any, path: Path, out: TextIO = sys.stdout) -> int:
    """The script on the live database, the backup restored if anything fails."""
    path, recorded = find(path, config)
    module = load(path)
    url = backup.redis_url(config)  # its user may copy (backup) and wipe (restore) the database
    live = _client(url)
    if live.hexists(APPLIED, recorded):
        print(f"{recorded} was applied already (at {live.hget(APPLIED, recorded)})", file=out)
        return 1
    where = backup.store(config)
    manifest = backup.take(config, url, where)
    name = manifest["name"]
    with tempfile.TemporaryDirectory(prefix="lorebase-migrate-") as tmp:  # the backup loads: verified
        rdb = Path(tmp) / "dump.rdb"
        backup.fetch_checked(where, name, rdb)
        with backup.scratch(rdb) as raw:
            if int(raw.dbsize()) != int(manifest["keys"]):
                raise MigrationError(f"backup {name} does not hold what its manifest says; nothing was changed")
    undo = f"lorebase restore {name} {config.ENV}"
    print(f"backup {name} taken and verified", file=out, flush=True)
    paused = bool(getattr(module, "PAUSE", False))
    try:
        with (pausing(lambda: connect_sync(url, 30), path.stem, lapse=float(config.PAUSE_TTL)) if paused
              else contextlib.nullcontext()):
            if paused:
                print("writes paused (503 maintenance)", file=out, flush=True)
            failure = _run(config, module, live, url, out)
            if failure:
                print(f"{path.name} failed on the live database ({failure}); restoring backup {name}", file=out,
                      flush=True)
                backup.restore(where, name, url)
                print(f"restored {name}: the database is as it was before the migration", file=out)
                return 1
            live.hset(APPLIED, recorded, int(time.time()))
    finally:
        live.close()
    print(f"{path.name} applied. To undo it: {undo}", file=out)
    return 0
