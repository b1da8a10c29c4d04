"""The documentation site (docs/, mkdocs.yml) builds with `--strict` (no broken link or anchor,
no route, error code or setting the hand-written pages fall behind on), and its generated
tables hold what the code has: every route `lorebase openapi` lists, every key of
`lorebase.config.DEFAULTS`, every error code lorebase answers with."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorebase.config import DEFAULTS

from .lore import ROOT

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The document as a user gets it, from the command (not from the docs' own hook)."""
    printed = subprocess.run([sys.executable, "-m", "lorebase", "openapi", "dev"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, check=True)
    return json.loads(printed.stdout)  # type: ignore[no-any-return]


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def generated(site: Path, name: str, table: str) -> str:
    """The HTML of the table the docs' hook made (inside its marked div), not of the hand-written ones."""
    found = re.search(f'<div class="generated" data-table="{table}">(.*?)</div>', page(site, name), re.DOTALL)
    assert found, f"{name} has no generated {table} table"
    return html.unescape(found.group(1))


def first_cells(table_html: str) -> set[str]:
    """What each row's first cell names: `<tr><td><code>X</code></td>` → X."""
    return set(re.findall(r"<tr>\s*<td><code>([^<]*)</code></td>", table_html))


def test_every_route_is_in_the_generated_route_reference(site: Path, openapi: dict[str, Any]) -> None:
    routes = {f"{method.upper()} {path}" for path, item in openapi["paths"].items() for method in item
              if method in METHODS}
    assert len(routes) > 40  # the built-ins and the notes example
    listed = first_cells(generated(site, "using/reference", "routes"))
    assert routes - listed == set()
    assert listed - routes == set()


def test_every_setting_is_in_the_generated_config_table(site: Path) -> None:
    table = generated(site, "operating/config", "config")
    assert set(DEFAULTS) - first_cells(table) == set()
    # with its range (a number's) and its comment in config.py beside it (REDIS_URL's says what empty means)
    assert re.search(r"<td><code>REDIS_URL</code></td>\s*<td><code>\"\"</code></td>\s*<td></td>\s*<td></td>\s*"
                     r"<td>empty: start an embedded redis-server", table)
    assert re.search(r"<td><code>WORKERS</code></td>\s*<td><code>0</code></td>\s*<td></td>\s*"
                     r"<td>0 or more \(0: one per CPU\)</td>", table)


def declared(openapi: dict[str, Any]) -> set[str]:
    return {code for item in openapi["paths"].values() for method, op in item.items() if method in METHODS
            for status, response in op["responses"].items() if int(status) >= 400
            for code in re.findall(r"`([^`]+)`", response["description"])}


def answered_in_source() -> set[str]:
    """Every code lorebase's source gives an error reply: ApiError(status, "code") and the
    hand-made bodies ({"error":"code"}, in nginx's site and the protocol)."""
    codes: set[str] = set()
    for source in (ROOT / "lorebase").rglob("*.py"):
        text = source.read_text()
        codes |= set(re.findall(r"\b[45]\d\d,\s*\"([a-z0-9]+)\"", text))
        codes |= set(re.findall(r"\\?\"error\\?\":\s*\\?\"([a-z0-9]+)", text))
    return codes


def test_every_error_code_is_documented(site: Path, openapi: dict[str, Any]) -> None:
    codes = declared(openapi)
    assert {"nocookie", "csrf", "validation", "lastadmin"} <= codes
    table = generated(site, "using/errors", "errors")
    listed = set(re.findall(r"<tr>\s*<td>\d{3}</td>\s*<td><code>([^<]*)</code></td>", table))
    assert codes - listed == set()  # the generated table: every code a route declares
    in_source = answered_in_source()
    assert {"maintenance", "length", "disconnect", "s3", "unavailable", "timeout"} <= in_source
    hand_written = page(site, "using/errors").split('<div class="generated"')[0]
    meant = {code for codes_cell in re.findall(r"<tr>\s*<td>\d{3}</td>\s*<td>(.*?)</td>", hand_written)
             for code in re.findall(r"<code>([^<]*)</code>", codes_cell)}
    assert (codes | in_source) - meant == set()  # each with its meaning, in the hand-written table
