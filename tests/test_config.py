"""Settings: LOREBASE_* overrides (checked and coerced), the prod refusal of a missing or
weak COOKIE_SECRET, `lorebase config` with secrets masked, and overrides reaching a
running server (body limit, error-report rate, workers, stream cap)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorebase.config import DEFAULTS, PER_ENV, Config

from .lore import ROOT, Lorebase, free_port, wait_for
from .support import JSON_TYPE, assert_error, client_ip, post_json, wait_workers

STRONG = "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ij1KlMnOpQrSt"  # 43 bytes, for tests only
MAIL = "smtp://mail.example.test:25"  # prod needs one; set so that only the secret is at fault


def run(tmp: Path, *argv: str, timeout: float = 20, **overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m lorebase ARGV` with only the LOREBASE_* variables given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")}
    env.update({"LOREBASE_SECRET_FILE": str(tmp / "no-secret.py"), "LOREBASE_DATA_DIR": str(tmp / "data"),
                "LOREBASE_PORT": str(free_port())})
    env.update({f"LOREBASE_{k}": v for k, v in overrides.items()})
    return subprocess.run([sys.executable, "-m", "lorebase", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def config(tmp: Path, env: str = "dev", **overrides: str) -> dict[str, Any]:
    out = run(tmp, "config", env, **overrides)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- prod refuses weak secrets -----------------------------------------------------------


def test_serve_prod_without_cookie_secret_exits_non_zero_naming_it(tmp_path):
    out = run(tmp_path, "serve", "prod", MAIL_URL=MAIL)
    assert out.returncode != 0
    assert "COOKIE_SECRET" in out.stderr
    assert not (tmp_path / "data" / "redis").exists()  # refused before starting anything


def test_serve_prod_with_a_short_cookie_secret_exits_non_zero_naming_it(tmp_path):
    out = run(tmp_path, "serve", "prod", COOKIE_SECRET="x" * 31, MAIL_URL=MAIL)
    assert out.returncode != 0
    assert "COOKIE_SECRET" in out.stderr
    assert "x" * 31 not in out.stderr + out.stdout


@pytest.mark.parametrize("weak", ["changeme", "secret", "lorebase", "   "])
def test_serve_prod_with_a_default_cookie_secret_exits_non_zero_naming_it(tmp_path, weak):
    out = run(tmp_path, "serve", "prod", COOKIE_SECRET=weak, MAIL_URL=MAIL)
    assert out.returncode != 0
    assert "COOKIE_SECRET" in out.stderr


def test_prod_secret_from_the_secret_file_is_accepted(tmp_path):
    secret_file = tmp_path / "secret.py"
    secret_file.write_text(f"COOKIE_SECRET = {STRONG!r}\n")
    settings = config(tmp_path, "prod", SECRET_FILE=str(secret_file), MAIL_URL=MAIL)
    assert settings["COOKIE_SECRET"] == "***"


@pytest.mark.parametrize("secret", ["", "changeme", "x" * 31])
@pytest.mark.parametrize("argv", [("serve", "dev"), ("serve", "dev", "--role", "files")])
def test_a_file_server_or_its_client_without_a_strong_files_secret_exits_2_naming_it(tmp_path, secret, argv):
    """FILES_SECRET in every environment: with FILES_URL set (an API node) or for --role files."""
    out = run(tmp_path, *argv, FILES_URL="http://127.0.0.1:9", FILES_SECRET=secret)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "FILES_SECRET" in out.stderr
    assert secret not in out.stderr + out.stdout or not secret
    assert not (tmp_path / "data" / "redis").exists() and not (tmp_path / "data" / "files").exists()


@pytest.mark.parametrize("url", ["ftp://10.0.0.5:8081", "http://", "http://10.0.0.5:8081/files", "10.0.0.5:8081",
                                 "http://user:pw@10.0.0.5:8081", "http://10.0.0.5:8081?x=1"])
def test_a_files_url_that_is_not_http_host_port_exits_2_naming_it(tmp_path, url):
    out = run(tmp_path, "serve", "dev", FILES_URL=url, FILES_SECRET=STRONG)
    assert out.returncode == 2 and "FILES_URL" in out.stderr, (out.stdout, out.stderr)


def test_the_files_secret_is_masked_and_a_file_server_with_s3_needs_redis(tmp_path):
    settings = config(tmp_path, FILES_URL="http://10.0.0.5:8081", FILES_SECRET=STRONG)
    assert settings["FILES_SECRET"] == "***" and settings["FILES_URL"] == "http://10.0.0.5:8081"
    out = run(tmp_path, "serve", "dev", "--role", "files", FILES_SECRET=STRONG, S3_BUCKET="b", S3_TRASH_BUCKET="t")
    assert out.returncode == 2 and "REDIS_URL" in out.stderr, (out.stdout, out.stderr)


def test_a_prod_file_server_needs_its_secret_not_the_api_ones(tmp_path):
    """--role files in prod: FILES_SECRET is its one secret (no cookie, no mail of its own)."""
    out = run(tmp_path, "serve", "prod", "--role", "files", FILES_SECRET="y" * 31)
    assert out.returncode == 2 and "FILES_SECRET" in out.stderr, (out.stdout, out.stderr)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lorebase", "serve", "prod", "--role", "files"], cwd=ROOT, env={
        **{k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")},
        "LOREBASE_SECRET_FILE": str(tmp_path / "no-secret.py"), "LOREBASE_DATA_DIR": str(tmp_path / "data"),
        "LOREBASE_FILES_SECRET": STRONG, "LOREBASE_FILES_PORT": str(port), "LOREBASE_BEAT_EVERY": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/blobs", headers={"x-files-secret": STRONG},
                                   timeout=2).status_code == 200, 20, 0.05, "the prod file server")
        assert not (tmp_path / "data" / "dev_cookie_secret").exists()
        assert not (tmp_path / "data" / "backup_key").exists()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


@pytest.mark.parametrize("key", [None, "changeme", "k" * 31])
def test_prod_with_s3_backups_refuses_a_missing_default_or_short_backup_key(tmp_path, key):
    """Backups in S3 are sealed with BACKUP_KEY: without a real one they could be read, or
    planted, by anyone holding the S3 keys, or not restore on a new box."""
    extra = {} if key is None else {"BACKUP_KEY": key}
    out = run(tmp_path, "serve", "prod", COOKIE_SECRET=STRONG, MAIL_URL=MAIL, S3_BUCKET="b", **extra)
    assert out.returncode == 2 and "BACKUP_KEY" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert key is None or key not in out.stderr
    assert config(tmp_path, "prod", COOKIE_SECRET=STRONG, MAIL_URL=MAIL)["BACKUP_KEY"] == ""  # no S3: not needed
    assert not (tmp_path / "data" / "backup_key").exists(), "reading the settings makes up no key"


def test_a_file_server_with_s3_needs_no_backup_key(tmp_path, monkeypatch):
    """--role files takes no backup: prod with S3 and no BACKUP_KEY is its normal setting."""
    from lorebase import config as configmod

    monkeypatch.setenv("LOREBASE_SECRET_FILE", str(tmp_path / "no-secret.py"))
    loaded = configmod.load("prod", {"LOREBASE_FILES_SECRET": STRONG, "LOREBASE_S3_BUCKET": "b",
                                     "LOREBASE_REDIS_URL": "redis://127.0.0.1:1/0",
                                     "LOREBASE_DATA_DIR": str(tmp_path / "data")}, role="files")
    assert loaded.BACKUP_KEY == "" and not (tmp_path / "data").exists()


def test_environment_wins_over_the_secret_file(tmp_path):
    secret_file = tmp_path / "secret.py"
    secret_file.write_text("COOKIE_SECRET = 'short'\n")
    out = run(tmp_path, "config", "prod", SECRET_FILE=str(secret_file), MAIL_URL=MAIL)
    assert out.returncode != 0 and "COOKIE_SECRET" in out.stderr
    settings = config(tmp_path, "prod", SECRET_FILE=str(secret_file), COOKIE_SECRET=STRONG, MAIL_URL=MAIL)
    assert settings["COOKIE_SECRET"] == "***"


def test_secret_file_with_an_unknown_key_is_refused_naming_it(tmp_path):
    secret_file = tmp_path / "secret.py"
    secret_file.write_text(f"COOKIE_SECRET = {STRONG!r}\nCOOKIE_SECRT = 'typo'\n")
    out = run(tmp_path, "config", "prod", SECRET_FILE=str(secret_file), MAIL_URL=MAIL)
    assert out.returncode != 0
    assert "COOKIE_SECRT" in out.stderr


# -- overrides ---------------------------------------------------------------------------


def test_environment_variables_override_settings(tmp_path):
    settings = config(tmp_path, PORT="4321", WORKERS="3", HOST="0.0.0.0", JSON_LIMIT="5000",
                      REDIS_TIMEOUT="0.25", TRUSTED_PROXIES="10.0.0.1, 10.0.0.2", BASE_URL="https://x.test/")
    assert settings["PORT"] == 4321
    assert settings["WORKERS"] == 3
    assert settings["HOST"] == "0.0.0.0"
    assert settings["JSON_LIMIT"] == 5000
    assert settings["REDIS_TIMEOUT"] == 0.25
    assert settings["TRUSTED_PROXIES"] == ["10.0.0.1", "10.0.0.2"]
    assert settings["BASE_URL"] == "https://x.test"
    assert settings["DATA_DIR"] == str(tmp_path / "data")


def test_prod_differs_from_dev_only_where_configured(tmp_path):
    dev = config(tmp_path, "dev")
    prod = config(tmp_path, "prod", COOKIE_SECRET=STRONG, MAIL_URL=MAIL)
    assert prod["TRUSTED_PROXIES"] == ["127.0.0.1", "::1"]
    assert dev["TRUSTED_PROXIES"] == []
    assert prod["JSON_LIMIT"] == dev["JSON_LIMIT"] and prod["COOKIE_NAME"] == dev["COOKIE_NAME"]


@pytest.mark.parametrize(("key", "value"), [("PORT", "abc"), ("PORT", "70000"), ("PORT", "0"),
                                            ("WORKERS", "two"), ("REDIS_TIMEOUT", "soon"),
                                            ("REDIS_APPENDFSYNC", "never")])
def test_invalid_override_exits_non_zero_naming_the_key(tmp_path, key, value):
    out = run(tmp_path, "serve", **{key: value})
    assert out.returncode != 0
    assert key in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_environment_is_refused(tmp_path):
    out = run(tmp_path, "config", "staging")
    assert out.returncode != 0
    assert "staging" in out.stderr


# -- lorebase config ---------------------------------------------------------------------


def test_config_command_prints_json_with_secrets_masked(tmp_path):
    out = run(tmp_path, "config", "prod", COOKIE_SECRET=STRONG, MAIL_URL=MAIL, S3_SECRET_KEY="S3SECRETVALUE",
              S3_BUCKET="b", S3_ACCESS_KEY="AKIAEXAMPLE", BACKUP_KEY="BACKUPKEYVALUE" + "b" * 20)
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert settings["COOKIE_SECRET"] == "***"
    assert settings["S3_SECRET_KEY"] == "***" and settings["BACKUP_KEY"] == "***"
    assert STRONG not in out.stdout + out.stderr and "BACKUPKEYVALUE" not in out.stdout + out.stderr
    assert "S3SECRETVALUE" not in out.stdout + out.stderr


def test_config_command_masks_the_generated_dev_secret(tmp_path):
    settings = config(tmp_path)
    assert settings["COOKIE_SECRET"] == "***"
    generated = (tmp_path / "data" / "dev_cookie_secret").read_text().strip()
    assert len(generated) >= 32
    out = run(tmp_path, "config")
    assert generated not in out.stdout


def test_config_command_masks_passwords_in_urls(tmp_path):
    out = run(tmp_path, "config", REDIS_URL="redis://:REDISPASSWORD@10.0.0.5:6380/2",
              MAIL_URL="smtp://mailer:MAILPASSWORD@smtp.example.test:587")
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert "REDISPASSWORD" not in out.stdout
    assert "MAILPASSWORD" not in out.stdout
    assert "10.0.0.5:6380" in settings["REDIS_URL"]  # the rest stays readable
    assert "smtp.example.test" in settings["MAIL_URL"]


# -- the declared types -----------------------------------------------------------------


def _declared_type_fits(hint: Any, value: Any) -> bool:
    if isinstance(value, list):
        return hint == list[str] and all(isinstance(item, str) for item in value)
    return hint is type(value)  # exactly: a bool is no int here, an int no float


def test_config_declares_every_key_with_the_type_of_its_default():
    """`config.PORT` is an int to a type checker because Config declares it: the declarations
    and DEFAULTS (and the per-environment values) must not drift apart."""
    hints = typing.get_type_hints(Config)
    # declared ahead of its default, which the extension seam adds to DEFAULTS (issue 18)
    ahead = {"APPS"} - set(DEFAULTS)
    assert set(hints) - {"ENV"} - ahead == set(DEFAULTS)
    wrong = {key: (hints[key], value) for key, value in DEFAULTS.items() if not _declared_type_fits(hints[key], value)}
    assert wrong == {}
    for values in PER_ENV.values():
        assert {k: v for k, v in values.items() if not _declared_type_fits(hints[k], v)} == {}


# -- overrides reach a running server ----------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lorebase]:
    lore = Lorebase(tmp_path_factory.mktemp("tuned") / "data", JSON_LIMIT=1000, ERROR_REPORTS_PER_MINUTE=3,
                    WORKERS=1, LOG_STREAM_MAX=20, TRUSTED_PROXIES="127.0.0.1")
    lore.start()
    yield lore
    assert lore.stop() == 0


@pytest.fixture()
def tuned_client(tuned: Lorebase) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tuned.url, timeout=10) as client:
        yield client


def test_port_and_workers_overrides_apply(tuned):
    assert tuned.events("start")[0]["port"] == tuned.port
    assert tuned.events("start")[0]["workers"] == 1
    assert len(wait_workers(tuned, 1)) == 1


def test_json_limit_override_applies_with_content_length(tuned_client):
    body = json.dumps({"message": "limit"}).encode()
    assert post_json(tuned_client, "/error", body.ljust(1000)).status_code == 200
    r = post_json(tuned_client, "/error", body.ljust(1001))
    assert r.request.headers["content-length"] == "1001"
    assert_error(r, 413, "size")


def test_json_limit_override_applies_when_chunked(tuned_client):
    head = json.dumps({"message": "limit"}).encode()
    ok = tuned_client.post("/error", content=iter([head, b" " * (1000 - len(head))]),
                           headers={**JSON_TYPE, "x-real-ip": client_ip()})
    assert ok.request.headers.get("transfer-encoding") == "chunked"
    assert ok.status_code == 200, ok.text
    over = tuned_client.post("/error", content=iter([head, b" " * 500, b" " * (501 - len(head))]),
                             headers={**JSON_TYPE, "x-real-ip": client_ip()})
    assert over.request.headers.get("transfer-encoding") == "chunked"
    assert_error(over, 413, "size")


def test_error_report_rate_override_applies(tuned_client):
    ip = client_ip()
    for i in range(3):
        assert post_json(tuned_client, "/error", {"message": f"report {i}"}, ip).status_code == 200
    r = post_json(tuned_client, "/error", {"message": "report 3"}, ip)
    assert_error(r, 429, "rate")
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_log_stream_is_capped(tuned, tuned_client):
    for i in range(400):
        assert tuned_client.get(f"/capped/{i}").status_code == 404
    redis = tuned.redis()

    def last_written() -> bool:
        return any('"/capped/399"' in f["json"] for _, f in redis.xrevrange("log", count=5))

    wait_for(last_written, what="the last reply in the stream")
    # MAXLEN ~ 20: Redis trims whole nodes of up to 100 entries, so a little more stays
    assert redis.xlen("log") <= 20 + 100
