"""The nginx site `lorebase nginx` renders, run by a real nginx (a self-signed certificate
made here) in front of a real lorebase, all on 127.0.0.1: HTTPS and the redirect to it,
HSTS, the body limit, the client address nginx passes on (a client cannot choose it), the
request rate on /auth/, slow clients cut off, the web client's files served by nginx."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .files_support import lorebase_cmd
from .identity_support import dedicated
from .lore import Lorebase, free_port, wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRAPPER = """user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include /etc/nginx/mime.types;
    include {dir}/site.conf;
}}
"""


class Edge:
    def __init__(self, directory: Path, http_port: int, https_port: int, cert: Path):
        self.dir = directory
        self.http = f"http://127.0.0.1:{http_port}"
        self.https = f"https://localhost:{https_port}"
        self.https_port = https_port
        self.cert = cert
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.https, verify=ssl.create_default_context(cafile=str(self.cert)),
                            timeout=10, **kw)


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "nginx", FILE_LIMIT="100000", HEADER_TIMEOUT="2", BODY_TIMEOUT="5",
                   LOGIN_FAILS_PER_IP="3", NGINX_AUTH_RATE="2", NGINX_AUTH_BURST="8") as lore:
        yield lore


@pytest.fixture(scope="module")
def edge(lore, tmp_path_factory) -> Iterator[Edge]:
    directory = tmp_path_factory.mktemp("edge")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    edge = Edge(directory, free_port(), free_port(), cert)
    done = lorebase_cmd(lore, "nginx", "--domain", "localhost", "--cert", str(cert), "--key", str(key),
                        "--http-port", edge.http.rsplit(":", 1)[1], "--https-port", str(edge.https_port),
                        "--listen", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    (directory / "site.conf").write_text(done.stdout)
    conf = directory / "nginx.conf"
    conf.write_text(WRAPPER.format(dir=directory))
    test = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(directory)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    edge.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with edge.client() as client:
            wait_for(lambda: client.get("/health").status_code == 200, 15, 0.1, "nginx in front of lorebase")
        yield edge
    finally:
        edge.proc.terminate()
        edge.proc.wait(10)


def test_https_serves_lorebase_with_hsts_and_http_redirects_to_it(edge):
    with edge.client() as client:
        r = client.get("/health")
        assert r.status_code == 200 and r.json() == {"redis": "ok"}
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert r.headers["server"] == "nginx"  # server_tokens off: no version
        assert r.headers["content-security-policy"]  # lorebase's own headers come through
    r = httpx.get(edge.http + "/notes?x=1", headers={"host": "localhost"}, timeout=10)
    assert r.status_code == 301
    assert r.headers["location"] == f"https://localhost:{edge.https_port}/notes?x=1"


def test_the_https_redirect_goes_to_the_configured_name_whatever_the_host_header(edge):
    for host in ("evil.example", "localhost.evil.example", f"evil.example:{edge.https_port}"):
        r = httpx.get(edge.http + "/notes?x=1", headers={"host": host}, timeout=10)
        assert r.status_code == 301, (host, r.status_code)
        assert r.headers["location"] == f"https://localhost:{edge.https_port}/notes?x=1", host


def test_the_site_refuses_a_domain_that_is_not_a_host_name(lore):
    for domain in ("evil.example; return 200", "a b", "x$host", "-x.example", ""):
        done = lorebase_cmd(lore, "nginx", f"--domain={domain}")
        assert done.returncode == 2 and "not a host name" in done.stderr, (domain, done.stderr)
        assert not done.stdout


def test_an_upload_over_the_limit_is_413_from_nginx_in_lorebases_shape(edge):
    # the limit is FILE_LIMIT (100000) plus 64 KiB for the multipart wrapping
    context = ssl.create_default_context(cafile=str(edge.cert))
    with socket.create_connection(("127.0.0.1", edge.https_port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"POST /files HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=x\r\n"
                    b"content-length: 200000\r\n\r\n")
        reply = tls.recv(65536)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/json" in head and body.strip() == b'{"error":"size"}'
    assert b"content-security-policy" not in head.lower()  # nginx's answer: lorebase never saw it


def test_a_client_cannot_choose_the_address_lorebase_limits(edge):
    """LOGIN_FAILS_PER_IP is 3: wrong logins that each claim another address in X-Real-IP and
    X-Forwarded-For still count against the one nginx saw."""
    time.sleep(1.5)  # the /auth/ rate of an earlier test has passed
    statuses = []
    with edge.client() as client:
        for n in range(4):
            spoof = {"x-real-ip": f"203.0.113.{n}", "x-forwarded-for": f"198.51.100.{n}, 203.0.113.{n}"}
            r = client.post("/auth/login", json={"username": f"ng_nobody{n}", "password": "not-the-password-9"},
                            headers=spoof)
            statuses.append((r.status_code, r.json().get("error"), "content-security-policy" in r.headers))
            time.sleep(0.6)  # under nginx's /auth/ rate: these are lorebase's answers
    assert statuses[:3] == [(403, "auth", True)] * 3, statuses
    assert statuses[3] == (429, "rate", True), statuses  # lorebase's 429, under 127.0.0.1


def test_a_slow_client_is_cut_off_while_others_are_served(edge):
    """A head that never ends: nginx closes it after HEADER_TIMEOUT (2 s here); /health is
    answered all along."""
    context = ssl.create_default_context(cafile=str(edge.cert))
    raw = socket.create_connection(("127.0.0.1", edge.https_port))
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.settimeout(0.5)
    try:
        tls.sendall(b"GET /health HTTP/1.1\r\nhost: local")  # and never the rest
        deadline = time.monotonic() + 20
        with edge.client() as client:
            while True:
                assert client.get("/health").status_code == 200  # others are served meanwhile
                try:
                    tls.recv(4096)  # nothing, or a 408, then the close
                    break
                except TimeoutError:
                    pass
                except (ssl.SSLError, OSError):
                    break
                assert time.monotonic() < deadline, "the slow client was never cut off"
    finally:
        tls.close()


def test_the_web_clients_files_come_from_nginx_with_etags(edge):
    with edge.client() as client:
        r = client.get("/static/app.js")
        assert r.status_code == 200 and b"function" in r.content
        assert r.headers["etag"] and r.headers["last-modified"]  # nginx's static module
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["strict-transport-security"]
        again = client.get("/static/app.js", headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/static/nothing-here.js").status_code == 404
        # the admin page's chart library, a folder down: the same location serves it
        lib = client.get("/static/vendor/uplot/uPlot.iife.min.js")
        assert lib.status_code == 200 and b"uPlot" in lib.content, lib.status_code
        assert "javascript" in lib.headers["content-type"] and lib.headers["etag"], lib.headers
        assert lib.headers["x-content-type-options"] == "nosniff"


def test_auth_requests_past_the_rate_get_429_as_json_from_nginx(edge):
    """NGINX_AUTH_RATE 2/s with a burst of 8: 30 requests at once to /auth/ get some 429s."""
    with edge.client() as client:
        replies = [client.get("/auth/csrf") for _ in range(30)]
    refused = [r for r in replies if r.status_code == 429]
    assert refused and len(refused) >= 30 - 8 - 3, [r.status_code for r in replies]
    assert all(r.json() == {"error": "rate"} and r.headers["content-type"] == "application/json"
               and "content-security-policy" not in r.headers for r in refused)
    assert all(r.status_code in (403, 429) for r in replies)  # the rest: lorebase's 403 nocookie
