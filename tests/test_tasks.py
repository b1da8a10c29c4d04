"""The tasks process's queues survive any Redis failure (master tasks issue): a job that
fails while Redis cannot take it back is not lost, and the loop that works the queue goes on.
A tasks process whose loop stops is replaced by the master (issue 17)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from lorebase import mail as outbox
from lorebase.tasks.queue import durable

from .identity_support import dedicated, fresh_ip, signup_body
from .lore import Lorebase, MailSink, RedisServer, wait_for
from .support import doing, gone, redis_pid, tasks_pid, wait_event

MAIL = durable()["mail"]  # the outbox's keys


def mail_in_flight(lore: Lorebase, db: Any, name: str, what: str) -> None:
    """Signs up `name` on `lore`, and waits until a worker has taken its verification mail."""
    r = httpx.post(lore.url + "/auth/signup", json=signup_body(name, f"{name}@example.com"),
                   headers={"x-real-ip": fresh_ip()}, timeout=10)
    assert r.status_code == 200, r.text
    wait_for(lambda: doing(db, MAIL) == 1, 10, 0.05, what)


class Trickler:
    """An SMTP server that greets forever: a `220-` continuation line every 2 s, so a send to
    it neither ends nor times out (each line comes well within the sender's 20 s), and its job
    stays in its worker's doing list for as long as a test needs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"smtp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        peers: list[socket.socket] = []
        while not self.stopping.is_set():
            try:
                peer, _ = self.sock.accept()
                peers.append(peer)
            except TimeoutError:
                pass
            for peer in list(peers):
                try:
                    peer.sendall(b"220-still greeting\r\n")
                except OSError:  # the sender gave up (its process killed)
                    peers.remove(peer)
                    peer.close()
            self.stopping.wait(2)
        for peer in peers:
            peer.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()


def test_a_mail_whose_failure_meets_a_stalled_redis_is_still_sent(tmp_path_factory):
    """The SMTP server first accepts connections and never greets (the send waits); Redis is
    stopped (SIGSTOP), then the SMTP server goes away (its unanswered connections reset, no
    wait for the sender's 20 s timeout), so the send fails and putting the mail back for a
    retry fails too. Redis comes back, a real SMTP server takes the port: the mail arrives,
    and the tasks process was never restarted (its loop went on, rather than the master
    starting a new one)."""
    sink = MailSink()  # not started yet: its port is held by a server that never answers
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", sink.port))
    silent.listen(16)
    started = False
    try:
        with dedicated(tmp_path_factory, sink, "stalled-redis") as lore:
            before = tasks_pid(lore)
            db = lore.redis()
            r = httpx.post(lore.url + "/auth/signup", json=signup_body("tq_stalled", "tq_stalled@example.com"),
                           headers={"x-real-ip": fresh_ip()}, timeout=10)
            assert r.status_code == 200, r.text
            wait_for(lambda: doing(db, MAIL) == 1, 10, what="the mail being sent")
            pid = redis_pid(lore)
            os.kill(pid, signal.SIGSTOP)
            try:
                # the send fails at once (reset), the retry's ZADD then waits on the stopped Redis
                silent.close()
                wait_for(lambda: "mail failed" in lore.log_text(), 40, 0.2, "the send to fail")
                # Redis stays stopped until putting the mail back has surely failed: the tasks
                # process says so (redis-py gives up after 5 s), or 8 s have passed
                failed_at = time.monotonic()
                wait_for(lambda: "mail queue redis error" in lore.log_text() or time.monotonic() - failed_at > 8,
                         15, 0.2, "the retry's write to fail")
            finally:
                os.kill(pid, signal.SIGCONT)
            sink.start()
            started = True
            wait_for(lambda: sink.to("tq_stalled@example.com"), 60, 0.2, "the mail, retried")
            assert tasks_pid(lore) == before, "the tasks process was restarted"
            assert doing(db, MAIL) == 0 and db.zcard(outbox.RETRY) == 0
    finally:
        silent.close()
        if started:
            sink.stop()


def test_two_nodes_on_one_redis_take_turns_and_the_survivor_goes_on(tmp_path_factory):
    """Two lorebase nodes share an external Redis; the backup task (every 2 s, a 2 s lock) runs
    once per interval in all, not once per node, and each run is one node's; after node A is
    killed with -9, node B runs it on its own."""
    base = Path(tmp_path_factory.mktemp("two-nodes"))
    shared = RedisServer(base / "redis").start()
    nodes = [Lorebase(base / name / "data", REDIS_URL=shared.url, BACKUP_EVERY="2", LOCK_TTL="2",
                      MAIL_URL="console://") for name in ("a", "b")]
    try:
        for node in nodes:
            node.start()
        started = time.monotonic()

        def runs() -> list[dict[str, Any]]:
            return [e for node in nodes for e in node.events("task backup")]
        wait_for(lambda: len(runs()) >= 4, 30, 0.2, "four backups")
        elapsed = time.monotonic() - started
        assert len(runs()) <= elapsed / 2 + 1, (len(runs()), elapsed)  # once per interval, not per node
        assert all(e.get("outcome", "").startswith("backup ") for e in runs())
        a, b = nodes
        a_runs = len(a.events("task backup"))
        assert a.proc is not None
        a.proc.kill()  # -9 to the master: its children die with it
        a.proc.wait(10)
        b_before = len(b.events("task backup"))
        wait_for(lambda: len(b.events("task backup")) >= b_before + 2, 20, 0.2, "node b going on alone")
        assert len(a.events("task backup")) == a_runs
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        shared.stop()


def test_jobs_queued_when_redis_is_killed_are_all_done_after_it_returns(tmp_path, moto):
    """Mail and S3 jobs wait in their queues (the SMTP server and S3 are down); Redis is killed
    with -9 (the master restarts it from its AOF); then SMTP and S3 come back: every mail
    arrives and every file reaches S3."""
    from .files_support import S3_BUCKET, Api, s3_keys, setup_buckets, signup

    sink = MailSink()  # down until later
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL=sink.url, **moto.settings())
    lore.start()
    try:
        setup_buckets(lore)
        signup(lore, "tq_files")
        api = Api(lore)
        api.login("tq_files")
        moto.stop()
        try:
            names = [f"tq_mail{i}" for i in range(3)]
            for name in names:
                r = httpx.post(lore.url + "/auth/signup", json=signup_body(name, f"{name}@example.com"),
                               headers={"x-real-ip": fresh_ip()}, timeout=10)
                assert r.status_code == 200, r.text
            ids = [api.ok_upload(f"tq file {i}".encode() * 100, f"f{i}.bin")["id"] for i in range(3)]
            db = lore.redis()
            wait_for(lambda: db.zcard(outbox.RETRY) + db.llen(outbox.QUEUE) >= 4, 30, 0.1, "the mails waiting")
            time.sleep(1.5)  # past the AOF's fsync (everysec): the queues are on disk
            old = redis_pid(lore)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: redis_pid(lore) != old and lore.redis().ping(), 30, 0.1, "Redis restarted")
        finally:
            moto.start()
        setup_buckets(lore)  # a new moto server knows no bucket
        sink.start()
        try:
            for name in ["tq_files", *names]:
                wait_for(lambda n=name: sink.to(f"{n}@example.com"), 90, 0.2, f"the mail to {name}")
            s3 = moto.client()
            for file_id in ids:
                wait_for(lambda f=file_id: f"files/tq_files/{f}" in s3_keys(s3, S3_BUCKET), 90, 0.2, f"{file_id} in S3")
        finally:
            sink.stop()
        api.close()
    finally:
        assert lore.stop() == 0


def test_a_failed_backup_is_mailed_to_the_admins(tmp_path):
    """S3 refuses (nothing listens at its endpoint): the scheduled backup fails, is notified,
    and each address in ADMINS gets one mail saying so."""
    sink = MailSink().start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{dead.getsockname()[1]}"  # bound, never listening: refused
    lore = Lorebase(tmp_path / "data", MAIL_URL=sink.url, BACKUP_EVERY="1", ADMINS="ops@example.com",
                    S3_ENDPOINT=endpoint, S3_BUCKET="nowhere", S3_ACCESS_KEY="k", S3_SECRET_KEY="s" * 40)
    lore.start()
    try:
        wait_for(lambda: "task backup failed" in lore.log_text(), 60, 0.2, "the backup to fail")
        mails = wait_for(lambda: sink.to("ops@example.com"), 60, 0.2, "the admins' mail")
        subject = str(mails[0]["Subject"])
        assert "backup" in subject and "failed" in subject, subject
    finally:
        assert lore.stop() == 0
        sink.stop()
        dead.close()


def test_a_node_starting_leaves_another_nodes_job_alone_and_a_dead_nodes_job_is_taken_over(tmp_path_factory):
    """Node A's mail is being sent (A's SMTP server greets forever, so the send hangs); node B
    starts on the same Redis: the job stays in A's own doing list (before per-worker doing
    lists, a starting node put it back on the queue, and it ran twice). Then A is killed with
    -9: once A's heartbeat has lapsed, B puts A's job back and sends it, within EXPIRY +
    HEARTBEAT seconds and some slack."""
    from lorebase.tasks.queue import EXPIRY, HEARTBEAT, doing_of

    base = Path(tmp_path_factory.mktemp("doing-lists"))
    shared = RedisServer(base / "redis").start()
    smtp = Trickler()
    sink = MailSink().start()
    # two nodes of one deployment share COOKIE_SECRET (queued mail bodies are sealed with it)
    a = Lorebase(base / "a" / "data", REDIS_URL=shared.url, TRUSTED_PROXIES="127.0.0.1", MAIL_URL=smtp.url,
                 COOKIE_SECRET="s" * 48)
    b = Lorebase(base / "b" / "data", REDIS_URL=shared.url, MAIL_URL=sink.url, COOKIE_SECRET="s" * 48)
    try:
        a.start()
        db = a.redis()
        mail_in_flight(a, db, "tq_doing", "A sending the mail")
        (a_worker,) = db.hkeys(MAIL["workers"])
        assert db.llen(doing_of(MAIL, a_worker)) == 1
        b.start()
        wait_for(lambda: len(db.hkeys(MAIL["workers"])) == 2, 10, 0.05, "B's sender registered")
        (b_worker,) = set(db.hkeys(MAIL["workers"])) - {a_worker}
        time.sleep(HEARTBEAT + 1)  # B has looked for lapsed workers at least once since
        assert db.llen(doing_of(MAIL, a_worker)) == 1 and db.llen(MAIL["queue"]) == 0
        assert not sink.to("tq_doing@example.com")
        assert a.proc is not None
        os.kill(tasks_pid(a), signal.SIGKILL)  # first: the master's death would TERM it, a clean stop
        a.proc.kill()  # then the master, before it starts another tasks process (0.5 s)
        a.proc.wait(10)
        killed = time.monotonic()
        wait_for(lambda: sink.to("tq_doing@example.com"), EXPIRY + HEARTBEAT + 20, 0.2, "B sending A's mail")
        assert time.monotonic() - killed > EXPIRY - HEARTBEAT - 2, "taken over before A's heartbeat lapsed"
        assert len(sink.to("tq_doing@example.com")) == 1
        assert db.hkeys(MAIL["workers"]) == [b_worker]  # A's gone, and no new tasks process of A's
        assert b.events("mail requeued"), b.log_text()[-2000:]
        wait_for(lambda: doing(db, MAIL) == 0, 10, 0.05, "B's job ended")
    finally:
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        smtp.close()
        sink.stop()
        shared.stop()


def test_a_clean_stop_puts_the_job_being_run_back_at_once(tmp_path_factory):
    """A node stopping (SIGTERM) while its job cannot end puts it back on the queue and leaves
    the workers' hash itself: another node need not wait for its heartbeat to lapse."""
    base = Path(tmp_path_factory.mktemp("clean-stop"))
    shared = RedisServer(base / "redis").start()
    smtp = Trickler()
    a = Lorebase(base / "a" / "data", REDIS_URL=shared.url, TRUSTED_PROXIES="127.0.0.1", SHUTDOWN_GRACE="2",
                 MAIL_URL=smtp.url)
    try:
        a.start()
        db = a.redis()
        mail_in_flight(a, db, "tq_stop", "the mail being sent")
        a.stop()
        assert db.llen(MAIL["queue"]) == 1 and doing(db, MAIL) == 0
        assert db.hlen(MAIL["workers"]) == 0
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.stop()
        smtp.close()
        shared.stop()


def test_after_a_redis_outage_longer_than_the_expiry_no_live_workers_job_is_taken(tmp_path_factory):
    """Node A's mail is being sent (its SMTP server never greets) and node B is idle; Redis
    stops (SIGSTOP) for longer than EXPIRY, so when it answers again every worker's entry has
    lapsed by its clock. B must not take A's job while A is alive: each waits until its own
    beats have gone through again for a while before it looks for dead workers."""
    from lorebase.tasks.queue import EXPIRY, HEARTBEAT, PAUSE_MAX, doing_of

    base = Path(tmp_path_factory.mktemp("outage-doing"))
    shared = RedisServer(base / "redis").start()
    smtp = Trickler()
    # one deployment's nodes share COOKIE_SECRET (queued mail bodies are sealed with it). B starts
    # once A's sender holds the mail: two idle senders block on the queue in the order they came,
    # and B's (console://) would send it at once were it first
    a = Lorebase(base / "a" / "data", REDIS_URL=shared.url, TRUSTED_PROXIES="127.0.0.1", MAIL_URL=smtp.url,
                 COOKIE_SECRET="s" * 48)
    b = Lorebase(base / "b" / "data", REDIS_URL=shared.url, MAIL_URL="console://", COOKIE_SECRET="s" * 48)
    try:
        a.start()
        db = a.redis()
        mail_in_flight(a, db, "tq_outage", "A's sender taking the mail")
        b.start()
        wait_for(lambda: len(db.hkeys(MAIL["workers"])) == 2, 10, 0.05, "both senders registered")
        holder = next(w for w in db.hkeys(MAIL["workers"]) if db.llen(doing_of(MAIL, w)))
        assert shared.proc is not None
        pid = shared.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(EXPIRY + 2)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(HEARTBEAT + PAUSE_MAX + 3)
        assert db.llen(doing_of(MAIL, holder)) == 1, "the job being sent was taken from its live worker"
        assert not a.events("mail requeued") and not b.events("mail requeued"), (a.events("mail requeued"),
                                                                                b.events("mail requeued"))
    finally:
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        smtp.close()
        shared.stop()


def test_a_stuck_tasks_process_is_killed_and_replaced_and_mail_goes_on(tmp_path):
    """SIGSTOP stands in for a stuck event loop: the tasks process stops beating, and within
    TASKS_TIMEOUT (2 s here; the master looks every 0.5 s) the master notifies `tasks stuck`,
    kills it and starts another, which sends the mail that comes after at once. The mail
    queued during the stall was taken by the stopped process (Redis ran its waiting BLMOVE):
    it is sent too, once that worker's entry has lapsed (the queue's EXPIRY + HEARTBEAT)."""
    from lorebase.tasks.queue import EXPIRY, HEARTBEAT, PAUSE_MAX

    sink = MailSink().start()
    lore = Lorebase(tmp_path / "data", MAIL_URL=sink.url, TRUSTED_PROXIES="127.0.0.1", TASKS_TIMEOUT="2")
    stuck = 0
    try:
        lore.start()

        def sign_up(name: str) -> None:
            r = httpx.post(lore.url + "/auth/signup", json=signup_body(name, f"{name}@example.com"),
                           headers={"x-real-ip": fresh_ip()}, timeout=10)
            assert r.status_code == 200, r.text

        sign_up("stuck_before")
        sink.wait_for("stuck_before@example.com")  # the loop runs: it has beaten
        stuck = tasks_pid(lore)
        os.kill(stuck, signal.SIGSTOP)
        began = time.monotonic()
        sign_up("stuck_during")  # queued while nothing works the outbox
        line = wait_event(lore, "tasks stuck", tasks_pid=stuck, timeout=15)
        assert line["role"] == "master" and line["beaten"] is True
        assert time.monotonic() - began < 2 + 3, "not replaced within TASKS_TIMEOUT (and slack)"
        wait_for(lambda: gone(stuck), 10, 0.05, "the stuck tasks process killed")
        wait_event(lore, "tasks exit", stuck=True)
        replaced = wait_for(lambda: tasks_pid(lore) != stuck and tasks_pid(lore), 10, 0.05, "a new tasks process")
        sign_up("stuck_after")
        sink.wait_for("stuck_after@example.com", timeout=20)
        sink.wait_for("stuck_during@example.com", timeout=EXPIRY + 2 * HEARTBEAT + PAUSE_MAX + 10)
        assert tasks_pid(lore) == replaced and len(lore.events("tasks stuck")) == 1
    finally:
        if stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGCONT)
        assert lore.stop() == 0
        sink.stop()


def test_a_queued_mail_does_not_hold_its_token_readable_in_redis(tmp_path):
    """SMTP is down, so the verification mail waits in the outbox: neither the outbox's keys
    nor Redis's files on disk hold the link's token; once SMTP is up the mail arrives with it."""
    sink = MailSink()  # down until later
    lore = Lorebase(tmp_path / "data", TRUSTED_PROXIES="127.0.0.1", MAIL_URL=sink.url)
    with lore.running():
        r = httpx.post(lore.url + "/auth/signup", json=signup_body("tq_sealed", "tq_sealed@example.com"),
                       headers={"x-real-ip": fresh_ip()}, timeout=10)
        assert r.status_code == 200, r.text
        db = lore.redis(decode=False)
        wait_for(lambda: db.zcard(outbox.RETRY) == 1, 30, 0.1, "the mail waiting for a retry")
        held = b"".join([*db.lrange(outbox.QUEUE, 0, -1), *db.zrange(outbox.RETRY, 0, -1),
                         *db.lrange(outbox.DEAD, 0, -1)])
        assert b"tq_sealed@example.com" in held
        def on_disk() -> bytes | None:  # Redis's files (the AOF, the RDB), once they hold the mail
            data = b"".join(p.read_bytes() for p in (lore.data_dir / "redis").rglob("*") if p.is_file())
            return data if b"tq_sealed@example.com" in data else None

        disk = wait_for(on_disk, 10, 0.1, "the mail in Redis's files")
        sink.start()
        try:
            token = MailSink.token(sink.wait_for("tq_sealed@example.com", "verify", timeout=60))
        finally:
            sink.stop()
    assert len(token) >= 20 and token.encode() not in held and token.encode() not in disk
