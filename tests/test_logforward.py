"""LOG_URL: every process forwards its notify lines to a central endpoint as batches of
JSON lines, from a thread of its own; an endpoint that hangs or fails never holds a request,
and what the bounded buffer could not keep is counted and reported as `log dropped`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .identity_support import dedicated
from .lore import free_port, wait_for


class Collector:
    """An HTTP endpoint on loopback that keeps every JSON line POSTed to it; `down` makes it
    hang for longer than the forwarder's timeout, then answer 503."""

    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.posts = 0
        self.down = False
        self.hanging = 0  # POSTs held by `down` right now
        self.types: set[str] = set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if collector.down:
                    collector.hanging += 1
                    time.sleep(6)
                    collector.hanging -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                collector.posts += 1
                collector.types.add(self.headers["content-type"])
                collector.lines += [json.loads(line) for line in body.splitlines() if line]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_every_process_forwards_its_lines_in_batches(tmp_path_factory, mail, collector):
    with dedicated(tmp_path_factory, mail, "logfwd", LOG_URL=collector.url) as lore:
        for i in range(20):
            assert httpx.get(f"{lore.url}/forwarded/{i}", timeout=10).status_code == 404
        wait_for(lambda: sum(1 for e in collector.lines if e["ev"] == "reply"
                             and e.get("path", "").startswith("/forwarded/")) == 20, 15, 0.1, "the 20 replies")
        httpx.post(lore.url + "/error", json={"message": "password=hunter2-secret"}, timeout=10)
        line = wait_for(lambda: next((e for e in collector.lines if e["ev"] == "client error"), None), 15, 0.1)
        assert "hunter2" not in json.dumps(line)  # redacted before it leaves, as on stdout
    roles = {e["role"] for e in collector.lines}
    assert "master" in roles and any(r.startswith("worker") for r in roles), roles
    assert any(e["ev"] == "start" for e in collector.lines) and any(e["ev"] == "stop" for e in collector.lines)
    assert collector.posts < len(collector.lines)  # batches, not a POST per line
    assert collector.types == {"application/x-ndjson"}


def test_a_hung_endpoint_holds_no_request_and_drops_are_counted(tmp_path_factory, mail, collector):
    with dedicated(tmp_path_factory, mail, "logdrop", LOG_URL=collector.url, LOG_BUFFER="40", WORKERS="1") as lore:
        wait_for(lambda: any(e["ev"] == "start" for e in collector.lines), 15, 0.1, "the start line")
        collector.down = True
        with httpx.Client(base_url=lore.url, timeout=10) as client:
            assert client.get("/before-the-hang").status_code == 404
            wait_for(lambda: collector.hanging, 10, 0.02, "the forwarder's POST to hang")
            for i in range(150):
                assert client.get(f"/dropped/{i}").status_code == 404
            # all answered while the forwarder still waits for the endpoint: no request waited on it
            assert collector.hanging
        time.sleep(1.5)
        collector.down = False

        def accounted() -> bool:
            seen = sum(1 for e in collector.lines if e["ev"] == "reply"
                       and e.get("path", "").startswith(("/dropped/", "/before-the-hang")))
            dropped = sum(e["count"] for e in collector.lines if e["ev"] == "log dropped" and e["role"] == "worker0")
            return seen + dropped == 151 and dropped > 0

        wait_for(accounted, 45, 0.2, "each of the 151 replies forwarded or counted as dropped")
    kept = sum(1 for e in collector.lines if e["ev"] == "reply" and e.get("path", "").startswith("/dropped/"))
    assert 0 < kept <= 40  # what the buffer held
