"""lorebase.testing as an application uses it: a project of its own (outside the repository)
whose tests name the plugin in their pytest options and get a running lorebase, a browser
that makes accounts through the captured mail, and S3 on moto when they ask for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PYPROJECT = """\
[tool.pytest.ini_options]
addopts = "-p lorebase.testing -W error"
"""

TESTS = '''\
from lorebase.testing import S3_BUCKET, Client, wait_for


def test_an_account_made_through_the_mail_holds_a_session(client, mail):
    client.account("ada")
    assert client.get("/auth/me").json()["username"] == "ada"
    assert mail.to("ada@example.com"), "the verification mail went to the sink"


def test_a_new_client_has_no_session(client):
    assert client.get("/auth/me").status_code == 403


def test_a_state_changing_request_carries_the_csrf_token(client):
    client.account("bea")
    assert client.logout().status_code == 200
    assert client.get("/auth/me").status_code == 403


def test_files_of_lore_s3_reach_the_bucket(lore_s3, s3, mail):
    with Client(lore_s3, mail) as browser:
        browser.account("cid")
        r = browser.post("/files", files={"file": ("a.txt", b"mirrored bytes", "text/plain")})
        assert r.status_code == 200, r.text
    bucket = s3.client()
    keys = wait_for(lambda: [o["Key"] for o in bucket.list_objects_v2(Bucket=S3_BUCKET).get("Contents", [])],
                    30, 0.1, "the upload in the bucket")
    assert bucket.get_object(Bucket=S3_BUCKET, Key=keys[0])["Body"].read() == b"mirrored bytes"
'''


def test_a_project_tests_itself_with_the_plugin(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "test_app.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LOREBASE_"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout, done.stdout[-2000:]
