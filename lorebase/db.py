"""Every process's Redis client, made here and nowhere else (`connect`, `connect_sync`).

The async client (workers and the tasks process): one connection per client, shared by every request in flight,
with all commands issued in one event-loop turn written to the socket together
(auto-pipelining). Replies are parsed by hiredis and handed back in order.

Why our own: the design brief measured a per-request connection pool (redis-py's asyncio
client) at 58-79 % less throughput than one pipelined connection, and no maintained
Python client pipelines automatically. This layer is only the wire: commands are plain
Redis commands, so what is stored stays readable with redis-cli.

A command that gets no reply within `timeout` seconds (Redis paused, network gone)
fails every command waiting on that connection with `Unavailable` and drops the
connection; the next command reconnects. So a dead Redis costs a request at most
`timeout`, never a hang, and recovery needs no restart.

The master and the command line, which run no event loop, get redis-py's blocking client
from `connect_sync`, made from the same URL by the same parser. Code that takes a client
takes a `Client` (what the async one offers), so the type checker sees every joint.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

if TYPE_CHECKING:
    import redis

Command = tuple[Any, ...]


class RedisError(Exception):
    """Redis answered with an error reply (a bug in a command, or WRONGTYPE and such)."""


class Unavailable(Exception):
    """Redis could not be reached, did not answer in time, or said it cannot serve yet."""


# error replies that mean "not now" rather than "wrong command": a Redis loading its AOF
# after a restart, a busy script, a replica or a cluster in the middle of a failover
_NOT_NOW = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


def _not_now(reply: RedisError) -> RedisError | Unavailable:
    return Unavailable(f"Redis cannot serve yet: {reply}") if str(reply).startswith(_NOT_NOW) else reply


def parse_url(url: str) -> dict[str, Any]:
    """redis://[:password@]host[:port][/db] or unix:///path/to.sock[?db=N]"""
    parts = urlsplit(url)
    out: dict[str, Any] = {"password": unquote(parts.password) if parts.password else None,
                           "username": unquote(parts.username) if parts.username else None, "db": 0}
    if parts.scheme == "unix":
        out["path"] = parts.path
        out["db"] = int(parse_qs(parts.query).get("db", ["0"])[0])
    elif parts.scheme == "redis":
        out["host"] = parts.hostname or "127.0.0.1"
        out["port"] = parts.port or 6379
        if parts.path.strip("/"):
            out["db"] = int(parts.path.strip("/"))
    else:
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (use redis:// or unix://)")
    return out


class Client(Protocol):
    """What code that talks to Redis may use: one command, several written together,
    MULTI/EXEC, a Lua script. Replies are decoded str (None, int, list as Redis sends)."""

    async def call(self, *args: Any) -> Any: ...

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]: ...

    async def multi(self, commands: Sequence[Command]) -> list[Any]: ...

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

    async def close(self) -> None: ...


def address(config: Any) -> str:
    """The URL of the environment's Redis: REDIS_URL, or the embedded one's socket. The
    config is never changed: every process (and every child) finds the same answer."""
    return str(config.REDIS_URL) or f"unix://{config.redis_socket}"


def connect(config: Any, timeout: float | None = None) -> Redis:
    """The async client of a worker or the tasks process (`timeout`: REDIS_TIMEOUT)."""
    return Redis(address(config), float(config.REDIS_TIMEOUT) if timeout is None else timeout)


def connect_sync(where: Any, timeout: float = 5.0, decode: bool = True, retry: bool = True) -> redis.Redis:
    """A blocking client (the master, the command line, backups): `where` a config or a URL.
    retry=False: a dead server is reported at once (redis-py otherwise retries with backoff)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    opts = parse_url(where if isinstance(where, str) else address(where))
    common: dict[str, Any] = {"password": opts["password"], "username": opts["username"], "db": opts["db"],
                              "socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "decode_responses": decode}
    if not retry:
        common["retry"] = Retry(NoBackoff(), 0)
    if "path" in opts:
        return redis.Redis(unix_socket_path=opts["path"], **common)
    return redis.Redis(host=opts["host"], port=opts["port"], **common)


class _Waiter:
    """What waits for the next reply(ies): a single command's future, or a batch's future
    that gets the list of `count` replies (errors left in it as RedisError objects)."""

    __slots__ = ("batch", "count", "future", "started")

    def __init__(self, future: asyncio.Future[Any], started: float, count: int = 1):
        self.future = future
        self.started = started
        self.count = count
        self.batch: list[Any] | None = [] if count > 1 else None


class _Protocol(asyncio.Protocol):
    def __init__(self, client: Redis):
        self.client = client
        self.reader = hiredis.Reader(encoding="utf-8", replyError=RedisError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.client._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if isinstance(reply, RedisError):
                reply = _not_now(reply)
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.client._drop(self, Unavailable("unexpected reply from Redis"))
                return
            waiter = pending[0]
            batch = waiter.batch
            if batch is not None:  # one future for the replies of several commands
                batch.append(reply)
                if len(batch) < waiter.count:
                    continue
                reply = batch
            pending.popleft()
            future = waiter.future
            if future.done():  # the caller gave up (request cancelled); keep the order
                continue
            if isinstance(reply, (RedisError, Unavailable)):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._drop(self, Unavailable("connection to Redis lost"))


class Redis:
    """await db.call("GET", key); await db.multi([...]); await db.pipeline([...])"""

    def __init__(self, url: str, timeout: float = 1.0):
        self.url = url
        self.options = parse_url(url)
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._scripts: dict[str, str] = {}

    # -- connection -------------------------------------------------------------------

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        opts = self.options
        try:
            if "path" in opts:
                coro = loop.create_unix_connection(lambda: _Protocol(self), opts["path"])
            else:
                coro = loop.create_connection(lambda: _Protocol(self), opts["host"], opts["port"])
            _, protocol = await asyncio.wait_for(coro, self.timeout)
        except (TimeoutError, OSError) as error:
            raise Unavailable(f"cannot connect to Redis: {error or 'timeout'}") from None
        self._protocol = protocol
        hello = []
        if opts["password"]:
            hello.append(("AUTH", opts["username"], opts["password"]) if opts["username"]
                         else ("AUTH", opts["password"]))
        if opts["db"]:
            hello.append(("SELECT", opts["db"]))
        if hello:
            await asyncio.gather(*(self._send(protocol, cmd) for cmd in hello))
        return protocol

    async def _ready(self) -> _Protocol:
        if self._protocol is not None:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, future: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # mark retrieved; each waiter gets it raised

    def _drop(self, protocol: _Protocol, error: Exception) -> None:
        if self._protocol is not protocol:
            return
        self._protocol = None
        if protocol.transport is not None:
            protocol.transport.abort()
        pending, self._pending = self._pending, collections.deque()
        self._buffer.clear()
        for waiter in pending:
            if not waiter.future.done():
                waiter.future.set_exception(Unavailable(str(error)))

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        now = time.monotonic()
        oldest = self._pending[0].started
        if now - oldest >= self.timeout and self._protocol is not None:
            self._drop(self._protocol, Unavailable(f"no reply from Redis in {self.timeout}s"))
            return
        self._arm_watchdog(oldest + self.timeout - now)

    def _arm_watchdog(self, delay: float) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(max(delay, 0.01), self._check_deadline)

    # -- sending ----------------------------------------------------------------------

    def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        return self._send_batch(protocol, [args], 1)

    def _send_batch(self, protocol: _Protocol, commands: Sequence[Command], count: int) -> asyncio.Future[Any]:
        """Queue commands to be written at the end of this event-loop turn; one future for
        their reply (count 1) or the list of their replies."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pack = hiredis.pack_command
        self._buffer += [pack(cmd) for cmd in commands]
        self._pending.append(_Waiter(future, time.monotonic(), count))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._arm_watchdog(self.timeout)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buffer and self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.write(b"".join(self._buffer))
        self._buffer.clear()

    async def call(self, *args: Any) -> Any:
        """One command; its reply, or RedisError / Unavailable raised."""
        protocol = await self._ready()
        return await self._send(protocol, args)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands written together; their replies in order (the first error
        raised). Not atomic."""
        if len(commands) == 1:
            return [await self.call(*commands[0])]
        if not commands:
            return []
        protocol = await self._ready()
        replies: list[Any] = await self._send_batch(protocol, commands, len(commands))
        for reply in replies:
            if isinstance(reply, (RedisError, Unavailable)):
                raise reply
        return replies

    async def multi(self, commands: Sequence[Command]) -> list[Any]:
        """MULTI ... EXEC: all or nothing; the replies of the commands in order."""
        protocol = await self._ready()
        replies: list[Any] = await self._send_batch(protocol, [("MULTI",), *commands, ("EXEC",)], len(commands) + 2)
        for reply in replies[:-1]:  # MULTI's OK, then QUEUED or a refusal for each command
            if isinstance(reply, (RedisError, Unavailable)):
                raise reply
        result = replies[-1]
        if isinstance(result, (RedisError, Unavailable)):
            raise result
        if result is None:
            raise RedisError("transaction aborted")
        for reply in result:
            if isinstance(reply, RedisError):
                raise _not_now(reply)
        return list(result)

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a Lua script by its SHA1, loading it the first time this process sees it."""
        sha = self._scripts.get(lua)
        if sha is not None:
            try:
                return await self.call("EVALSHA", sha, len(keys), *keys, *args)
            except RedisError as error:
                if not str(error).startswith("NOSCRIPT"):
                    raise
        self._scripts[lua] = await self.call("SCRIPT", "LOAD", lua)
        return await self.call("EVALSHA", self._scripts[lua], len(keys), *keys, *args)

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol, Unavailable("client closed"))
