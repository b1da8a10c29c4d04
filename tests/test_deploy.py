"""deploy/provision.sh and deploy/deploy.sh end to end, over a real sshd (Debian's
openssh-server, started here on 127.0.0.1 with throwaway keys), into a box root: a directory
that holds the box's /etc, /opt, /var and /run (LOREBASE_BOX_ROOT). The packages are the
machine's own; the lorebase user exists only in the box root's passwd; Debian's redis-server
runs with the configuration provision wrote, as the redis user, started here (the box's
systemd would). lorebase runs as the box's lorebase user, as deploy starts it.

These need root (useradd, chown, setpriv), as provisioning a box does: CI runs as root."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from .lore import ROOT, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="provisioning a box needs root (CI runs as root)")

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Box:
    root: Path  # LOREBASE_BOX_ROOT
    keys: Path  # the ssh client's config and keys
    ssh_port: int
    port: int  # lorebase's PORT on the box
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")}
        env.update({"LOREBASE_BOX_ROOT": str(self.root), "DEPLOY_SSH": f"ssh -F {self.keys / 'ssh_config'}",
                    "LOREBASE_DEPLOY_HOST": "box", "LOREBASE_DEPLOY_SSH_PORT": str(self.ssh_port), **extra})
        return env

    def provision(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "deploy" / "provision.sh"), "box", "--port", str(self.ssh_port),
                               "--no-upgrade", "--domain", "box.test", "--mail-url", "console://", *args],
                              env=self.env(), capture_output=True, text=True, timeout=300)

    def secret(self, key: str) -> str:
        for line in (self.root / "etc/lorebase/secret.py").read_text().splitlines():
            if line.startswith(f"{key} = "):
                return line.split(" = ", 1)[1].strip('"')
        raise KeyError(key)

    def redis(self, url: str | None = None) -> redis.Redis:
        from lorebase.db import connect_sync

        return connect_sync(url or self.secret("REDIS_URL"), retry=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def current(self) -> str:
        return os.readlink(self.root / "opt/lorebase/current").rsplit("/", 1)[-1]

    def state(self) -> dict[str, Any]:
        import json

        return json.loads((self.root / "var/lib/lorebase/master.json").read_text())

    def uid(self, user: str) -> int:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            if line.startswith(f"{user}:"):
                return int(line.split(":")[2])
        raise KeyError(user)

    def master_pid(self) -> int:
        return int((self.root / "run/lorebase.pid").read_text())


def _sshd(keys: Path, port: int) -> subprocess.Popen[bytes]:
    for name in ("host", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "id.pub").read_text())
    (keys / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host'}
PidFile {keys / 'sshd.pid'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
""")
    (keys / "ssh_config").write_text(f"""Host box
  HostName 127.0.0.1
  User root
  IdentityFile {keys / 'id'}
  IdentitiesOnly yes
  UserKnownHostsFile {keys / 'known_hosts'}
  StrictHostKeyChecking accept-new
  ConnectTimeout 10
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    with (keys / "sshd.log").open("wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(keys / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: _listening(port), 10, what="sshd listening")
    return proc


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes] | psutil.Process, timeout: float = 30) -> None:
    try:
        proc.terminate()
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        proc.kill()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    root = Path(tempfile.mkdtemp(prefix="lorebase-box-", dir="/tmp"))
    keys = Path(tempfile.mkdtemp(prefix="lorebase-keys-", dir="/tmp"))
    root.chmod(0o755)  # the box's users (redis, lorebase) walk into it
    b = Box(root, keys, free_port(), free_port())
    b.procs.append(_sshd(keys, b.ssh_port))
    try:
        yield b
    finally:
        pidfile = root / "run/lorebase.pid"
        if pidfile.exists():
            try:
                _stop(psutil.Process(int(pidfile.read_text())), 60)
            except psutil.NoSuchProcess:
                pass
        for proc in reversed(b.procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(keys, ignore_errors=True)


@pytest.fixture(scope="module")
def provisioned(box: Box) -> Box:
    """The box after one provision, its Redis started as its systemd would."""
    first = box.provision()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "  changed  " in first.stdout, first.stdout
    conf = box.root / "etc/redis/redis.conf"
    redis_proc = subprocess.Popen(["setpriv", "--reuid=redis", "--regid=redis", "--init-groups",
                                   "redis-server", str(conf)], stdout=subprocess.DEVNULL)
    box.procs.append(redis_proc)
    socket_path = box.root / "run/redis/redis-server.sock"
    wait_for(socket_path.exists, 10, what="the box's Redis socket")
    wait_for(lambda: box.redis().ping(), 10, what="the box's Redis answering lorebase's user")
    # the settings a test box needs besides the box's own (an operator edits this file too)
    with (box.root / "etc/lorebase/env").open("a") as f:
        f.write(f"LOREBASE_PORT={box.port}\nLOREBASE_WORKERS=2\nLOREBASE_BACKUP_EVERY=0\n"
                "LOREBASE_BEAT_CPU=0\nLOREBASE_BEAT_MEMORY=0\nLOREBASE_BEAT_DISK=0\n"
                "LOREBASE_ARGON2_MEMORY=1024\nLOREBASE_ARGON2_TIME=1\n")
    return box


def test_provision_sets_the_box_up_and_a_second_run_changes_nothing(provisioned: Box) -> None:
    box = provisioned
    root = box.root
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("lorebase:") and line.endswith(":/usr/sbin/nologin") for line in passwd.splitlines())
    assert "lorebase:" not in Path("/etc/passwd").read_text()  # the box's user, not this machine's
    secret = root / "etc/lorebase/secret.py"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640
    assert len(box.secret("COOKIE_SECRET")) >= 32
    assert box.secret("MAIL_URL") == "console://"
    data = root / "var/lib/lorebase"
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    assert data.stat().st_uid == box.uid("lorebase")
    conf = (root / "etc/redis/lorebase.conf").read_text()
    for line in ("port 0", "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
                 "protected-mode yes", "unixsocketperm 770"):
        assert line in conf.splitlines(), line
    unit = (root / "etc/systemd/system/lorebase.service").read_text()
    assert f"ExecStart={root}/opt/lorebase/current/.venv/bin/lorebase serve prod" in unit
    assert (root / "etc/fail2ban/jail.d/lorebase.conf").exists()
    assert (root / "etc/logrotate.d/lorebase").exists()
    assert (root / "etc/lorebase/tls/cert.pem").exists()

    again = box.provision()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "provision: nothing changed" in again.stdout, again.stdout
    assert "  changed  " not in again.stdout, again.stdout
    assert box.secret("COOKIE_SECRET") in secret.read_text()  # kept, not regenerated


def test_the_box_redis_lets_lorebase_in_and_keeps_dangerous_commands_out(provisioned: Box) -> None:
    box = provisioned
    r = box.redis()
    assert r.ping()
    assert r.info("memory")["used_memory"] > 0  # beat reads INFO
    r.set("deploy-test", "1")
    assert r.dump("deploy-test") is not None  # backups DUMP every key
    r.delete("deploy-test")
    for command in (("CONFIG", "GET", "dir"), ("KEYS", "*"), ("ACL", "LIST"), ("SAVE",), ("SHUTDOWN",),
                    ("REPLICAOF", "127.0.0.1", "1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)
    sock = box.root / "run/redis/redis-server.sock"
    with pytest.raises(redis.exceptions.AuthenticationError):  # the default user is off
        redis.Redis(unix_socket_path=str(sock)).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        box.redis(box.secret("REDIS_URL").replace("lorebase:", "lorebase:x")).ping()
    assert not _listening(6379) or _redis_port_is_not_the_box(box)


def _redis_port_is_not_the_box(box: Box) -> bool:
    """Something else may own 6379 on this machine; the box's Redis has no TCP port at all."""
    pid = next(p.pid for p in box.procs if "redis-server" in " ".join(map(str, p.args)))  # type: ignore[arg-type]
    return all(c.laddr.port != 6379 for c in psutil.Process(pid).net_connections("tcp"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of this tree as it is on disk (what `git archive HEAD` packs), with
    this checkout's .venv beside it (gitignored: never packed)."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "release one"], cwd=repo, check=True)
    return repo


def _deploy(box: Box, repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "deploy/deploy.sh"), *args], cwd=repo, env=box.env(**env),
                          capture_output=True, text=True, timeout=600)


def _commit(repo: Path, message: str) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "commit", "-qam", message], cwd=repo, check=True)


class Pinger(threading.Thread):
    """GET /ping over keep-alive and fresh connections until stopped; counts failures."""

    def __init__(self, box: Box):
        super().__init__(daemon=True)
        self.box = box
        self.done = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as kept:
            while not self.done.is_set():
                for client in (kept, None):
                    try:
                        r = (client.get(self.box.url("/ping")) if client else
                             httpx.get(self.box.url("/ping"), timeout=10))
                        if r.status_code == 200:
                            self.ok += 1
                        else:
                            self.failed.append(f"{r.status_code} {r.text[:80]}")
                    except httpx.HTTPError as error:
                        self.failed.append(repr(error))
                time.sleep(0.01)


def test_deploy_serves_then_a_failing_release_is_rolled_back_while_the_first_serves(provisioned: Box,
                                                                                 repo: Path) -> None:
    box = provisioned
    first = _deploy(box, repo, "prod", "confirm")
    assert first.returncode == 0, first.stdout + first.stderr
    for step in ("pack", "copy", "install", "activate", "prune"):
        assert f"   {step}: " in first.stdout and " s\n" in first.stdout, first.stdout
    release_one = box.current()
    assert release_one.endswith(subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo,
                                               capture_output=True, text=True).stdout.strip())
    assert httpx.get(box.url("/health")).json() == {"redis": "ok"}
    assert box.state()["code"].startswith(f"{box.root}/opt/lorebase/releases/{release_one}/")
    master = psutil.Process(box.master_pid())
    assert master.uids().real == box.uid("lorebase") != 0  # the box's lorebase user, in the box's passwd
    assert {p.uids().real for p in master.children(recursive=True)} == {box.uid("lorebase")}
    released = box.root / "opt/lorebase/releases" / release_one
    assert not (released / ".git").exists() and (released / "lorebase/app.py").exists()
    assert (box.root / "etc/nginx/sites-available/lorebase").read_text() == (released / "nginx.conf").read_text()
    with httpx.Client(base_url=box.url("")) as client:
        signup = client.post("/auth/signup", json={"username": "ada", "email": "ada@example.com",
                                                   "password": "correct horse battery"})
        assert signup.status_code == 200, signup.text

    # release two answers /health with 500: activated, found not serving, rolled back
    public = repo / "lorebase/routes/public.py"
    source = public.read_text()
    assert 'return reply(200, {"redis": "ok"})' in source
    public.write_text(source.replace('return reply(200, {"redis": "ok"})',
                                     'raise RuntimeError("release two breaks /health")'))
    _commit(repo, "release two: /health broken")
    pinger = Pinger(box)
    pinger.start()
    try:
        second = _deploy(box, repo, "prod", "confirm")
    finally:
        pinger.done.set()
        pinger.join(30)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "rolled back: serving " + release_one in second.stderr, second.stdout + second.stderr
    assert "activate failed" in second.stderr
    assert box.current() == release_one
    assert httpx.get(box.url("/health")).json() == {"redis": "ok"}
    assert box.state()["code"].startswith(f"{box.root}/opt/lorebase/releases/{release_one}/")
    assert box.master_pid() == master.pid  # reloaded twice, never restarted
    assert pinger.ok > 50 and pinger.failed == [], pinger.failed[:5]
    with httpx.Client(base_url=box.url("")) as client:
        login = client.post("/auth/login", json={"username": "ada", "password": "correct horse battery"})
        assert login.status_code == 200, login.text


def test_prod_is_refused_without_confirm_before_anything_is_contacted(box: Box, repo: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(3)
    port = listener.getsockname()[1]
    try:
        refused = subprocess.run([str(repo / "deploy/deploy.sh"), "prod"], cwd=repo, capture_output=True,
                                 text=True, env=box.env(LOREBASE_DEPLOY_HOST="127.0.0.1",
                                                        LOREBASE_DEPLOY_SSH_PORT=str(port)), timeout=60)
        assert refused.returncode == 2
        assert "needs confirm" in refused.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
        # the same command with confirm does contact the host: the listener above can tell
        confirmed = subprocess.Popen([str(repo / "deploy/deploy.sh"), "prod", "confirm"], cwd=repo,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=box.env(LOREBASE_DEPLOY_HOST="127.0.0.1",
                                                 LOREBASE_DEPLOY_SSH_PORT=str(port)))
        conn, _ = listener.accept()
        conn.close()
        confirmed.wait(30)
        assert confirmed.returncode != 0
    finally:
        listener.close()
