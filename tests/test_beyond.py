"""lorebase beyond one box (issue 11), through its HTTP API and its commands: a lorebase whose
REDIS_URL is `redis+sentinel://` or `redis+cluster://` keeps serving when a primary is
killed, and its check, backup and restore work there; two API nodes behind nginx, one
killed; two sharing a file server. (The client underneath: tests/test_topology.py.)"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .files_support import Api as FilesApi
from .files_support import blob, lorebase_cmd, tree, user
from .identity_support import COOKIE, Api, Users, dedicated
from .lore import FILES_SECRET, FileServer, Lorebase, MailSink, RedisServer, free_port, wait_for
from .test_nginx import NGINX, WRAPPER, Edge
from .test_topology import record
from .topology import BACKUP_USER, Cluster, Sentinels


def raw_post(api: Api, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST with the session's cookie and CSRF token, any status taken (Api.post fails on a 5xx)."""
    return api.http.post(path, json={**body, "csrf": api.csrf}, headers={"cookie": f"{COOKIE}={api.cookie}",
                                                                        "x-real-ip": api.ip})


def note_ids(api: Any) -> set[str]:
    """Every note id of the user, page by page."""
    out: set[str] = set()
    before = ""
    while True:
        r = api.get("/notes" + (f"?before={before}" if before else ""))
        assert r.status_code == 200, r.text
        page = r.json()
        out |= {n["id"] for n in page}
        if len(page) < 20:
            return out
        before = page[-1]["id"]


def writes_through(api: Api, kill: Callable[[], None]) -> tuple[list[str], dict[int, int], float]:
    """POST /notes for up to 30 s, `kill` called after the first second: every reply 200 or
    503 `redis` (never a 500), and writes succeed again within 10 s with no restart. The ids
    acknowledged, the count of each status, the seconds from the kill to the next 200."""
    acked: list[str] = []
    statuses: dict[int, int] = {}
    killed_at = recovered = 0.0
    began = time.monotonic()
    while time.monotonic() - began < 30:
        r = raw_post(api, "/notes", {"text": f"n{len(acked)}"})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            acked.append(r.json()["id"])
            if killed_at and not recovered:
                recovered = time.monotonic() - killed_at
            if recovered and time.monotonic() - killed_at > recovered + 1:
                break
        else:
            assert r.status_code == 503 and r.json()["error"] == "redis", (r.text, statuses, killed_at)
            time.sleep(0.02)
        if not killed_at and time.monotonic() - began > 1:
            kill()
            killed_at = time.monotonic()
    assert recovered and recovered < 10, (recovered, statuses)
    return acked, statuses, recovered


def check_backup_restore(lore: Lorebase, api: Api, kept: set[str]) -> None:
    """`lorebase check` passes, `backup` takes one, a note written after it is gone again
    after `restore latest`: the user's notes are `kept` again."""
    checked = lorebase_cmd(lore, "check", "dev")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    taken = lorebase_cmd(lore, "backup", "dev")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert raw_post(api, "/notes", {"text": "after the backup"}).status_code == 200
    restored = lorebase_cmd(lore, "restore", "latest", "dev", "--force")  # lorebase is serving
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert note_ids(api) == kept  # the note written after the backup is gone again


@pytest.fixture(scope="module")
def mail() -> Any:
    sink = MailSink().start()
    yield sink
    sink.stop()


def test_sentinel_primary_killed_under_writes(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> None:
    """A primary, two replicas, three sentinels; lorebase on `redis+sentinel://`. A session
    from before, a stream of POST /notes, kill -9 the primary: requests get 200 or 503 (never
    500), writes succeed again within 10 s with no restart, the session is still good, and
    `lorebase check` / `backup` / `restore` run against the new primary."""
    group = Sentinels(Path(tmp_path_factory.mktemp("sentinel")), replicas=2).start()
    try:
        with dedicated(tmp_path_factory, mail, "on-sentinel", REDIS_URL=group.url, **BACKUP_USER) as lore, \
                Users(lore, mail) as users:
            alice = users.new("sn_alice", verified=True)
            api = users.session(alice)
            acked, statuses, recovered = writes_through(api, lambda: group.kill(group.primary()))
            assert group.primary() != group.data_ports[0]
            kept = note_ids(api)
            lost = [i for i in acked if i not in kept]
            record("lorebase on sentinel, primary killed", writes_again_after_s=round(recovered, 2),
                   statuses=statuses, acked_notes=len(acked), acked_lost=len(lost))
            assert len(lost) <= 5, lost  # asynchronous replication: at most the last moment's writes
            check_backup_restore(lore, api, kept)
    finally:
        group.stop()


def edge_for(directory: Path, lore: Lorebase, nodes: list[Lorebase]) -> Edge:
    """A real nginx with the site `lorebase nginx` renders for NGINX_NODES = `nodes`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    edge = Edge(directory, free_port(), free_port(), cert)
    lore.overrides["NGINX_NODES"] = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    done = lorebase_cmd(lore, "nginx", "--domain", "localhost", "--cert", str(cert), "--key", str(key),
                        "--http-port", edge.http.rsplit(":", 1)[1], "--https-port", str(edge.https_port),
                        "--listen", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    for node in nodes:
        assert f"server 127.0.0.1:{node.port} " in done.stdout, done.stdout
    (directory / "site.conf").write_text(done.stdout)
    conf = directory / "nginx.conf"
    conf.write_text(WRAPPER.format(dir=directory))
    edge.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with edge.client() as client:
        wait_for(lambda: client.get("/health").status_code == 200, 15, 0.1, "nginx in front of the nodes")
    return edge


def kill_node(lore: Lorebase) -> None:
    """kill -9 every process of a node at once (its box died)."""
    assert lore.proc is not None
    master = psutil.Process(lore.proc.pid)
    for proc in [master, *master.children(recursive=True)]:
        proc.kill()
    lore.proc.wait(10)


def test_cluster_primary_killed_under_writes(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> None:
    """Three primaries and three replicas; lorebase on `redis+cluster://`. A stream of POST
    /notes by a user whose slot lives on the primary killed with -9: requests get 200 or 503
    (never 500), writes succeed again within 10 s with no restart, and `lorebase check` /
    `backup` / `restore` run on the cluster (the backup merges every primary's keys; the
    restore puts each key on its slot's primary); then every slot of the user's primary is
    resharded to another under POST and GET /notes: no 5xx, nothing lost."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        with dedicated(tmp_path_factory, mail, "on-cluster", REDIS_URL=cluster.url, **BACKUP_USER) as lore, \
                Users(lore, mail) as users:
            alice = users.new("cl_alice", verified=True)
            others = [users.new(f"cl_other{i}", verified=True) for i in range(3)]  # keys on other primaries
            api = users.session(alice)
            for other in others:
                assert raw_post(users.session(other), "/notes", {"text": "elsewhere"}).status_code == 200
            victim = cluster.owner("{cl_alice}")
            acked, statuses, recovered = writes_through(api, lambda: cluster.kill(victim))
            assert cluster.owner("{cl_alice}") != victim
            cluster.wait_ok()
            kept = note_ids(api)
            lost = [i for i in acked if i not in kept]
            record("lorebase on cluster, primary killed", writes_again_after_s=round(recovered, 2),
                   statuses=statuses, acked_notes=len(acked), acked_lost=len(lost))
            assert len(lost) <= 5, lost  # asynchronous replication: at most the last moment's writes
            check_backup_restore(lore, api, kept)
            for other in others:  # the keys of the other primaries came back too
                assert len(note_ids(users.session(other))) == 1
            checked = lorebase_cmd(lore, "check", "dev")
            assert checked.returncode == 0, checked.stdout + checked.stderr

            # every slot of the user's primary moves to another (redis-cli --cluster reshard)
            # under the same stream of writes and reads: no 5xx, nothing lost
            source = cluster.owner("{cl_alice}")
            target = next(p for p in cluster.primaries() if p != source)
            owned = sum(end - start + 1 for start, end, node, *_ in cluster.node(source).execute_command(
                "CLUSTER", "SLOTS") if int(node[1]) == source)
            moving = threading.Thread(target=cluster.reshard, args=(source, target, owned, 300))
            before = note_ids(api)
            written: list[str] = []
            failed: list[str] = []
            moving.start()
            while moving.is_alive() or not written:
                r = raw_post(api, "/notes", {"text": f"m{len(written)}"})
                if r.status_code == 200:
                    written.append(r.json()["id"])
                else:
                    failed.append(f"{r.status_code} {r.text[:100]}")
                listed = api.http.get("/notes", headers={"cookie": f"{COOKIE}={api.cookie}", "x-real-ip": api.ip})
                if listed.status_code != 200:
                    failed.append(f"GET {listed.status_code} {listed.text[:100]}")
            moving.join()
            assert cluster.owner("{cl_alice}") == target
            assert not failed, failed[:10]
            assert note_ids(api) == before | set(written)
            record("lorebase on cluster, reshard under writes", slots=owned, posts=len(written), failed=len(failed))
    finally:
        cluster.stop()


def test_two_api_nodes_behind_nginx_one_killed(tmp_path_factory: pytest.TempPathFactory, mail: MailSink) -> None:
    """Architecture C: nginx in front of two API nodes sharing one Redis and one COOKIE_SECRET.
    A session made on A is good on B. Under a stream of GETs and POSTs through nginx, node A
    is killed (-9, all its processes): every GET succeeds (nginx passes it to B), and the only
    failures are POSTs that were in flight on A (nginx never resends a POST that reached a
    node), at most one per client thread."""
    base = Path(tmp_path_factory.mktemp("two-nodes"))
    shared = RedisServer(base / "redis").start()
    common = {"REDIS_URL": shared.url, "COOKIE_SECRET": "s" * 48, "TRUSTED_PROXIES": "127.0.0.1",
              "MAIL_URL": mail.url}
    a = Lorebase(base / "a" / "data", **common).start()
    b = Lorebase(base / "b" / "data", **common).start()
    edge = None
    try:
        with Users(a, mail) as users:
            alice = users.new("two_alice", verified=True)
            on_a = users.session(alice)
            with Api(b, on_a.ip) as on_b:
                on_b.cookie, on_b.csrf = on_a.cookie, on_a.csrf
                assert on_b.post("/notes", {"text": "written on B"}, csrf=True).status_code == 200
            assert [n["text"] for n in on_a.get("/notes").json()] == ["written on B"]
            edge = edge_for(base / "edge", a, [a, b])
            failures: list[tuple[str, int, str]] = []
            done: list[str] = []
            stop = threading.Event()

            def client(turn: int) -> None:
                with edge.client() as http:
                    headers = {"cookie": f"{COOKIE}={on_a.cookie}"}
                    while not stop.is_set():
                        turn += 1
                        if turn % 2:
                            r = http.get("/notes", headers=headers)
                            method = "GET"
                        else:
                            r = http.post("/notes", json={"text": f"t{turn}", "csrf": on_a.csrf}, headers=headers)
                            method = "POST"
                        (done.append(method) if r.status_code == 200 else failures.append(
                            (method, r.status_code, r.text[:100])))

            threads = [threading.Thread(target=client, args=(i * 1000,)) for i in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            served_before = len(done)
            kill_node(a)
            users.lore = b  # the accounts are destroyed through the node still up
            alice.apis.clear()
            time.sleep(3)
            stop.set()
            for thread in threads:
                thread.join(20)
            record("two nodes behind nginx, one killed", requests=len(done) + len(failures),
                   before_kill=served_before, failures=failures)
            assert served_before > 20 and len(done) > served_before + 20, (served_before, len(done))
            assert all(method == "POST" and status == 503 for method, status, _ in failures), failures
            assert len(failures) <= len(threads), failures
    finally:
        if edge is not None and edge.proc is not None:
            edge.proc.terminate()
            edge.proc.wait(10)
        if a.proc is not None and a.proc.poll() is None:
            a.stop()
        assert b.stop() == 0
        shared.stop()


def test_two_api_nodes_behind_nginx_share_one_file_server(tmp_path_factory: pytest.TempPathFactory,
                                                          mail: MailSink) -> None:
    """Architecture C with its file server: two API nodes (one Redis, one COOKIE_SECRET, the same
    FILES_URL) behind nginx. A file uploaded through A is downloaded through B and through
    nginx, deleted through B, and neither node's DATA_DIR ever holds a byte of it."""
    base = Path(tmp_path_factory.mktemp("two-nodes-files"))
    shared = RedisServer(base / "redis").start()
    files = FileServer(base / "files").start()
    common = {"REDIS_URL": shared.url, "COOKIE_SECRET": "s" * 48, "TRUSTED_PROXIES": "127.0.0.1",
              "MAIL_URL": mail.url, "FILES_URL": files.url, "FILES_SECRET": FILES_SECRET}
    a = Lorebase(base / "a" / "data", **common).start()
    b = Lorebase(base / "b" / "data", **common).start()
    edge = None
    try:
        data = blob(1_500_000, "two-nodes")
        with user(a, "two_files") as on_a:
            out = on_a.ok_upload(data, "shared.bin")
            on_b = FilesApi(b, on_a.ip)
            on_b.cookie, on_b.csrf = on_a.cookie, on_a.csrf
            try:
                r = on_b.get(f"/files/{out['id']}")
                assert r.status_code == 200 and r.content == data
                edge = edge_for(base / "edge", a, [a, b])
                with edge.client() as http:
                    through = http.get(f"/files/{out['id']}", headers={"cookie": f"{COOKIE}={on_a.cookie}"})
                    assert through.status_code == 200 and through.content == data
                    assert through.headers["etag"] == r.headers["etag"]  # one file server, one ETag
                for node in (a, b):
                    assert tree(node.data_dir / "files") == set() and tree(node.data_dir / "tmp") == set()
                assert (files.data_dir / "files" / out["id"][-2:] / out["id"]).read_bytes() == data
                assert on_b.post("/files/delete", {"id": out["id"]}).status_code == 200
                assert on_a.get(f"/files/{out['id']}").status_code == 404
                assert tree(files.data_dir / "files") == set()
            finally:
                on_b.close()
    finally:
        if edge is not None and edge.proc is not None:
            edge.proc.terminate()
            edge.proc.wait(10)
        assert a.stop() == 0 and b.stop() == 0
        assert files.stop() == 0
        shared.stop()
