"""Real multi-server Redis topologies on loopback for the tests of issue 11: a Redis Cluster
made by `redis-cli --cluster create`, and a primary with replicas watched by three
sentinels. Every server is Debian's redis-server on a free 127.0.0.1 port with its files in
a temp dir, run from the configuration files an operator installs (deploy/redis/: data.conf,
users.acl, cluster.conf, sentinel.conf), so those are what the tests exercise; persistence is
off (the tests' only change). `stop` kills them all."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path
from string import Template

import redis
from redis.cluster import ClusterNode, RedisCluster

from .lore import ROOT, free_cluster_port, free_port, wait_for

TEMPLATES = ROOT / "deploy" / "redis"
# the users of deploy/redis/users.acl, with the tests' passwords
PASSWORDS = {"lorebase": "lore-test-pw", "backup": "backup-test-pw", "replica": "replica-test-pw",
             "sentinel": "sentinel-test-pw", "admin": "admin-test-pw"}
ADMIN = {"username": "admin", "password": PASSWORDS["admin"]}
# lorebase's settings for backups and restores as the `backup` user
BACKUP_USER = {"BACKUP_REDIS_USER": "backup", "BACKUP_REDIS_PASSWORD": PASSWORDS["backup"]}


def render(template: str, into: Path, **values: object) -> Path:
    """deploy/redis/<template> with its ${...} filled in, written to `into`; every value must be given."""
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return into


def acl(dir: Path) -> Path:
    return render("users.acl", dir / "users.acl", **{f"{user.upper()}_SHA256": hashlib.sha256(pw.encode()).hexdigest()
                                                      for user, pw in PASSWORDS.items()})


def data_conf(dir: Path, port: int, min_replicas: int = 0, max_lag: int = 10, cluster_timeout: int = 0) -> Path:
    """A data server's config: data.conf (+ cluster.conf), then the tests' own lines."""
    dir.mkdir(parents=True, exist_ok=True)
    parts = [render("data.conf", dir / "data.conf", BIND="127.0.0.1", PORT=port, ACLFILE=acl(dir),
                    REPLICA_PASSWORD=PASSWORDS["replica"], MIN_REPLICAS=min_replicas, MAX_LAG=max_lag)]
    if cluster_timeout:
        parts.append(render("cluster.conf", dir / "cluster.conf", DIR=dir, NODE_TIMEOUT=cluster_timeout))
    conf = dir / "redis.conf"
    conf.write_text("".join(f"include {part}\n" for part in parts) +
                    f'dir {dir}\nlogfile {dir / "redis.log"}\nsave ""\nappendonly no\ndaemonize no\n'
                    # a replica's first sync at once, not after the 5 s a primary waits for others
                    "repl-diskless-sync-delay 0\n")
    return conf


def _server(conf: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["redis-server", str(conf), *options], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


class Servers:
    """Redis processes by port."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[port]
        proc.send_signal(sig)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Single(Servers):
    """One data server (data.conf, users.acl), as on the data server of Architecture C."""

    def __init__(self, dir: Path):
        super().__init__()
        self.dir = dir
        self.port = free_port()

    def url(self, user: str = "lorebase") -> str:
        return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}"

    def client(self, user: str = "lorebase") -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, username=user, password=PASSWORDS[user])

    def start(self) -> Single:
        self.procs[self.port] = _server(data_conf(self.dir, self.port))
        wait_for(lambda: self.client("admin").ping(), what=f"redis-server :{self.port}")
        return self


class Cluster(Servers):
    """`primaries` primaries with `replicas` replicas each; cluster-node-timeout `node_timeout`
    ms (a primary that stops answering is failed over about twice that after)."""

    def __init__(self, dir: Path, primaries: int = 3, replicas: int = 1, node_timeout: int = 1000):
        super().__init__()
        self.dir = dir
        self.ports = [free_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.replicas = replicas
        self.node_timeout = node_timeout

    @property
    def url(self) -> str:
        """lorebase's REDIS_URL: its user, two of the nodes (it learns the others)."""
        return f"redis+cluster://lorebase:{PASSWORDS['lorebase']}@" + ",".join(
            f"127.0.0.1:{port}" for port in self.ports[:2])

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True, **ADMIN)

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports],
                            decode_responses=True, socket_timeout=2, **ADMIN)

    def cli(self) -> list[str]:
        return ["redis-cli", "--user", "admin", "-a", PASSWORDS["admin"], "--no-auth-warning"]

    def start(self) -> Cluster:
        for port in self.ports:
            self.procs[port] = _server(data_conf(self.dir / str(port), port, cluster_timeout=self.node_timeout))
        for port in self.ports:
            wait_for(lambda port=port: self.node(port).ping(), what=f"redis-server :{port}")
        subprocess.run([*self.cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        self.wait_synced()
        return self

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Every replica has finished its first sync (a replica that never synced is not
        promoted when its primary dies: it is "disconnected from master for longer than
        allowed"; a primary's first diskless sync waits 5 s for more replicas)."""
        def synced() -> bool:
            for port, proc in self.procs.items():
                if proc.poll() is None:
                    info = self.node(port).info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return True
        wait_for(synced, timeout, 0.1, "every replica in sync")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok and every slot has a primary that answers."""
        def ok() -> bool:
            for port, proc in self.procs.items():
                if proc.poll() is None and self.node(port).cluster("info")["cluster_state"] != "ok":
                    return False
            return bool(self.client().ping())
        wait_for(ok, timeout, 0.1, "cluster_state:ok on every node")

    def primaries(self) -> list[int]:
        """The ports of the primaries now, as a live node sees them."""
        live = next(p for p, proc in self.procs.items() if proc.poll() is None)
        nodes = self.node(live).execute_command("CLUSTER", "NODES")
        out = []
        for line in nodes.splitlines():
            fields = line.split()
            if "master" in fields[2].split(",") and "fail" not in fields[2]:
                out.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(out)

    def node_id(self, port: int) -> str:
        return str(self.node(port).execute_command("CLUSTER", "MYID"))

    def owner(self, key: str) -> int:
        """The port of the primary serving a key's slot."""
        slot = self.node(self.primaries()[0]).cluster("keyslot", key)
        for entry in self.node(self.primaries()[0]).execute_command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return int(entry[2][1])
        raise AssertionError(f"no primary serves slot {slot}")

    def reshard(self, source: int, target: int, slots: int, timeout: float = 120) -> None:
        """Move `slots` hash slots from one primary to another with their keys (redis-cli)."""
        subprocess.run([*self.cli(), "--cluster", "reshard", f"127.0.0.1:{source}",
                        "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
                        "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"],
                       check=True, capture_output=True, timeout=timeout)


class Sentinels(Servers):
    """A primary, `replicas` replicas, and `count` sentinels watching it as `name`
    (quorum 2, down-after `down_after` ms); `min_replicas`, `max_lag`: data.conf's
    min-replicas-to-write and min-replicas-max-lag."""

    def __init__(self, dir: Path, name: str = "lore", replicas: int = 1, count: int = 3, down_after: int = 1000,
                 min_replicas: int = 0, max_lag: int = 10):
        super().__init__()
        self.dir = dir
        self.name = name
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(count)]
        self.down_after = down_after
        self.min_replicas = min_replicas
        self.max_lag = max_lag

    @property
    def url(self) -> str:
        """lorebase's REDIS_URL: its user, every sentinel, the name of the primary."""
        return (f"redis+sentinel://lorebase:{PASSWORDS['lorebase']}@"
                + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.name}")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True, **ADMIN)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def start(self) -> Sentinels:
        primary, *replicas = self.data_ports
        for port in self.data_ports:
            self.procs[port] = _server(data_conf(self.dir / str(port), port, self.min_replicas, self.max_lag),
                                       *(["--replicaof", "127.0.0.1", str(primary)] if port != primary else []))
        for port in self.data_ports:
            wait_for(lambda port=port: self.node(port).ping(), what=f"redis-server :{port}")
        wait_for(lambda: self.node(primary).info("replication")["connected_slaves"] == len(replicas)
                 and all(self.node(p).info("replication")["master_link_status"] == "up" for p in replicas),
                 30, 0.1, "replicas in sync")
        for port in self.sentinel_ports:
            dir = self.dir / f"sentinel-{port}"
            dir.mkdir(parents=True, exist_ok=True)
            conf = render("sentinel.conf", dir / "sentinel.conf", PORT=port, BIND="127.0.0.1", DIR=dir,
                          LOGFILE=dir / "log", NAME=self.name, PRIMARY_HOST="127.0.0.1", PRIMARY_PORT=primary,
                          QUORUM=2, SENTINEL_PASSWORD=PASSWORDS["sentinel"], DOWN_AFTER=self.down_after)
            self.procs[port] = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for port in self.sentinel_ports:
            wait_for(lambda port=port: self._ready(port), 30, 0.1, "sentinels that know each other and the replicas")
        return self

    def _ready(self, port: int) -> bool:
        master = self.sentinel(port).sentinel_master(self.name)
        return (int(master["num-slaves"]) == len(self.data_ports) - 1
                and int(master["num-other-sentinels"]) == len(self.sentinel_ports) - 1)

    def primary(self) -> int:
        """The port the sentinels name as primary now (the first that answers)."""
        for port in self.sentinel_ports:
            if self.procs[port].poll() is None:
                _, where = self.sentinel(port).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                return int(where)
        raise AssertionError("no sentinel is running")
