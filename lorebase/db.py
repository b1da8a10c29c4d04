"""Every process's Redis client, made here and nowhere else (`connect`, `connect_sync`).

The async client (workers and the tasks process): one connection per Redis server, shared by
every request in flight, with all commands issued in one event-loop turn written to the
socket together (auto-pipelining). Replies are parsed by hiredis and handed back in order.

Why our own: the design brief measured a per-request connection pool (redis-py's asyncio
client) at 58-79 % less throughput than one pipelined connection, and no maintained
Python client pipelines automatically. This layer is only the wire: commands are plain
Redis commands, so what is stored stays readable with redis-cli.

A command that gets no reply within `timeout` seconds (Redis paused, network gone)
fails every command waiting on that connection with `Unavailable` and drops the
connection; the next command reconnects. So a dead Redis costs a request at most
`timeout`, never a hang, and recovery needs no restart.

Three shapes of REDIS_URL, one `Client` interface (routes never know which):
- `redis://` / `unix://`: one server (`Redis`).
- `redis+sentinel://[:pass@]h:p[,h:p...]/<master>[?db=N]` (`Sentinel`): the primary is asked
  of the sentinels on every (re)connect and its ROLE checked, the way Redis's Sentinel
  client guidelines ask; a READONLY reply (the server was demoted under us) or a
  `+switch-master` announced by a sentinel drops the connection, so the next command goes
  to the new primary instead of writing into one that is about to lose its writes.
- `redis+cluster://[:pass@]h:p[,h:p...]` (`Cluster`): a slot map from CLUSTER SLOTS, one
  pipelined connection per primary, each command sent to its key's slot owner, pipelines
  split per node, MOVED (the map is learnt again) and ASK (ASKING, then the command, on the
  importing node) followed; TRYAGAIN, CLUSTERDOWN and a node that refuses connections are
  retried until `timeout`, because those commands never ran. A command whose connection
  died after it was written is never retried (it may have run): the caller gets Unavailable.

The master and the command line, which run no event loop, get redis-py's blocking client
(its Sentinel and Cluster clients for those URLs) from `connect_sync`, made from the same URL
by the same parser. Code that takes a client takes a `Client`, so the type checker sees
every joint.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import hiredis

if TYPE_CHECKING:
    import redis

Command = tuple[Any, ...]


class RedisError(Exception):
    """Redis answered with an error reply (a bug in a command, or WRONGTYPE and such)."""


class Unavailable(Exception):
    """Redis could not be reached, did not answer in time, or said it cannot serve yet.
    `code`: the refusal's first word when Redis said it (TRYAGAIN, READONLY...), else ''.
    `sent`: False when the command never left this process (no connection could be made), so
    trying it elsewhere cannot run it twice."""

    def __init__(self, message: str, code: str = "", sent: bool = True):
        super().__init__(message)
        self.code = code
        self.sent = sent


# error replies that mean "not now" rather than "wrong command": a Redis loading its AOF
# after a restart, a busy script, a replica or a cluster in the middle of a failover, a
# primary refusing writes while no replica is in sync (min-replicas-to-write)
_NOT_NOW = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "NOREPLICAS"})


def _not_now(reply: RedisError) -> RedisError | Unavailable:
    code = str(reply).split(" ", 1)[0]
    return Unavailable(f"Redis cannot serve yet: {reply}", code) if code in _NOT_NOW else reply


def parse_url(url: str) -> dict[str, Any]:
    """redis://[user:password@]host[:port][/db], unix:///path/to.sock[?db=N],
    redis+sentinel://[:password@]host:port[,host:port...]/<master>[?db=N][&sentinel_password=P],
    redis+cluster://[:password@]host:port[,host:port...]. `kind`: single, sentinel, cluster."""
    scheme = url.partition("://")[0]
    if scheme in ("redis+sentinel", "redis+cluster"):
        return _parse_many(scheme.split("+")[1], url.partition("://")[2])
    parts = urlsplit(url)
    out: dict[str, Any] = {"kind": "single", "password": unquote(parts.password) if parts.password else None,
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
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} "
                         "(use redis://, unix://, redis+sentinel:// or redis+cluster://)")
    return out


def _parse_many(kind: str, rest: str) -> dict[str, Any]:
    netloc, _, tail = rest.partition("/")
    netloc, _, query = netloc.partition("?") if "?" in netloc else (netloc, "", tail.partition("?")[2])
    path = tail.partition("?")[0].strip("/")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not port.isdigit():
            raise ValueError(f"{item.strip()!r} in the Redis URL: give host:port")
        nodes.append((host.strip("[]") or "127.0.0.1", int(port)))
    params = parse_qs(query)
    out: dict[str, Any] = {"kind": kind, "password": unquote(password) or None, "username": unquote(username) or None,
                           "db": int(params.get("db", ["0"])[0]), "nodes": nodes}
    if kind == "sentinel":
        if not path:
            raise ValueError("a redis+sentinel:// URL names its primary: redis+sentinel://host:port/<master-name>")
        out["master"] = unquote(path)
        out["sentinel_password"] = params.get("sentinel_password", [None])[0]
    elif path or out["db"]:
        raise ValueError("a Redis Cluster has only database 0: redis+cluster://host:port[,host:port...]")
    return out


class Client(Protocol):
    """What code that talks to Redis may use: one command, several written together,
    MULTI/EXEC, a Lua script. Replies are decoded str (None, int, list as Redis sends).
    On a Redis Cluster, the keys of one MULTI, one script or one multi-key command share a
    hash slot (the key owners' tags see to it)."""

    async def call(self, *args: Any) -> Any: ...

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]: ...

    async def multi(self, commands: Sequence[Command]) -> list[Any]: ...

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

    async def each(self, *args: Any) -> list[Any]:
        """A keyless command on every server holding a part of the data (INFO, say): one
        reply on one Redis or Sentinel's primary, one per primary on a Cluster."""
        ...

    async def close(self) -> None: ...


def address(config: Any) -> str:
    """The URL of the environment's Redis: REDIS_URL, or the embedded one's socket. The
    config is never changed: every process (and every child) finds the same answer."""
    return str(config.REDIS_URL) or f"unix://{config.redis_socket}"


def with_user(url: str, username: str, password: str) -> str:
    """`url` (any of the three shapes) with these credentials in place of its own: the same
    servers, another Redis ACL user (backups and restores connect as one of their own)."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")  # a password with a `/` in it is quoted in a URL
    hosts = netloc.rpartition("@")[2]
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{hosts}{slash}{tail}"


def open_client(url: str, timeout: float = 1.0) -> Client:
    """The async client for a Redis URL of any of the three shapes."""
    options = parse_url(url)
    if options["kind"] == "cluster":
        return Cluster(options, timeout)
    if options["kind"] == "sentinel":
        return Sentinel(options, timeout)
    return Redis(options, timeout)


def connect(config: Any, timeout: float | None = None) -> Client:
    """The async client of a worker or the tasks process (`timeout`: REDIS_TIMEOUT)."""
    return open_client(address(config), float(config.REDIS_TIMEOUT) if timeout is None else timeout)


def connect_sync(where: Any, timeout: float = 5.0, decode: bool = True, retry: bool = True) -> redis.Redis:
    """A blocking client (the master, the command line, backups): `where` a config or a URL.
    retry=False: a dead server is reported at once (redis-py otherwise retries with backoff).
    For a Sentinel URL, redis-py's Sentinel-managed primary; for a Cluster, its RedisCluster
    (typed as redis.Redis: the commands lorebase's blocking code uses are common to both)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    opts = parse_url(where if isinstance(where, str) else address(where))
    common: dict[str, Any] = {"password": opts["password"], "username": opts["username"],
                              "socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "decode_responses": decode}
    if not retry:
        common["retry"] = Retry(NoBackoff(), 0)
    if opts["kind"] == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        common.pop("retry", None)
        nodes = [ClusterNode(host, port) for host, port in opts["nodes"]]  # type: ignore[no-untyped-call]
        return cast("redis.Redis", RedisCluster(startup_nodes=nodes, **common))
    if opts["kind"] == "sentinel":
        from redis.sentinel import Sentinel as RedisSentinel

        watchers = RedisSentinel(opts["nodes"], sentinel_kwargs={
            "password": opts["sentinel_password"], "socket_timeout": timeout, "socket_connect_timeout": timeout})
        return cast("redis.Redis", watchers.master_for(opts["master"], db=opts["db"], **common))
    if "path" in opts:
        return redis.Redis(unix_socket_path=opts["path"], db=opts["db"], **common)
    return redis.Redis(host=opts["host"], port=opts["port"], db=opts["db"], **common)


def servers(url: str, timeout: float = 5.0) -> list[str]:
    """A `redis://` URL (or the URL itself) of each server holding a part of the data, for
    the programs that need one server (redis-cli --rdb): the URL itself; the primary the
    sentinels name now; every primary of a Cluster."""
    opts = parse_url(url)
    if opts["kind"] == "single":
        return [url]
    auth = ""
    if opts["password"]:
        auth = f"{quote(opts['username'] or '', safe='')}:{quote(opts['password'], safe='')}@"
    if opts["kind"] == "sentinel":
        from redis.sentinel import Sentinel as RedisSentinel

        watchers = RedisSentinel(opts["nodes"], sentinel_kwargs={
            "password": opts["sentinel_password"], "socket_timeout": timeout, "socket_connect_timeout": timeout})
        host, port = watchers.discover_master(opts["master"])
        return [f"redis://{auth}{host}:{port}/{opts['db']}"]
    client = connect_sync(url, timeout)
    try:
        return [f"redis://{auth}{node.host}:{node.port}" for node in client.get_primaries()]  # type: ignore[attr-defined]
    finally:
        client.close()


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
            demoted = False
            if isinstance(reply, RedisError):
                reply = _not_now(reply)
                demoted = isinstance(reply, Unavailable) and reply.code == "READONLY"
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.client._drop(self, Unavailable("unexpected reply from Redis"))
                return
            waiter = pending[0]
            batch = waiter.batch
            if batch is not None:  # one future for the replies of several commands
                batch.append(reply)
                if len(batch) < waiter.count:
                    if not demoted:
                        continue
                    batch.extend([reply] * (waiter.count - len(batch)))  # those behind: dropped
                reply = batch
            pending.popleft()
            future = waiter.future
            if not future.done():  # else the caller gave up (request cancelled); keep the order
                if isinstance(reply, (RedisError, Unavailable)):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            if demoted:  # a replica now (failover): what is queued behind would go there too
                self.client._drop(self, Unavailable("Redis became a replica (READONLY)", "READONLY"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._drop(self, Unavailable("connection to Redis lost"))


class Redis:
    """One Redis server: await db.call("GET", key); await db.multi([...]); await db.pipeline([...])"""

    def __init__(self, url: str | dict[str, Any], timeout: float = 1.0):
        self.options = parse_url(url) if isinstance(url, str) else url
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._scripts: dict[str, str] = {}
        self._where: str | tuple[str, int] | None = None  # the address of the connection

    # -- connection -------------------------------------------------------------------

    async def _address(self) -> str | tuple[str, int]:
        """Where to connect: a socket path or (host, port). Sentinel asks its sentinels."""
        opts = self.options
        return opts["path"] if "path" in opts else (opts["host"], opts["port"])

    def _hello(self) -> list[Command]:
        opts = self.options
        hello: list[Command] = []
        if opts["password"]:
            hello.append(("AUTH", opts["username"], opts["password"]) if opts["username"]
                         else ("AUTH", opts["password"]))
        if opts["db"]:
            hello.append(("SELECT", opts["db"]))
        return hello

    def _greeted(self, replies: list[Any]) -> None:
        """Raise if the server that answered the hello is not one to use (Sentinel: a replica)."""

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        where = await self._address()
        try:
            if isinstance(where, str):
                coro = loop.create_unix_connection(lambda: _Protocol(self), where)
            else:
                coro = loop.create_connection(lambda: _Protocol(self), where[0], where[1])
            _, protocol = await asyncio.wait_for(coro, self.timeout)
        except (TimeoutError, OSError) as error:
            raise Unavailable(f"cannot connect to Redis: {error or 'timeout'}", sent=False) from None
        self._protocol = protocol  # commands of other callers queue behind the hello (see _ready)
        self._where = where
        hello = self._hello()
        if hello:
            try:
                replies = (await self._send_batch(protocol, hello, len(hello)) if len(hello) > 1
                           else [await self._send(protocol, hello[0])])
                for reply in replies:
                    if isinstance(reply, (RedisError, Unavailable)):
                        raise reply
                self._greeted(replies)
            except BaseException as error:
                self._drop(protocol, error if isinstance(error, Exception) else Unavailable("cancelled"))
                if isinstance(error, Unavailable):
                    error.sent = False
                raise
        return protocol

    async def _ready(self) -> _Protocol:
        if self._protocol is not None and self._connecting is None:
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
        code = error.code if isinstance(error, Unavailable) else ""
        for waiter in pending:
            if not waiter.future.done():
                waiter.future.set_exception(Unavailable(str(error), code))

    def drop(self, why: str, code: str = "") -> None:
        """Close the connection now (the server is no longer the one to use); the next
        command connects again."""
        if self._protocol is not None:
            self._drop(self._protocol, Unavailable(why, code))

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

    async def replies(self, commands: Sequence[Command], asking: bool = False) -> list[Any]:
        """Several commands written together; their replies in order with any error left in
        place (the Cluster client sorts them out). asking: each preceded by ASKING."""
        protocol = await self._ready()
        if asking:
            sent = [part for cmd in commands for part in (("ASKING",), cmd)]
            return (await self._send_batch(protocol, sent, len(sent)))[1::2]  # type: ignore[no-any-return]
        if len(commands) == 1:
            try:
                return [await self._send(protocol, commands[0])]
            except (RedisError, Unavailable) as error:
                return [error]
        return await self._send_batch(protocol, commands, len(commands))  # type: ignore[no-any-return]

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

    async def multi(self, commands: Sequence[Command], asking: bool = False) -> list[Any]:
        """MULTI ... EXEC: all or nothing; the replies of the commands in order. asking: on
        a Cluster's importing node (the ASKING flag lasts the whole transaction)."""
        protocol = await self._ready()
        head: list[Command] = [("ASKING",), ("MULTI",)] if asking else [("MULTI",)]
        sent = [*head, *commands, ("EXEC",)]
        replies: list[Any] = await self._send_batch(protocol, sent, len(sent))
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

    async def _run(self, command: Command, asking: bool) -> Any:
        if not asking:
            return await self.call(*command)
        reply = (await self.replies([command], asking=True))[0]
        if isinstance(reply, (RedisError, Unavailable)):
            raise reply
        return reply

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any], asking: bool = False) -> Any:
        """Run a Lua script by its SHA1, loading it the first time this process sees it (on
        this server: each Cluster node loads its own)."""
        sha = self._scripts.get(lua)
        if sha is not None:
            try:
                return await self._run(("EVALSHA", sha, len(keys), *keys, *args), asking)
            except RedisError as error:
                if not str(error).startswith("NOSCRIPT"):
                    raise
        self._scripts[lua] = await self.call("SCRIPT", "LOAD", lua)
        return await self._run(("EVALSHA", self._scripts[lua], len(keys), *keys, *args), asking)

    async def each(self, *args: Any) -> list[Any]:
        return [await self.call(*args)]

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol, Unavailable("client closed"))


async def _ask(where: tuple[str, int], commands: Sequence[Command], timeout: float) -> list[Any]:
    """Commands on a connection of their own, closed after (a sentinel's answer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*where), timeout)
    try:
        writer.write(b"".join(hiredis.pack_command(cmd) for cmd in commands))
        parser = hiredis.Reader(encoding="utf-8", replyError=RedisError)
        out: list[Any] = []
        while len(out) < len(commands):
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                out.append(reply)
        return out
    finally:
        writer.close()


class Sentinel(Redis):
    """The primary that Redis Sentinel names: asked of the sentinels (in order, the first
    that knows it moved to the front) on every connect, then confirmed by ROLE.

    A task per sentinel keeps a subscription to its failover events. When one announces that
    it is promoting a replica (`+failover-state-send-slaveof-noone`) the connection is dropped
    and new commands wait (each at most `timeout`, then Unavailable) until `+switch-master`
    names the new primary (or the failover ends, aborts, or HOLD seconds pass): without
    that, writes go on landing on the old primary until it is demoted, and a demoted primary
    throws away what it took meanwhile (measured: a second of writes)."""

    HOLD = 5.0  # seconds a failover in progress holds new connections at most
    EVENTS = ("+failover-state-send-slaveof-noone", "+switch-master", "+failover-end",
              "-failover-abort-not-elected", "-failover-abort-no-good-slave", "-failover-abort-slave-timeout")

    def __init__(self, options: dict[str, Any], timeout: float = 1.0):
        super().__init__(options, timeout)
        self.sentinels: list[tuple[str, int]] = list(options["nodes"])
        self.master = str(options["master"])
        self._watchers: list[asyncio.Task[None]] = []
        self._settled: asyncio.Event | None = None  # set while no failover is in progress
        self._hold_until = 0.0
        self._auth: list[Command] = ([("AUTH", options["sentinel_password"])]
                                     if options.get("sentinel_password") else [])

    async def _address(self) -> tuple[str, int]:
        if self._settled is None:
            self._settled = asyncio.Event()
            self._settled.set()
            self._watchers = [asyncio.ensure_future(self._watch(where)) for where in self.sentinels]
        if not self._settled.is_set():
            wait = min(self.timeout, self._hold_until - time.monotonic())
            try:
                await asyncio.wait_for(self._settled.wait(), max(wait, 0.001))
            except TimeoutError:
                if time.monotonic() < self._hold_until:
                    raise Unavailable(f"a failover of {self.master!r} is in progress", "MASTERDOWN",
                                      sent=False) from None
                self._settled.set()
        for index, where in enumerate(list(self.sentinels)):
            try:
                reply = (await _ask(where, [*self._auth, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)],
                                    self.timeout))[-1]
            except (OSError, TimeoutError, ConnectionError):
                continue
            if isinstance(reply, list) and len(reply) == 2:
                if index:
                    self.sentinels.insert(0, self.sentinels.pop(index))
                return str(reply[0]), int(reply[1])
        raise Unavailable(f"no sentinel names a primary for {self.master!r}", sent=False)

    def _hello(self) -> list[Command]:
        return [*super()._hello(), ("ROLE",)]

    def _greeted(self, replies: list[Any]) -> None:
        role = replies[-1]
        if not isinstance(role, list) or role[0] != "master":
            raise Unavailable(f"the server the sentinels named for {self.master!r} is not a primary", "READONLY")

    def _event(self, channel: str, message: str) -> None:
        words = message.split()
        name = words[0] if channel == "+switch-master" else (words[words.index("@") + 1] if "@" in words
                                                                else words[1] if len(words) > 1 else "")
        if name != self.master or self._settled is None:
            return
        if channel == "+failover-state-send-slaveof-noone":
            self._hold_until = time.monotonic() + self.HOLD
            self._settled.clear()
            self.drop(f"the sentinels are promoting a replica of {self.master!r}", "MASTERDOWN")
        else:  # over: a connection made since went where the sentinels said (and ROLE agreed)
            self._settled.set()
            if channel == "+switch-master" and len(words) == 5 and self._where != (words[3], int(words[4])):
                self.drop(f"the sentinels moved {self.master!r}: {message}", "READONLY")

    async def _watch(self, where: tuple[str, int]) -> None:
        """Follow one sentinel's failover events, reconnecting after a pause if it goes."""
        while True:
            try:
                await self._follow(where)
            except (OSError, TimeoutError, ConnectionError, RedisError):
                pass
            await asyncio.sleep(1.0)

    async def _follow(self, where: tuple[str, int]) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*where), self.timeout)
        try:
            writer.write(b"".join(hiredis.pack_command(cmd) for cmd in [*self._auth, ("SUBSCRIBE", *self.EVENTS)]))
            parser = hiredis.Reader(encoding="utf-8", replyError=RedisError)
            quiet = 0
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 5.0)
                except TimeoutError:
                    quiet += 1
                    if quiet > 2:  # no answer to two pings: a dead link
                        return
                    writer.write(hiredis.pack_command(("PING",)))
                    continue
                if not data:
                    return
                quiet = 0
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, RedisError):
                        raise reply
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                        self._event(str(reply[1]), str(reply[2]))
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        self._watchers = []
        self._settled = None
        await super().close()


SLOTS = 16384
_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_KEYLESS = frozenset({"PING", "INFO", "SCRIPT", "TIME", "ROLE", "CLUSTER", "DBSIZE", "CLIENT", "CONFIG", "ECHO",
                      "WAIT", "COMMAND", "PUBLISH", "FLUSHALL", "FLUSHDB", "LASTSAVE", "SAVE", "BGSAVE"})


def slot(key: Any) -> int:
    """The hash slot of a key: CRC16 (XMODEM, what binascii.crc_hqx computes from 0) of the
    key, or of its tag (the part between the first `{` and the next `}` when not empty)."""
    raw = key if isinstance(key, bytes) else str(key).encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def key_of(command: Command) -> Any | None:
    """The key that places a command (its first; a Cluster refuses one whose keys differ in
    slot anyway), or None for a command of no key."""
    name = str(command[0]).upper()
    if name in _SCRIPTS:
        return command[3] if len(command) > 3 and int(command[2]) > 0 else None
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in ("OBJECT", "MEMORY", "XINFO"):
        return command[2] if len(command) > 2 else None
    return command[1]


# a Cluster's refusals of a command that did not run it: tried again (the map learnt again but
# for TRYAGAIN, a slot in the middle of a migration)
_RAN_NOTHING = frozenset({"TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"})


def _again(reply: Any) -> bool:
    """A pipeline's reply to try again alone: a redirection, or a refusal that ran nothing."""
    if isinstance(reply, RedisError):
        return str(reply).startswith(("MOVED ", "ASK "))
    return isinstance(reply, Unavailable) and (not reply.sent or reply.code in _RAN_NOTHING)


class Cluster:
    """A Redis Cluster (see the module doc): one `Redis` per primary, a slot map."""

    REDIRECTS = 16  # per command: MOVED and ASK followed at most this many times

    def __init__(self, options: dict[str, Any], timeout: float = 1.0):
        self.options = options
        self.timeout = timeout
        self.seeds: list[str] = [f"{host}:{port}" for host, port in options["nodes"]]
        self.slots: list[str] = []  # slot → "host:port" of its primary
        self.nodes: dict[str, Redis] = {}
        self._refreshing: asyncio.Future[None] | None = None

    def node(self, where: str) -> Redis:
        client = self.nodes.get(where)
        if client is None:
            host, _, port = where.rpartition(":")
            client = self.nodes[where] = Redis({**self.options, "kind": "single", "host": host, "port": int(port),
                                                "db": 0}, self.timeout)
        return client

    def _owner(self, key: Any | None) -> str:
        return self.slots[slot(key) if key is not None else 0]

    # -- the slot map ------------------------------------------------------------------

    async def _learn(self) -> None:
        """The slot map again, from the first node that gives it."""
        asked = [*dict.fromkeys([*self.slots[::512], *self.nodes, *self.seeds])]
        for where in asked:
            try:
                reply = await self.node(where).call("CLUSTER", "SLOTS")
            except (Unavailable, RedisError):
                continue
            table = [""] * SLOTS
            for start, end, primary, *_ in reply:
                host = primary[0] or where.rpartition(":")[0]
                table[start:end + 1] = [f"{host}:{primary[1]}"] * (end - start + 1)
            self.slots = [owner or where for owner in table]  # a slot nobody serves: that node says so
            live = set(self.slots)
            for gone in [w for w in self.nodes if w not in live]:
                await self.nodes.pop(gone).close()
            return
        if not self.slots:
            raise Unavailable("no node of the Redis Cluster answers CLUSTER SLOTS", sent=False)

    def _learning(self) -> asyncio.Future[None]:
        """The slot map being learnt: one request at a time, started here if none is."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._learn())
            self._refreshing.add_done_callback(self._learnt)
        return self._refreshing

    async def refresh(self) -> None:
        """Learn the slot map (those arriving meanwhile wait for the same request)."""
        await asyncio.shield(self._learning())

    def _learnt(self, future: asyncio.Future[None]) -> None:
        self._refreshing = None
        if not future.cancelled():
            future.exception()

    @staticmethod
    def _redirection(text: str, where: str) -> tuple[int, str]:
        """`MOVED|ASK <slot> <host:port>` → (slot, address); a reply that leaves the host out
        means the host of the node that sent it."""
        _, number, target = text.split(" ", 2)
        return int(number), where.rpartition(":")[0] + target if target.startswith(":") else target

    # -- sending -----------------------------------------------------------------------

    async def _routed(self, key: Any | None, send: Callable[[Redis, bool], Awaitable[Any]]) -> Any:
        """send(node, asking) on the key's node, following redirections; a refusal that ran
        nothing (TRYAGAIN, CLUSTERDOWN, a node refusing connections) tried again until the
        deadline, with the map learnt again."""
        if not self.slots:
            await self.refresh()
        deadline = 0.0
        pause = 0.02
        asking: str | None = None
        redirected = 0
        while True:
            where = asking or self._owner(key)
            try:
                return await send(self.node(where), asking is not None)
            except RedisError as error:
                text = str(error)
                if text.startswith("MOVED "):
                    number, target = self._redirection(text, where)
                    self.slots[number] = target
                    self._learning()  # others of that node's slots probably moved too
                    asking = None
                elif text.startswith("ASK "):
                    asking = self._redirection(text, where)[1]
                else:
                    raise
                redirected += 1
                if redirected > self.REDIRECTS:
                    raise Unavailable(f"more than {self.REDIRECTS} redirections for one command") from None
            except Unavailable as error:
                if error.sent and error.code not in _RAN_NOTHING:
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.timeout
                if now + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)
                asking = None
                if error.code != "TRYAGAIN":
                    try:
                        await self.refresh()
                    except Unavailable:
                        pass

    async def call(self, *args: Any) -> Any:
        return await self._routed(key_of(args), lambda node, asking: node._run(args, asking))

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Commands grouped by node, each group written together, the groups in parallel;
        a reply that is a redirection or a refusal that ran nothing is tried again alone."""
        if not commands:
            return []
        if len(commands) == 1:
            return [await self.call(*commands[0])]
        if not self.slots:
            await self.refresh()
        groups: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            groups.setdefault(self._owner(key_of(command)), []).append(index)
        out: list[Any] = [None] * len(commands)
        nodes = [(self.node(where), indexes) for where, indexes in groups.items()]
        if all(node._protocol is not None and node._connecting is None for node, _ in nodes):
            # every node connected (the usual case): each group written in this turn, then the
            # replies awaited in turn, with no task per group
            sent = [(node._send_batch(node._protocol, [commands[i] for i in indexes], len(indexes)), indexes)
                    for node, indexes in nodes if node._protocol is not None]
            for future, indexes in sent:
                try:
                    got = await future
                    replies = got if len(indexes) > 1 else [got]
                except (RedisError, Unavailable) as error:
                    replies = [error] * len(indexes)
                for index, reply in zip(indexes, replies, strict=True):
                    out[index] = reply
        else:
            async def group(node: Redis, indexes: list[int]) -> None:
                try:
                    replies = await node.replies([commands[i] for i in indexes])
                except Unavailable as error:
                    replies = [error] * len(indexes)
                for index, reply in zip(indexes, replies, strict=True):
                    out[index] = reply

            await asyncio.gather(*(group(node, indexes) for node, indexes in nodes))
        for index, reply in enumerate(out):
            again = _again(reply)
            if again:
                out[index] = await self.call(*commands[index])
            elif isinstance(reply, (RedisError, Unavailable)):
                raise reply
        return out

    async def multi(self, commands: Sequence[Command]) -> list[Any]:
        key = next((k for k in map(key_of, commands) if k is not None), None)
        return await self._routed(key, lambda node, asking: node.multi(commands, asking))  # type: ignore[no-any-return]

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._routed(keys[0] if keys else None, lambda node, asking: node.script(lua, keys, args, asking))

    async def each(self, *args: Any) -> list[Any]:
        if not self.slots:
            await self.refresh()
        return list(await asyncio.gather(*(self.node(where).call(*args) for where in dict.fromkeys(self.slots))))

    async def close(self) -> None:
        for client in list(self.nodes.values()):
            await client.close()
        self.nodes.clear()
