"""deploy/provision.sh and deploy/deploy.sh end to end (and `lorebase provision`, `lorebase
deploy` in a project of `lorebase new`: the same scripts), over ssh, into a box made here: a
mount namespace whose /etc, /opt, /var, /root and /usr/local are overlays of this machine's
(its packages, nothing it writes reaches the machine) and whose /run is its own, in a network
namespace of its own joined to this one by a veth pair (198.18.0.0/15, the range set aside for
network tests). Debian's openssh-server listens there on port 22 with throwaway keys; the
box's nginx takes its ports 80 and 443. The box has no route out: its pip installs from the
wheelhouse scripts/install made (/etc/lorebase/pip.conf). No systemd runs in it, so the
services are the packages' init scripts and lorebase runs from a pid file, as box.sh does on
any box without systemd.

The deploying side runs under dash (Debian's /bin/sh, the strictest POSIX sh at hand): the scripts
are started with dash, `sh` on their PATH is dash, and `bash` there refuses to run, so no script
of the deploying machine can lean on bash (a Mac has no bash 5).

These need root (namespaces, useradd, chown), as provisioning a box does: CI runs as root."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .lore import ROOT, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a box needs root (CI runs as root)")

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
DASH = shutil.which("dash") or "/usr/bin/dash"
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
OVERLAID = ("etc", "opt", "var", "root", "usr/local")
INSIDE = """set -e
while [ ! -e {tmp}/go ]; do sleep 0.05; done
ip link set lo up
ip addr add {box_ip}/30 dev {veth_box}
ip link set {veth_box} up
for d in {overlaid}; do
  mkdir -p "{tmp}/$d.up" "{tmp}/$d.work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir={tmp}/$d.up,workdir={tmp}/$d.work" "/$d"
done
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd /run/lock
touch {tmp}/ready
exec {sshd} -D -e -f {keys}/sshd_config
"""


@dataclass
class Box:
    tmp: Path  # the overlays' upper directories, and the keys
    ip: str  # the box's address on the veth pair
    host_veth: str
    proc: subprocess.Popen[bytes]  # unshare, whose child is the box's sshd

    @property
    def keys(self) -> Path:
        return self.tmp / "keys"

    @property
    def pid(self) -> int:
        """The sshd inside (its namespaces are the box's)."""
        return psutil.Process(self.proc.pid).children()[0].pid

    def path(self, inside: str) -> Path:
        """A path as the box sees it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def run(self, *command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """A command inside the box (its mounts and network)."""
        return subprocess.run(["nsenter", f"--target={self.pid}", "--mount", "--net", *command],
                              capture_output=True, text=True, timeout=kwargs.pop("timeout", 120), **kwargs)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")}
        env["PATH"] = f"{self.tmp / 'shims'}:{env.get('PATH', os.defpath)}"  # sh is dash, bash refuses
        env.update({"DEPLOY_SSH": f"ssh -F {self.keys / 'ssh_config'}", "LOREBASE_DEPLOY_HOST": "box",
                    "LOREBASE_DEPLOY_SSH_PORT": "22", **extra})
        return env

    def provision(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DASH, str(ROOT / "deploy" / "provision.sh"), "box", "--no-upgrade", "--domain",
                               "box.test", "--mail-url", "console://", *args],
                              env=self.env(), capture_output=True, text=True, timeout=300)

    def secret(self, key: str) -> str:
        for line in self.path("/etc/lorebase/secret.py").read_text().splitlines():
            if line.startswith(f"{key} = "):
                return line.split(" = ", 1)[1].strip('"')
        raise KeyError(key)

    def redis_call(self, *command: str, url: str | None = None) -> str:
        """A command to the box's Redis through its socket, as the box's lorebase user."""
        from lorebase.db import parse_url

        opts = parse_url(url or self.secret("REDIS_URL"))
        done = self.run("setpriv", "--reuid=lorebase", "--regid=lorebase", "--init-groups", "env",
                        f"REDISCLI_AUTH={opts['password']}", "redis-cli", "-s", opts["path"], "--user",
                        opts["username"], *command)
        return done.stdout.strip() + done.stderr.strip()

    def https(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"https://{self.ip}{path}", headers={"Host": "box.test"}, verify=False, timeout=10,
                         **kwargs)

    def uid(self, user: str) -> int:
        for line in self.path("/etc/passwd").read_text().splitlines():
            if line.startswith(f"{user}:"):
                return int(line.split(":")[2])
        raise KeyError(user)

    def current(self) -> str:
        return os.readlink(self.path("/opt/lorebase/current")).rsplit("/", 1)[-1]

    def state(self) -> dict[str, Any]:
        return json.loads(self.path("/var/lib/lorebase/master.json").read_text())

    def master_pid(self) -> int:
        return int(self.path("/run/lorebase.pid").read_text())

    def processes(self) -> list[psutil.Process]:
        """Every process in the box's mount namespace (the box's services, lorebase)."""
        mine = os.readlink(f"/proc/{self.pid}/ns/mnt")
        found = []
        for proc in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/mnt") == mine:
                    found.append(proc)
            except OSError:
                pass
        return found


def _shims(shims: Path) -> None:
    """The deploying machine's PATH as the tests give it: `sh` is dash, `bash` fails loudly."""
    shims.mkdir()
    (shims / "sh").symlink_to(DASH)
    (shims / "bash").write_text("#!/bin/sh\necho \"bash run on the deploying machine: $*\" >&2\nexit 97\n")
    (shims / "bash").chmod(0o755)


def _keys(keys: Path, box_ip: str) -> None:
    keys.mkdir()
    for name in ("host", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "id.pub").read_text())
    (keys / "sshd_config").write_text(f"""Port 22
ListenAddress {box_ip}
HostKey {keys / 'host'}
PidFile /run/sshd.pid
AuthorizedKeysFile {keys / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
""")
    (keys / "ssh_config").write_text(f"""Host box
  HostName {box_ip}
  User root
  IdentityFile {keys / 'id'}
  IdentitiesOnly yes
  UserKnownHostsFile {keys / 'known_hosts'}
  StrictHostKeyChecking accept-new
  ConnectTimeout 10
""")


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    tmp = Path(tempfile.mkdtemp(prefix="lorebase-box-", dir="/tmp"))
    tmp.chmod(0o755)
    n = os.getpid() % 250
    host_ip, box_ip = f"198.18.{n}.1", f"198.18.{n}.2"
    host_veth, box_veth = f"lbox{os.getpid()}h"[-15:], f"lbox{os.getpid()}b"[-15:]
    _keys(tmp / "keys", box_ip)
    _shims(tmp / "shims")
    inside = INSIDE.format(tmp=tmp, box_ip=box_ip, veth_box=box_veth, overlaid=" ".join(OVERLAID), sshd=SSHD,
                           keys=tmp / "keys")
    with (tmp / "box.log").open("wb") as log:
        proc = subprocess.Popen(["unshare", "--mount", "--net", "--fork", "--kill-child", "--propagation", "private",
                                 "bash", "-c", inside], stdout=log, stderr=log)
    b = Box(tmp, box_ip, host_veth, proc)
    try:
        wait_for(lambda: psutil.Process(proc.pid).children(), 10, what="the box's shell")
        subprocess.run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", box_veth,
                        "netns", str(b.pid)], check=True)
        subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_veth], check=True)
        subprocess.run(["ip", "link", "set", host_veth, "up"], check=True)
        (tmp / "go").touch()
        wait_for(lambda: _listening(box_ip, 22), 15, what="the box's sshd")
        yield b
    finally:
        if proc.poll() is None:
            services = [p for p in b.processes() if p.pid not in (proc.pid, b.pid)]
            for p in services:
                p.terminate()
            for p in psutil.wait_procs(services, 30)[1]:
                p.kill()
            psutil.Process(b.pid).terminate()  # the sshd: unshare (which ignores TERM) exits with it
        proc.wait(10)
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def provisioned(box: Box, repo: Path) -> Box:
    """The box after one provision, with what a test box needs besides (an operator edits
    these files too): pip from the wheelhouse, and its ports and workers. A deploy before
    the provision is refused, saying so."""
    early = _deploy(box, repo, "prod", "confirm")
    assert early.returncode == 1 and "this box is not provisioned" in early.stderr, early.stdout + early.stderr
    first = box.provision()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "  changed  " in first.stdout, first.stdout
    box.path("/etc/lorebase/pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {WHEELHOUSE}\n")
    with box.path("/etc/lorebase/env").open("a") as f:
        f.write("LOREBASE_WORKERS=2\nLOREBASE_BACKUP_EVERY=0\n"
                "LOREBASE_BEAT_CPU=0\nLOREBASE_BEAT_MEMORY=0\nLOREBASE_BEAT_DISK=0\n"
                "LOREBASE_ARGON2_MEMORY=1024\nLOREBASE_ARGON2_TIME=1\n")
    return box


def test_provision_sets_the_box_up_and_a_second_run_changes_nothing(provisioned: Box) -> None:
    box = provisioned
    passwd = box.path("/etc/passwd").read_text()
    assert any(line.startswith("lorebase:") and line.endswith(":/usr/sbin/nologin") for line in passwd.splitlines())
    assert "lorebase:" not in Path("/etc/passwd").read_text()  # the box's user, not this machine's
    secret = box.path("/etc/lorebase/secret.py")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640
    assert len(box.secret("COOKIE_SECRET")) >= 32 and len(box.secret("BACKUP_KEY")) >= 32
    assert box.secret("MAIL_URL") == "console://"
    data = box.path("/var/lib/lorebase")
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    assert data.stat().st_uid == box.uid("lorebase")
    conf = box.path("/etc/redis/lorebase.conf").read_text()
    for line in ("port 0", "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
                 "protected-mode yes", "unixsocketperm 770"):
        assert line in conf.splitlines(), line
    assert box.path("/etc/redis/redis.conf").read_text().rstrip().endswith("include /etc/redis/lorebase.conf")
    assert box.path("/etc/systemd/system/lorebase.service").read_bytes() == \
        (ROOT / "deploy/lorebase.service").read_bytes()
    assert box.path("/etc/fail2ban/jail.d/lorebase.conf").exists()
    assert box.path("/etc/logrotate.d/lorebase").exists()
    for script in ("refresh.sh", "start.sh"):  # for the cron lines, whichever project the box serves
        assert box.path(f"/usr/local/lib/lorebase/{script}").read_bytes() == (ROOT / "deploy" / script).read_bytes()
    assert box.path("/etc/lorebase/tls/cert.pem").exists()
    services = {" ".join(p.cmdline()) for p in box.processes()}
    assert any("redis-server" in s for s in services) and any("fail2ban-server" in s for s in services), services

    again = box.provision()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "provision: nothing changed" in again.stdout, again.stdout
    assert "  changed  " not in again.stdout, again.stdout
    assert box.secret("COOKIE_SECRET") in secret.read_text()  # kept, not regenerated
    assert box.secret("BACKUP_KEY") in secret.read_text()
    # the seed's cron lines: at boot, start.sh; the weekly refresh there but off, unless asked
    lines = _cron_lines(box)
    assert lines.count("@reboot root /usr/local/lib/lorebase/start.sh >>/var/log/lorebase/start.log 2>&1") == 1
    assert not any("refresh.sh" in line for line in lines), lines
    assert REFRESH in box.path("/etc/cron.d/lorebase").read_text()  # commented out, for the operator to see
    assert "data server" not in again.stdout

    weekly = box.provision("--refresh-weekly")
    assert weekly.returncode == 0, weekly.stdout + weekly.stderr
    changed = [line.split()[1] for line in weekly.stdout.splitlines() if line.startswith("  changed  ")]
    assert changed == ["/etc/lorebase/box", "/etc/cron.d/lorebase"], weekly.stdout
    assert "weekly refresh on" in weekly.stdout and "Not on a data server" in weekly.stdout, weekly.stdout
    lines = _cron_lines(box)
    assert lines.count(REFRESH) == 1 and sum("start.sh" in line for line in lines) == 1, lines
    cron = box.path("/etc/cron.d/lorebase")
    assert stat.S_IMODE(cron.stat().st_mode) == 0o644 and cron.stat().st_uid == 0  # cron skips anything else


REFRESH = "30 4 * * 1 root /usr/local/lib/lorebase/refresh.sh >>/var/log/lorebase/refresh.log 2>&1"


def _cron_lines(box: Box) -> list[str]:
    """The lines cron runs in the box's /etc/cron.d/lorebase (not its comments nor its variables)."""
    text = box.path("/etc/cron.d/lorebase").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#") and "=" not in
            line.split()[0]]


def test_the_box_redis_lets_lorebase_in_and_keeps_dangerous_commands_out(provisioned: Box) -> None:
    box = provisioned
    assert box.redis_call("PING") == "PONG"
    assert "used_memory:" in box.redis_call("INFO", "memory")  # beat reads INFO
    assert box.redis_call("SET", "deploy-test", "1") == "OK"
    assert box.redis_call("DEL", "deploy-test") == "1"
    for command in (("CONFIG", "GET", "dir"), ("KEYS", "*"), ("ACL", "LIST"), ("SAVE",), ("SHUTDOWN",),
                    ("REPLICAOF", "127.0.0.1", "1"), ("FLUSHALL",), ("FLUSHDB",), ("RESTORE", "k", "0", "x"),
                    ("SYNC",), ("REPLCONF", "listening-port", "1")):
        assert "NOPERM" in box.redis_call(*command), command  # the API's user can neither wipe nor copy it
    url = box.secret("REDIS_URL")
    assert "WRONGPASS" in box.redis_call("PING", url=url.replace("lorebase:", "lorebase:x"))
    # the default user is off, and there is no TCP port at all
    sock = url.rsplit("@", 1)[1]
    default = box.run("setpriv", "--reuid=lorebase", "--regid=lorebase", "--init-groups", "redis-cli", "-s", sock,
                      "PING")
    assert "NOAUTH" in default.stdout + default.stderr or "WRONGPASS" in default.stdout + default.stderr
    assert "refused" in box.run("redis-cli", "-p", "6379", "PING").stderr.lower() or \
        "refused" in box.run("redis-cli", "-p", "6379", "PING").stdout.lower()
    # and only the redis group gets to the socket
    other = box.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "redis-cli", "-s", sock, "PING")
    assert "permission denied" in (other.stdout + other.stderr).lower()


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
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "release one"], cwd=repo, check=True)
    return repo


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def _deploy(box: Box, repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DASH, str(repo / "deploy/deploy.sh"), *args], cwd=repo, env=box.env(**env),
                          capture_output=True, text=True, timeout=600)


def _commit(repo: Path, message: str) -> None:
    subprocess.run([*GIT, "commit", "-qam", message], cwd=repo, check=True)


class Pinger(threading.Thread):
    """GET /ping through the box's nginx (HTTPS) over keep-alive and fresh connections until
    stopped; counts failures."""

    def __init__(self, box: Box):
        super().__init__(daemon=True)
        self.box = box
        self.done = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        url = f"https://{self.box.ip}/ping"
        headers = {"Host": "box.test"}
        with httpx.Client(timeout=10, verify=False, headers=headers) as kept:
            while not self.done.is_set():
                for client in (kept, None):
                    try:
                        r = (client.get(url) if client else httpx.get(url, timeout=10, verify=False, headers=headers))
                        if r.status_code == 200:
                            self.ok += 1
                        else:
                            self.failed.append(f"{r.status_code} {r.text[:80]}")
                    except httpx.HTTPError as error:
                        self.failed.append(repr(error))
                time.sleep(0.01)


def _releases(box: Box) -> list[str]:
    return sorted(p.name for p in box.path("/opt/lorebase/releases").iterdir() if not p.name.startswith("."))


def test_deploy_serves_a_failing_release_is_rolled_back_and_the_next_one_serves(provisioned: Box,
                                                                               repo: Path) -> None:
    box = provisioned
    first = _deploy(box, repo, "prod", "confirm")
    assert first.returncode == 0, first.stdout + first.stderr
    for step in ("pack", "copy", "install", "activate", "prune"):
        assert f"   {step}: " in first.stdout, first.stdout
    release_one = box.current()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert release_one.endswith("-" + head.stdout.strip())
    # HTTPS from nginx on the box's own address, HTTP redirected to it
    assert box.https("/health").json() == {"redis": "ok"}
    plain = httpx.get(f"http://{box.ip}/health", headers={"Host": "box.test"})
    assert plain.status_code == 301 and plain.headers["location"] == "https://box.test/health"
    assert box.state()["code"].startswith(f"/opt/lorebase/releases/{release_one}/")
    master = psutil.Process(box.master_pid())
    assert master.uids().real == box.uid("lorebase") != 0  # the box's lorebase user
    assert {p.uids().real for p in master.children(recursive=True)} == {box.uid("lorebase")}
    released = box.path(f"/opt/lorebase/releases/{release_one}")
    assert not (released / ".git").exists() and (released / "lorebase/app.py").exists()
    assert box.path("/etc/nginx/sites-available/lorebase").read_text() == (released / "nginx.conf").read_text()
    assert not box.path("/etc/nginx/sites-enabled/default").exists()
    # the operator's command on the box: lorebase prod's settings, as lorebase, through the ACL user
    check = box.run("lorebase", "check", "prod")
    assert check.returncode == 0, check.stdout + check.stderr
    backup = box.run("lorebase", "backup", "prod")
    assert backup.returncode == 0, backup.stdout + backup.stderr  # redis-cli --rdb as lorebase's user
    assert list(box.path("/var/lib/lorebase/backups/prod").glob("*.rdb.gz.sealed"))
    base = f"https://{box.ip}"
    with httpx.Client(base_url=base, verify=False, headers={"Host": "box.test"}) as client:
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
    assert box.https("/health").json() == {"redis": "ok"}
    assert box.state()["code"].startswith(f"/opt/lorebase/releases/{release_one}/")
    assert box.master_pid() == master.pid  # reloaded twice, never restarted
    assert pinger.ok > 50 and pinger.failed == [], pinger.failed[:5]
    with httpx.Client(base_url=base, verify=False, headers={"Host": "box.test"}) as client:
        login = client.post("/auth/login", json={"username": "ada", "password": "correct horse battery"})
        assert login.status_code == 200, login.text
    release_two = _releases(box)[-1]
    assert release_two != release_one

    # release three mends it: served, with no request failed; DEPLOY_KEEP=1 prunes release two
    public.write_text(source)
    _commit(repo, "release three: /health mended")
    pinger = Pinger(box)
    pinger.start()
    try:
        third = _deploy(box, repo, "prod", "confirm", LOREBASE_DEPLOY_KEEP="1")
    finally:
        pinger.done.set()
        pinger.join(30)
    assert third.returncode == 0, third.stdout + third.stderr
    release_three = box.current()
    assert release_three not in (release_one, release_two)
    assert box.state()["code"].startswith(f"/opt/lorebase/releases/{release_three}/")
    assert os.readlink(box.path("/opt/lorebase/previous")).endswith(release_one)
    assert f"removed {release_two}" in third.stdout
    assert _releases(box) == [release_one, release_three]
    assert box.master_pid() == master.pid
    assert pinger.ok > 50 and pinger.failed == [], pinger.failed[:5]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, lorebase_wheel: Path) -> Path:
    """A project of `lorebase new`, outside the repository, committed: it depends on lorebase's
    wheel built from this tree (the box's pip takes the rest from the wheelhouse)."""
    where = tmp_path_factory.mktemp("elsewhere")
    made = subprocess.run([sys.executable, "-m", "lorebase", "new", "my-shop", "--lorebase", str(lorebase_wheel)],
                          cwd=where, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    project = where / "my-shop"
    subprocess.run([*GIT, "init", "-q"], cwd=project, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", "my-shop, as lorebase new wrote it"], cwd=project, check=True)
    return project


def _lorebase(box: Box, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`lorebase ARGS` in the project's directory, as its owner runs it."""
    return subprocess.run([sys.executable, "-m", "lorebase", *args], cwd=project, env=box.env(),
                          capture_output=True, text=True, timeout=600)


def _mailed_token(box: Box, address: str) -> str:
    """The token of the newest mail to `address` in lorebase's log on the box (MAIL_URL console://)."""
    log = box.path("/var/log/lorebase/lorebase.log")

    def found() -> str | None:
        mails = log.read_text(errors="replace").split(f"--- mail to {address}:")
        if len(mails) < 2:
            return None
        match = re.search(r"[?&]token=([A-Za-z0-9_.\-]+)", mails[-1].split("--- end of mail", 1)[0])
        return match.group(1) if match else None
    token = wait_for(found, 20, what=f"the mail to {address} in the box's log")
    assert isinstance(token, str)
    return token


def test_a_new_project_is_provisioned_for_deployed_and_serves_its_route_through_nginx(provisioned: Box,
                                                                                     project: Path) -> None:
    """`lorebase provision` and `lorebase deploy` in a project of `lorebase new`: the scripts
    lorebase ships. Run after the repository's own deploy, the project's release takes over from
    it on the same master (a SIGHUP): its config.py and package are what the new code loads."""
    box = provisioned
    cron = box.path("/etc/cron.d/lorebase").read_text()
    again = _lorebase(box, project, "provision", "box", "--no-upgrade", "--domain", "box.test", "--mail-url",
                      "console://")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "provision: nothing changed" in again.stdout, again.stdout  # the same scripts as deploy/provision.sh
    assert box.path("/etc/cron.d/lorebase").read_text() == cron  # kept as it was: no line twice
    deployed = _lorebase(box, project, "deploy", "prod", "confirm")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    release = box.current()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project, capture_output=True, text=True)
    assert release.endswith("-" + head.stdout.strip())
    released = box.path(f"/opt/lorebase/releases/{release}")
    assert (released / "my_shop/__init__.py").exists() and (released / "config.py").exists()
    assert not (released / "lorebase").exists() and not (released / "secret.py").exists()
    # lorebase from the project's pins, in the release's own venv
    assert box.state()["code"].startswith(f"/opt/lorebase/releases/{release}/.venv/")
    assert box.https("/health").json() == {"redis": "ok"}
    assert box.https("/static/index.html").status_code == 200  # the web client, from the venv's lorebase

    with httpx.Client(base_url=f"https://{box.ip}", verify=False, headers={"Host": "box.test"}) as http:
        assert http.get("/hello").status_code == 403  # private: the gatekeeper first
        password = "correct horse battery staple"
        signup = http.post("/auth/signup", json={"username": "grace", "email": "grace@example.com",
                                                 "password": password})
        assert signup.status_code == 200, signup.text
        verify = http.post("/auth/verifyEmail", json={"token": _mailed_token(box, "grace@example.com"),
                                                      "password": password})
        assert verify.status_code == 200, verify.text
        login = http.post("/auth/login", json={"username": "grace", "password": password})
        assert login.status_code == 200, login.text
        hello = http.get("/hello")
        assert hello.status_code == 200, hello.text
        assert hello.json() == {"hello": "grace"}
        assert http.get("/notes").status_code == 404  # the repository's example is not this project's
    check = box.run("lorebase", "check", "prod")  # the operator's command works on the project too
    assert check.returncode == 0, check.stdout + check.stderr
    # the @reboot line's script, with lorebase already serving: it starts nothing a second time
    master = box.master_pid()
    started = box.run("/usr/local/lib/lorebase/start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "lorebase answers /health" in started.stdout, started.stdout
    assert box.master_pid() == master and psutil.pid_exists(master)


def test_prod_is_refused_without_confirm_before_anything_is_contacted(box: Box, repo: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(3)
    port = listener.getsockname()[1]
    env = box.env(LOREBASE_DEPLOY_HOST="127.0.0.1", LOREBASE_DEPLOY_SSH_PORT=str(port))
    try:
        refused = subprocess.run([DASH, str(repo / "deploy/deploy.sh"), "prod"], cwd=repo, capture_output=True,
                                 text=True, env=env, timeout=60)
        assert refused.returncode == 2
        assert "needs confirm" in refused.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
        # the same command with confirm does contact the host: the listener above can tell
        confirmed = subprocess.Popen([DASH, str(repo / "deploy/deploy.sh"), "prod", "confirm"], cwd=repo,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        conn, _ = listener.accept()
        conn.close()
        confirmed.wait(30)
        assert confirmed.returncode != 0
    finally:
        listener.close()
