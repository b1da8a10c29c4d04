"""Connections: the master holds the listening socket, accepts every connection itself and
hands it to a worker over that worker's channel (the descriptor passed with SCM_RIGHTS),
choosing the worker holding the fewest.

So the load is spread evenly (a shared accept socket let one worker take 48 of 64
connections), a worker being replaced gets no new connection while it finishes its own (a
SIGHUP drops nothing), and a worker that stopped answering gets none either. Past
WORKER_CONNECTIONS a worker gets none; all full, the new connections wait in the backlog.
"""

from __future__ import annotations

import socket
import time

from ..notify import notify
from ..procs import listen
from .pool import Pool, Worker

UNACKED_FOR = 0.5  # a worker that has not taken a handed connection for this long gets no more


def bind(host: str, port: int) -> socket.socket:
    """The API's listening socket (HOST:PORT); procs.PortTaken if another process holds it."""
    return listen(host, port, "PORT")


class Broker:
    def __init__(self, pool: Pool, cap: int):
        self.pool = pool
        self.cap = cap  # WORKER_CONNECTIONS; 0: no cap
        self.sock: socket.socket | None = None
        self.refused = 0  # connections closed because no worker could take them
        self.handed = 0

    def open(self, host: str, port: int, inherited: int | None = None) -> None:
        """The listening socket: bound anew, or the descriptor a re-exec handed over."""
        if inherited is None:
            self.sock = bind(host, port)
            return
        self.sock = socket.socket(fileno=inherited)
        self.sock.setblocking(False)
        self.sock.set_inheritable(False)

    def close(self) -> None:
        """No new connection from here on."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def takers(self) -> list[Worker]:
        """Workers that may get a new connection: serving, staying, and taking what they get."""
        now = time.monotonic()
        return [w for w in self.pool.workers.values() if w.ready and not w.leaving and w.stop_by is None
                and not w.hung and (not w.unacked or now - w.unacked_since < UNACKED_FOR)
                and (not self.cap or w.open < self.cap)]

    def accept(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # then the loop's other work gets its turn
            takers = self.takers()
            if not takers:
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: the backlog keeps them
                notify("accept failed", error=str(error))
                return
            self.hand(conn, takers)

    def hand(self, conn: socket.socket, takers: list[Worker]) -> None:
        """The connection to the worker holding the fewest; the next one if its channel is full."""
        try:
            for w in sorted(takers, key=lambda w: (w.unacked > 0, w.open, w.handed)):
                try:
                    socket.send_fds(w.chan, [b"C"], [conn.fileno()])
                except (BlockingIOError, OSError):
                    continue
                if not w.unacked:
                    w.unacked_since = time.monotonic()
                w.unacked += 1
                w.open += 1
                self.handed += 1
                w.handed = self.handed
                return
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                notify("connection refused", refused=self.refused, reason="no worker could take it")
        finally:
            conn.close()  # the worker has its own copy of the descriptor
