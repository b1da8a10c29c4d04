"""Small process helpers shared by the master, the workers and the embedded Redis."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import signal
import socket
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


class PortTaken(Exception):
    """A listening port another process holds: the message names the address and the setting
    that moves it, for the person at the terminal (not `[Errno 98] Address already in use`)."""

    def __init__(self, host: str, port: int, setting: str):
        super().__init__(f"port {port} on {host} is taken (another lorebase?): set {setting} (or LOREBASE_{setting}) "
                         "to a free port, or stop what listens there")


def listen(host: str, port: int, setting: str, backlog: int = 2048) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on host:port (IPv6 when `host` has a
    colon); PortTaken naming `setting` when the address is in use."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(host, port, setting) from None
        raise
    sock.setblocking(False)
    return sock
