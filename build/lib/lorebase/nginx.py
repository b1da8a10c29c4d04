"""The nginx site in front of lorebase (seed: Architecture B, HTTPS), rendered from
lorebase's own config so the two never drift: the upstream from NGINX_NODES (the API nodes
of Architecture C and beyond) or HOST/PORT (this node), the body limit
from FILE_LIMIT, the timeouts from HEADER_TIMEOUT/BODY_TIMEOUT, the web client's files from
the installed package. `lorebase nginx [ENV] --domain D` prints it.

What it does: HTTP answers only certbot's challenge and redirects the rest to HTTPS; HTTPS
with HSTS and no version in `Server`; X-Real-IP and X-Forwarded-For set to the peer's
address, overwriting whatever the client sent (lorebase rate-limits that address, and trusts
it only from TRUSTED_PROXIES); uploads streamed to lorebase as they arrive (no request
buffering); a per-address request rate on /auth/; the errors nginx makes itself (413, 429,
502-504) in lorebase's JSON shape; the web client's static files served by nginx, with
the headers lorebase would have sent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .http import SECURITY_HEADERS
from .routes.files import MULTIPART_OVERHEAD
from .routes.web import WEB

# the headers lorebase itself sends with the web client's script and style (the page stays lorebase's)
STATIC_HEADERS = [(name.decode(), value.decode()) for name, value in SECURITY_HEADERS]
HSTS = "max-age=63072000; includeSubDomains"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")  # what --domain may be


def render(config: Any, domain: str, cert: str | None = None, key: str | None = None,
           http_port: int = 80, https_port: int = 443, static: Path | None = None, listen: str = "") -> str:
    """The site file: what provision writes to /etc/nginx/sites-available/lorebase-<env>.
    `listen`: one address to listen on (default: every IPv4 and IPv6 address)."""
    if not DOMAIN.match(domain):
        raise ValueError(f"--domain {domain!r} is not a host name")
    env = config.ENV
    name = f"lorebase_{env}"
    cert = cert or f"/etc/letsencrypt/live/{domain}/fullchain.pem"
    key = key or f"/etc/letsencrypt/live/{domain}/privkey.pem"
    static_dir = str(static or WEB).rstrip("/") + "/"
    host = str(config.HOST)
    upstream = f"[{host}]:{config.PORT}" if ":" in host else f"{host}:{config.PORT}"
    nodes = [str(n).strip() for n in config.NGINX_NODES if str(n).strip()] or [upstream]
    # a node that fails (refused, reset, silent) is left alone for fail_timeout
    servers = "\n".join(f"    server {node} max_fails=1 fail_timeout=5s;" for node in nodes)
    body_limit = int(config.FILE_LIMIT) + MULTIPART_OVERHEAD
    # to the configured name, never the request's Host: the HTTP block is the default server of
    # its port, so any Host reaches it, and a redirect built from it sends the client anywhere
    to_https = f"https://{domain}$request_uri" if https_port == 443 else f"https://{domain}:{https_port}$request_uri"
    rate, burst = int(config.NGINX_AUTH_RATE), int(config.NGINX_AUTH_BURST)
    headers = "\n".join(f"        add_header {k} \"{v}\" always;" for k, v in STATIC_HEADERS)
    proxy = f"""        proxy_pass http://{name};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        # the peer's address, overwriting the client's own headers: lorebase limits by it
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_request_buffering off;  # an upload reaches lorebase as it arrives
        proxy_read_timeout 60s;
        # a node that refuses, drops or never answers a request: the next node gets it, but
        # only if it is idempotent or was never sent (nginx does not resend a POST that
        # reached a node: it may have run there), within 2 tries and 10 s
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries 2;
        proxy_next_upstream_timeout 10s;
        proxy_connect_timeout 2s;"""
    return f"""# lorebase ({env}) behind nginx: written by `lorebase nginx {env} --domain {domain}`.
# Render it again after changing lorebase's config (PORT, FILE_LIMIT, timeouts).

upstream {name} {{
{servers}
    keepalive 32;
}}

limit_req_zone $binary_remote_addr zone={name}_auth:10m rate={rate}r/s;

server {{
{_listen(listen, http_port, "")}
    server_name {domain};
    server_tokens off;

    location /.well-known/acme-challenge/ {{
        root /var/www/letsencrypt;  # certbot --webroot
    }}
    location / {{
        return 301 {to_https};
    }}
}}

server {{
{_listen(listen, https_port, " ssl")}
    server_name {domain};
    server_tokens off;

    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:{name}_tls:10m;
    ssl_session_timeout 1d;

    add_header Strict-Transport-Security "{HSTS}" always;

    client_max_body_size {body_limit};
    client_header_timeout {_seconds(config.HEADER_TIMEOUT)};
    client_body_timeout {_seconds(config.BODY_TIMEOUT)};
    keepalive_timeout 65s;
    send_timeout 60s;

    # the errors nginx answers itself, in lorebase's shape
    error_page 413 @size;
    error_page 429 @rate;
    error_page 502 503 504 =503 @down;
    location @size {{
        default_type application/json;
        add_header Strict-Transport-Security "{HSTS}" always;
        add_header Connection close always;
        return 413 '{{"error":"size"}}';
    }}
    location @rate {{
        default_type application/json;
        add_header Strict-Transport-Security "{HSTS}" always;
        add_header Retry-After 1 always;
        return 429 '{{"error":"rate"}}';
    }}
    location @down {{
        default_type application/json;
        add_header Strict-Transport-Security "{HSTS}" always;
        add_header Retry-After 5 always;
        return 503 '{{"error":"unavailable"}}';
    }}

    location /static/ {{
        alias {static_dir};
        etag on;
        add_header Cache-Control "no-cache" always;
        add_header Strict-Transport-Security "{HSTS}" always;
{headers}
    }}

    location /auth/ {{
        limit_req zone={name}_auth burst={burst} nodelay;
        limit_req_status 429;
{proxy}
    }}

    location / {{
{proxy}
    }}
}}
"""


def _listen(address: str, port: int, ssl: str) -> str:
    if address:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return f"    listen {where}{ssl};"
    return f"    listen {port}{ssl};\n    listen [::]:{port}{ssl};"


def _seconds(value: Any) -> str:
    return f"{max(1, round(float(value)))}s"
