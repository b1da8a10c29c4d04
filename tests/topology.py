"""Real multi-server Redis topologies on loopback for the tests of issue 11: a Redis Cluster
made by `redis-cli --cluster create`, and a primary with a replica watched by three
sentinels. Every server is Debian's redis-server on a free 127.0.0.1 port with its files in
a temp dir; `stop` kills them all."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from .lore import free_port, wait_for


def cluster_port() -> int:
    """A free port below 55536 whose bus port (+10000) is free too."""
    import random
    import socket

    while True:
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
                return port
        except OSError:
            continue


def _server(dir: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(dir), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--logfile", str(dir / "redis.log"), *options],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


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


class Cluster(Servers):
    """`primaries` primaries with `replicas` replicas each; cluster-node-timeout `node_timeout`
    ms (a primary that stops answering is failed over about twice that after)."""

    def __init__(self, dir: Path, primaries: int = 3, replicas: int = 1, node_timeout: int = 1000,
                 password: str = ""):
        super().__init__()
        self.dir = dir
        self.ports = [cluster_port() for _ in range(primaries * (1 + replicas))]
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password or None, socket_timeout=2, decode_responses=True)

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports],
                            password=self.password or None, decode_responses=True, socket_timeout=2)

    def start(self) -> Cluster:
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        for port in self.ports:
            self.procs[port] = _server(self.dir / str(port), port, "--cluster-enabled", "yes",
                                       "--cluster-config-file", "nodes.conf",
                                       "--cluster-node-timeout", str(self.node_timeout), *auth)
        for port in self.ports:
            wait_for(lambda port=port: self.node(port).ping(), what=f"redis-server :{port}")
        cli_auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(["redis-cli", *cli_auth, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

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
        cli_auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(["redis-cli", *cli_auth, "--cluster", "reshard", f"127.0.0.1:{source}",
                        "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
                        "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"],
                       check=True, capture_output=True, timeout=timeout)


class Sentinels(Servers):
    """A primary, `replicas` replicas, and `count` sentinels watching it as `name`
    (quorum 2, down-after `down_after` ms). `primary_options`: extra redis-server options of
    the data servers, such as min-replicas-to-write."""

    def __init__(self, dir: Path, name: str = "lore", replicas: int = 1, count: int = 3, down_after: int = 1000,
                 password: str = "", data_options: tuple[str, ...] = ()):
        super().__init__()
        self.dir = dir
        self.name = name
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(count)]
        self.down_after = down_after
        self.password = password
        self.data_options = data_options

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.name}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password or None, socket_timeout=2, decode_responses=True)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def start(self) -> Sentinels:
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        primary, *replicas = self.data_ports
        self.procs[primary] = _server(self.dir / str(primary), primary, *auth, *self.data_options)
        for port in replicas:
            self.procs[port] = _server(self.dir / str(port), port, "--replicaof", "127.0.0.1", str(primary),
                                       *auth, *self.data_options)
        for port in self.data_ports:
            wait_for(lambda port=port: self.node(port).ping(), what=f"redis-server :{port}")
        wait_for(lambda: self.node(primary).info("replication")["connected_slaves"] == len(replicas)
                 and all(self.node(p).info("replication")["master_link_status"] == "up" for p in replicas),
                 30, 0.1, "replicas in sync")
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {conf.parent}", f"logfile {conf.parent / 'log'}",
                     f"sentinel monitor {self.name} 127.0.0.1 {primary} 2",
                     f"sentinel down-after-milliseconds {self.name} {self.down_after}",
                     f"sentinel failover-timeout {self.name} 10000", f"sentinel parallel-syncs {self.name} 1"]
            if self.password:
                lines.append(f"sentinel auth-pass {self.name} {self.password}")
            conf.write_text("\n".join(lines) + "\n")
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
