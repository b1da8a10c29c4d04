"""Small process helpers shared by the master, the workers and the embedded Redis."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies, so that a master
    killed with -9 leaves no worker or Redis behind."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the master's own shutdown still stops its children


def title(role: str, env: str) -> None:
    """Name the process in ps/top (`lorebase: worker0 dev`), so an operator can tell the
    master, the workers and the tasks process apart."""
    import setproctitle

    setproctitle.setproctitle(f"lorebase: {role} {env}")


def become_child(config: Any, role: str) -> None:
    """What a worker or the tasks process does first, in its new interpreter (child.py, which
    has already asked to die with the master): the default action for the signals the master
    handles (Python's own SIGINT handler would turn a terminal's Ctrl-C into a traceback),
    its own notify, its name."""
    from .notify import notify

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_DFL)
    notify.setup(config.ENV, role, config)
    title(role, config.ENV)
