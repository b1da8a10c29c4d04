"""The docs' generated tables (an MkDocs hook, mkdocs.yml `hooks:`): the route table and the
error-code table from the OpenAPI document of the app's routes, the settings table from
`lorebase.config.DEFAULTS`. A page asks for one with a marker line:

    <!-- lorebase:routes -->    every route: section, summary, payload, its own error codes
    <!-- lorebase:errors -->    every error code the document declares, and who answers it
    <!-- lorebase:config -->    every setting: dev default, prod value, range, its comment in config.py

Made at build time, so they are never committed and never stale. The hook also warns (which
fails `mkdocs build --strict`) where the hand-written pages fall behind the code: a route that
using/routes.md never names, an error code without a meaning in using/errors.md's table, a
setting named in operating/config.md's notes that no longer exists.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import logging
import re
import tempfile
import tokenize
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.reference")  # its warnings fail `mkdocs build --strict`
REPO = Path(__file__).resolve().parents[2]

MARKER = re.compile(r"^<!-- lorebase:(\w+) -->$", re.MULTILINE)
METHODS = ("get", "post", "put", "patch", "delete")
# the codes the chain gives every route of a kind (using/chain.md), left out of each row
COMMON = {"notfound", "method", "url", "server", "redis", "json", "validation", "timeout", "size", "type",
          "nocookie", "tampered", "session", "csrf", "origin", "admin"}


def app_routes() -> list[Any]:
    """The routes the docs describe: the dev app's chain, as `lorebase openapi dev` builds it
    for this repo's project (the chain marks which routes are behind the gatekeeper). The one
    place to change when the way routes are gathered changes."""
    from lorebase.app import create_app
    from lorebase.config import load

    with tempfile.TemporaryDirectory() as data_dir:  # none of the reader's environment, no ./data made
        environ = {"LOREBASE_DATA_DIR": data_dir, "LOREBASE_PROJECT": str(REPO)}
        return list(create_app(load("dev", environ=environ, check=False)).routes)


@cache
def openapi() -> dict[str, Any]:
    from lorebase import __version__
    from lorebase.openapi import document

    return document(app_routes(), "lorebase", __version__)


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) of every route, in the chain's order."""
    return [(method.upper(), path, op) for path, ops in openapi()["paths"].items()
            for method, op in ops.items() if method in METHODS]


def codes_of(op: dict[str, Any]) -> dict[int, list[str]]:
    """status → the error codes an operation declares (its responses' descriptions name them)."""
    return {int(status): re.findall(r"`([^`]+)`", response.get("description", ""))
            for status, response in op["responses"].items() if int(status) >= 400}


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref:
        return openapi()["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]
    return ref_or_schema


def payload(op: dict[str, Any]) -> str:
    parts = []
    for param in op.get("parameters", []):
        if param["in"] == "query":
            parts.append(f"`?{param['name']}`")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        if media != "application/json":
            parts.append(media)
            continue
        schema = _schema(content["schema"])
        required = set(schema.get("required", []))
        for name in schema.get("properties", {}):
            parts.append(f"`{name}`" if name in required else f"`{name}`?")
    return ", ".join(parts) or "—"


def routes_table() -> str:
    rows = ["| route | section | what | payload (`?` optional) | its own error codes |", "|---|---|---|---|---|"]
    for method, path, op in operations():
        own = [f"{status} " + ", ".join(f"`{c}`" for c in codes if c not in COMMON)
               for status, codes in sorted(codes_of(op).items()) if set(codes) - COMMON]
        rows.append(f"| `{method} {path}` | {op['tags'][0]} | {cell(op['summary'])} | {payload(op)} | "
                    f"{'; '.join(own) or '—'} |")
    return "\n".join(rows)


def _kinds() -> dict[str, set[str]]:
    """The groups of routes the chain treats alike, to name a code's routes in few words."""
    ops = operations()
    private = {f"{m} {p}" for m, p, op in ops if op["tags"][0] in ("private", "admin")}
    return {"every route": {f"{m} {p}" for m, p, _ in ops},
            "every POST route": {f"{m} {p}" for m, p, _ in ops if m == "POST"},
            "every route after the gatekeeper": private,
            "every POST route after the gatekeeper": {r for r in private if r.startswith("POST ")},
            "every admin route": {f"{m} {p}" for m, p, op in ops if op["tags"][0] == "admin"}}


def who(routes: set[str]) -> str:
    """A group's name where one fits (with at most six routes more), else the routes."""
    order = [f"{m} {p}" for m, p, _ in operations()]
    listed = sorted(routes, key=order.index)
    fits = [(name, group) for name, group in _kinds().items() if group <= routes and len(routes - group) <= 6]
    if not fits:
        return ", ".join(f"`{r}`" for r in listed)
    name, group = max(fits, key=lambda fit: len(fit[1]))
    more = [r for r in listed if r not in group]
    return name + (", and " + ", ".join(f"`{r}`" for r in more) if more else "")


def declared_codes() -> dict[tuple[int, str], set[str]]:
    """(status, code) → the routes that declare it."""
    found: dict[tuple[int, str], set[str]] = {}
    for method, path, op in operations():
        for status, codes in codes_of(op).items():
            for code in codes:
                found.setdefault((status, code), set()).add(f"{method} {path}")
    return found


def errors_table() -> str:
    rows = ["| status | code | answered by |", "|---|---|---|"]
    for (status, code), routes in sorted(declared_codes().items()):
        rows.append(f"| {status} | `{code}` | {who(routes)} |")
    return "\n".join(rows)


def settings() -> list[tuple[str, Any, str, str]]:
    """(key, value, how config.py writes it, comment) of every key of DEFAULTS, in config.py's
    order. The comment is the one ending the key's line, else the block of comment lines right
    above the key; "how it is written" only where it says more than the value (`7 * 86400`)."""
    from lorebase import config

    source = inspect.getsource(config)
    comments: dict[int, tuple[str, bool]] = {}  # line → (comment, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            alone = not token.line[:token.start[1]].strip()
            comments[token.start[0]] = (token.string.lstrip("#").strip(), alone)
    found: dict[str, tuple[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if not (isinstance(target, ast.Name) and target.id == "DEFAULTS" and isinstance(node.value, ast.Dict)):
            continue
        for key, value in zip(node.value.keys, node.value.values, strict=True):
            if not isinstance(key, ast.Constant) or value is None:
                continue
            end = value.end_lineno or value.lineno
            comment, alone = comments.get(end, ("", True))
            if alone:  # no comment at the end of the line: the block just above, if any
                block: list[str] = []
                line = key.lineno - 1
                while line in comments and comments[line][1]:
                    block.insert(0, comments[line][0])
                    line -= 1
                comment = " ".join(block)
            written = "" if isinstance(value, ast.Constant | ast.List) else ast.get_source_segment(source, value)
            found[str(key.value)] = (written or "", comment)
    return [(key, value, *found.get(key, ("", ""))) for key, value in config.DEFAULTS.items()]


def shown(value: Any) -> str:
    return f"`{value if isinstance(value, bool) else json.dumps(value)}`"


def config_table() -> str:
    from lorebase import config

    prod = getattr(config, "PER_ENV", {}).get("prod", {})
    ranges = getattr(config, "RANGES", {})
    rows = ["| key | default (dev) | prod | range | what (config.py) |", "|---|---|---|---|---|"]
    for key, value, written, comment in settings():
        default = shown(value)
        if isinstance(value, str):  # str(ROOT / "data"): not the path of the machine that built the docs
            default = f"`{written}`" if written else default
        elif written:
            default += f" ({cell(written)})"
        allowed = cell(str(ranges[key])) if key in ranges else ""
        in_prod = shown(prod[key]) if key in prod else ""
        rows.append(f"| `{key}` | {default} | {in_prod} | {allowed} | {cell(comment)} |")
    return "\n".join(rows)


TABLES = {"routes": routes_table, "errors": errors_table, "config": config_table}


def check_routes_page(markdown: str) -> None:
    """Every route of the app is named on using/routes.md (`GET /files/<id>`, or with `{id}`)."""
    for method, path, _ in operations():
        spelled = {path, re.sub(r"\{(\w+)\}", r"<\1>", path)}
        if not any(re.search(re.escape(f"{method} {p}") + r"(?![\w/])", markdown) for p in spelled):
            log.warning("using/routes.md does not describe the route %s %s", method, path)


def check_errors_page(markdown: str) -> None:
    """Every (status, code) the document declares has a row in the page's meanings table."""
    meant: set[tuple[int, str]] = set()
    for status, codes in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", markdown, re.MULTILINE):
        meant |= {(int(status), code) for code in re.findall(r"`([^`]+)`", codes)}
    for status, code in sorted(set(declared_codes()) - meant):
        log.warning("using/errors.md gives no meaning for %s `%s`", status, code)


def check_config_page(markdown: str) -> None:
    """Every key a row of the notes table names is a setting (a renamed key fails the build)."""
    from lorebase.config import DEFAULTS

    for first in re.findall(r"^\| ((?:`[A-Z][A-Z0-9_]*`(?:, )?)+) \|", markdown, re.MULTILINE):
        for key in re.findall(r"`([^`]+)`", first):
            if key not in DEFAULTS:
                log.warning("operating/config.md names %s, which is not a setting", key)


CHECKS = {"using/routes.md": check_routes_page, "using/errors.md": check_errors_page,
          "operating/config.md": check_config_page}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    check = CHECKS.get(page.file.src_uri)
    if check:
        check(markdown)

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            log.warning("%s: unknown table marker %s", page.file.src_uri, name)
            return match.group(0)
        # marked, so a test can tell the generated table from the hand-written ones
        return f'<div class="generated" data-table="{name}" markdown>\n\n{TABLES[name]()}\n\n</div>'

    return MARKER.sub(table, markdown)
