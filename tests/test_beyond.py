"""lorebase beyond one box (issue 11), through its HTTP API and its commands: a lorebase whose
REDIS_URL is `redis+sentinel://` keeps serving when the primary is killed, and its check,
backup and restore work there. (The client underneath: tests/test_topology.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .identity_support import COOKIE, Api, Users, dedicated
from .lore import ROOT, Lorebase, MailSink
from .test_topology import record
from .topology import Sentinels


def command(lore: Lorebase, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m lorebase ARGV` with the server's settings (its REDIS_URL among them)."""
    return subprocess.run([sys.executable, "-m", "lorebase", *argv], env=lore.environ(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


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
        with dedicated(tmp_path_factory, mail, "on-sentinel", REDIS_URL=group.url) as lore, \
                Users(lore, mail) as users:
            alice = users.new("sn_alice", verified=True)
            api = users.session(alice)
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
                    group.kill(group.primary())
                    killed_at = time.monotonic()
            assert recovered and recovered < 10, (recovered, statuses)
            assert group.primary() != group.data_ports[0]
            kept = note_ids(api)
            lost = [i for i in acked if i not in kept]
            record("lorebase on sentinel, primary killed", writes_again_after_s=round(recovered, 2),
                   statuses=statuses, acked_notes=len(acked), acked_lost=len(lost))
            assert len(lost) <= 5, lost  # asynchronous replication: at most the last moment's writes
            checked = command(lore, "check", "dev")
            assert checked.returncode == 0, checked.stdout + checked.stderr
            taken = command(lore, "backup", "dev")
            assert taken.returncode == 0, taken.stdout + taken.stderr
            assert raw_post(api, "/notes", {"text": "after the backup"}).status_code == 200
            restored = command(lore, "restore", "latest", "dev")
            assert restored.returncode == 0, restored.stdout + restored.stderr
            assert note_ids(api) == kept  # the note written after the backup is gone again
    finally:
        group.stop()
