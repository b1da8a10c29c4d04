"""SECURITY.md I1: schemathesis over lorebase's own /openapi.json (its coverage, fuzzing and
stateful phases), run as a user would run it: the CLI, over HTTP, against a lorebase of
its own. No reply may be a 5xx, and every reply must match the document: its status
codes, content types and bodies. A fixed seed keeps the run the same in CI.

Two runs: anonymous over every route (the public ones, and every gate's refusals), then
logged in over the routes that do not end the session the run needs (logout, destroy,
change password and the admin routes end or need other sessions; their own tests cover
them)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .identity_support import Users, dedicated
from .lore import Lorebase

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# routes that end the fuzzer's session, and those only an admin may use (403 for it)
SESSION_ENDERS = r"^/(auth/(logout|destroy|changePassword)|admin/.*|metrics)$"


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "fuzz") as lore:
        yield lore


def schemathesis(lore: Lorebase, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "schemathesis"
    argv = [str(cli), "run", f"{lore.url}/openapi.json", "--seed", "20261128", "--max-examples", "25",
            "--checks", CHECKS, "--generation-database", "none", "--no-color", *args]
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600)


def test_anonymous_requests_to_every_route_match_the_document(lore, tmp_path):
    done = schemathesis(lore, tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "Tested: 36" in done.stdout, done.stdout[-3000:]


def test_logged_in_requests_match_the_document(lore, mail, tmp_path):
    with Users(lore, mail) as made:
        api = made.session(made.new("z_fuzz", verified=True))
        done = schemathesis(lore, tmp_path, "--header", f"Cookie: lorebase={api.cookie}",
                            "--header", f"X-CSRF-Token: {api.csrf}", "--exclude-path-regex", SESSION_ENDERS)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "Authentication failed" not in done.stdout, done.stdout[-3000:]  # the session lived throughout
        assert api.get("/auth/csrf").status_code == 200
