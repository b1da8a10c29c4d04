"""How the master starts a worker or the tasks process: a new interpreter (posix_spawn, then
exec), never a bare fork.

The master runs threads (the Redis keeper, notify's writer to Redis, the log forwarder). A
fork copies only the forking thread, with every lock the others held at that instant still
held: a child could hang on its first log line or Redis call (Python 3.12+ warns of it:
"This process is multi-threaded, use of fork() may lead to deadlocks in the child"). A new
interpreter inherits no lock. It is handed, as descriptors:

- 3: a pipe holding the master's settings (pickled; the master's own object, so secrets
  generated at its start and any override are the same in every process, and no secret is
  put in an environment variable or on a command line);
- 4: its line to the master: a worker's channel (a unix SOCK_SEQPACKET socketpair end), the
  tasks process's beat pipe (the write end; the master reads its beats).

It runs the master's code, not whatever a release switch has put on disk since: the master's
package directory comes first on sys.path (a deploy's new code arrives by the master's own
re-exec, SIGHUP, not by a worker respawned in between).
"""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import socket
import sys
from pathlib import Path
from typing import Any

CONFIG_FD = 3
CHANNEL_FD = 4
CODE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding this lorebase package
RESET = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU,
         signal.SIGPIPE)


def _above(fd: int, floor: int = 10) -> int:
    """A close-on-exec copy of `fd` numbered `floor` or above, so that moving it to 3 or 4 in
    the child never lands on itself (dup2 onto the same number would keep close-on-exec)."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)


def spawn(config: Any, role: str, index: int = 0, channel: int | None = None) -> int:
    """Start `role` ("worker" or "tasks") in a new interpreter, `channel` (a descriptor) as its
    descriptor 4; its pid. Called by the master."""
    data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    read, write = os.pipe2(os.O_CLOEXEC)
    fds = [read, write]
    try:
        if len(data) > 60_000:  # a pipe holds 64 KiB by default: make room before the child exists
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, len(data) + 4096)
        os.write(write, data)
        os.close(write)
        fds.remove(write)
        fds.append(high_read := _above(read))
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, high_read, CONFIG_FD),
        ]
        if channel is not None:
            fds.append(high_chan := _above(channel))
            actions.append((os.POSIX_SPAWN_DUP2, high_chan, CHANNEL_FD))
        boot = f"import sys; sys.path.insert(0, {str(CODE_ROOT)!r}); from lorebase.child import main; main()"
        argv = [sys.executable, "-c", boot, role, str(index), str(os.getpid())]
        return os.posix_spawn(sys.executable, argv, dict(os.environ), file_actions=actions,
                              setsigdef=RESET)
    finally:
        for fd in fds:
            os.close(fd)


def main() -> None:
    """In the new interpreter: read the settings, then serve as the role; never returns."""
    from . import procs

    role, index, master = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    procs.die_with_parent()
    if os.getppid() != master:  # the master died before the line above: nobody to serve
        os._exit(1)
    with os.fdopen(CONFIG_FD, "rb") as pipe:
        config = pickle.load(pipe)  # noqa: S301 - the master's own pipe, written by spawn above
    if role == "tasks":
        from .tasks import process

        os.set_blocking(CHANNEL_FD, False)  # a master not reading never holds the tasks' loop
        process.serve(config, CHANNEL_FD)
    else:
        from . import worker

        worker.serve(config, socket.socket(fileno=CHANNEL_FD), index)
    os._exit(1)  # the serve functions never return
