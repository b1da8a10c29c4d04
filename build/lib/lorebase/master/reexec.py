"""SIGHUP: the code on disk served without dropping a request. The master re-executes itself
in place (same pid, same listening socket, same Redis), handing its children over in
LOREBASE_REEXEC; the new image starts new workers, and once they all serve, the old ones
finish what they hold and exit (pool.py). A release that cannot even build its app is refused
before (the old code goes on serving), and so is an exec that fails.

And what a deploy reads to know which release serves: DATA_DIR/master.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__, db
from ..notify import notify
from .broker import Broker
from .pool import Pool
from .redis_keeper import RedisKeeper
from .tasks_process import TasksProcess

REEXEC = "LOREBASE_REEXEC"  # what a master hands the one it re-executes into (JSON)
CODE = Path(__file__).resolve().parent.parent  # the package this master runs (under a release's directory)


def inherited() -> dict[str, Any] | None:
    """What the master before this image handed over (`sock`, `workers`, `tasks`, `redis`), if
    this is a re-exec; taken out of the environment, so no child sees it."""
    state: dict[str, Any] | None = json.loads(os.environ.pop(REEXEC, "") or "null")
    return state


def reexec(config: Any, broker: Broker, pool: Pool, tasks: TasksProcess, keeper: RedisKeeper) -> None:
    """Become the code on disk; returns only if that code was refused or could not start."""
    assert broker.sock is not None
    argv = _argv()
    # the code on disk must at least build its app before this master becomes it: a release
    # that cannot (an import error, a bad setting) is refused and the old code goes on serving
    trial = subprocess.run([*argv[:argv.index("serve")], "openapi", config.ENV], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
    if trial.returncode != 0:
        notify("reexec failed", argv=argv,
               error=trial.stderr.decode(errors="replace").strip()[-600:] or f"exit {trial.returncode}")
        return
    state = {"sock": broker.sock.fileno(), "workers": pool.pids(), "tasks": tasks.handover(),
             "redis": keeper.handover()}
    keeper.halt()
    keeper.join()
    notify.detach_sync()
    notify.close_forwarder()
    broker.sock.set_inheritable(True)
    try:
        os.execve(argv[0], argv, {**os.environ, REEXEC: json.dumps(state)})  # noqa: S606 - ourselves
    except OSError as error:  # the code on disk cannot start: this master goes on as it was
        broker.sock.set_inheritable(False)
        notify.attach_sync(db.connect_sync(config, 0.5, retry=False))  # (its forwarder to LOG_URL stays closed)
        notify("reexec failed", error=str(error), argv=argv)
        keeper.watch()


def _argv() -> list[str]:
    """How to start this master again: the console script as it was started (a `current` link
    in its path is followed anew, so a new release is what starts), else `python -m lorebase`."""
    script = sys.argv[0]
    if os.path.basename(script) == "lorebase" and os.access(script, os.X_OK):
        return [script, *sys.argv[1:]]
    return [sys.executable, "-m", "lorebase", *sys.argv[1:]]


# -- master.json ----------------------------------------------------------------------------


def state_path(config: Any) -> Path:
    return Path(config.DATA_DIR) / "master.json"


def write_state(config: Any, workers: int) -> None:
    """DATA_DIR/master.json, once every worker serving runs this master's code (at start, and
    after a re-exec once the old workers are gone): what deploy.sh reads to know which release
    serves. Written whole (a rename); removed at a clean stop."""
    path = state_path(config)
    state = {"pid": os.getpid(), "version": __version__, "code": str(CODE), "env": config.ENV,
             "serving_since": round(time.time(), 3), "workers": workers}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(state) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        notify("state not written", path=str(path), error=str(error))


def remove_state(config: Any) -> None:
    try:
        state_path(config).unlink()
    except FileNotFoundError:
        pass
