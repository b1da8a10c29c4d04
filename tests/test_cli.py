"""The command line a newcomer meets (issue 19): `lorebase admin add|remove|list` against a
running lorebase's Redis, then the admin routes over HTTP; a taken port, a mistyped LOREBASE_*
variable or config key, an out-of-range number, each refused at start in words; every
subcommand's --help; `lorebase nginx prod` without the server's secrets. Real processes."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorebase import cli
from lorebase.config import DEFAULTS, NOT_SETTINGS, PER_ENV, RANGES

from .identity_support import Users, assert_error, dedicated
from .lore import ROOT, Lorebase, free_port

STRONG = "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ij1KlMnOpQrSt"  # 43 bytes, for tests only


def run(tmp: Path, *argv: str, project: Path | None = None, **overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m lorebase ARGV` with only the LOREBASE_* variables given here (full names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOREBASE_")}
    env.update({"LOREBASE_SECRET_FILE": str(tmp / "no-secret.py"), "LOREBASE_DATA_DIR": str(tmp / "data"),
                "LOREBASE_PORT": str(free_port()), **overrides})
    if project is not None:
        env["LOREBASE_PROJECT"] = str(project)
    return subprocess.run([sys.executable, "-m", "lorebase", *argv], env=env, cwd=project or ROOT,
                          capture_output=True, text=True, timeout=30)


def refused(out: subprocess.CompletedProcess[str], code: int, *said: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "Errno" not in out.stderr, out.stderr
    for words in said:
        assert words in out.stderr, (words, out.stderr)


# -- lorebase admin ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lore(tmp_path_factory, mail) -> Iterator[Lorebase]:
    with dedicated(tmp_path_factory, mail, "cli", ADMINS="cli_cfg@example.com", WORKERS=1) as lore:
        yield lore


@pytest.fixture()
def users(lore, mail) -> Iterator[Users]:
    with Users(lore, mail) as made:
        yield made


def test_admin_add_opens_the_admin_routes_and_remove_refuses_the_last_admin(lore, users):
    ada, bob = users.new("cli_ada"), users.new("cli_bob")
    ada_api = users.session(ada)
    assert_error(ada_api.get("/admin/users"), 403, "admin")

    added = lore.command("admin", "add", "cli_ada")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().splitlines() == [
        "cli_ada is an admin now (the admin flag is set): /admin is theirs at their next request"]
    assert ada_api.get("/admin/users?q=cli_").status_code == 200

    refused(lore.command("admin", "remove", "cli_ada"), 1, "cli_ada is the last enabled admin", "nothing changed")
    assert ada_api.get("/admin/users?q=cli_").status_code == 200

    assert lore.command("admin", "add", "CLI_BOB ").returncode == 0
    listed = lore.command("admin", "list")
    assert listed.returncode == 0 and "cli_ada  cli_ada@example.com  (flag)" in listed.stdout, listed.stdout
    assert "cli_bob  cli_bob@example.com  (flag)" in listed.stdout

    removed = lore.command("admin", "remove", "cli_ada")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "cli_ada is no longer an admin (the admin flag is cleared)"
    assert_error(ada_api.get("/admin/users"), 403, "admin")
    refused(lore.command("admin", "remove", "cli_bob"), 1, "last enabled admin")
    assert lore.command("admin", "list").stdout.count("(flag)") == 1
    assert bob.name in lore.command("admin", "list").stdout
    # the audit has both changes, made by the command line
    flags = users.session(bob).get("/admin/logs?type=admin+flag&q=cli_ada").json()["events"]
    assert [(e["value"], e["stream"], e["by"].startswith("cli:")) for e in flags if e["user"] == "cli_ada"] == [
        (False, "audit", True), (True, "audit", True)]


def test_admin_remove_of_an_admin_of_admins_is_refused_naming_admins(lore, users):
    users.new("cli_cfg", verified=True)
    refused(lore.command("admin", "remove", "cli_cfg"), 1, "ADMINS", "nothing changed")
    assert "cli_cfg  cli_cfg@example.com  (ADMINS)" in lore.command("admin", "list").stdout


@pytest.mark.parametrize("verb", ["add", "remove"])
def test_admin_of_an_unknown_user_exits_2_naming_it(lore, verb):
    refused(lore.command("admin", verb, "cli_nobody"), 2, "no user 'cli_nobody'")


def test_admin_without_a_running_lorebase_says_to_start_it(tmp_path):
    refused(run(tmp_path, "admin", "add", "ada"), 2, "start `lorebase serve` first")


# -- refused at start ---------------------------------------------------------------------


def test_a_taken_port_names_the_address_and_the_setting(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run(tmp_path, "serve", LOREBASE_PORT=str(port), LOREBASE_WORKERS="1")
        refused(out, 1, f"port {port} on 127.0.0.1 is taken", "set PORT (or LOREBASE_PORT)")
        out = run(tmp_path, "serve", "--role", "files", LOREBASE_FILES_PORT=str(port), LOREBASE_FILES_SECRET=STRONG)
        refused(out, 1, f"port {port} on 127.0.0.1 is taken", "set FILES_PORT (or LOREBASE_FILES_PORT)")


def test_a_mistyped_variable_is_refused_naming_the_nearest_setting(tmp_path):
    out = run(tmp_path, "serve", LOREBASE_PROT="8080")
    refused(out, 2, "unknown setting LOREBASE_PROT: did you mean LOREBASE_PORT?")
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_the_variables_set_on_purpose_are_no_typos(tmp_path):
    mine = {name: "" for name in NOT_SETTINGS} | {"LOREBASE_PROJECT": str(ROOT),
                                                   "LOREBASE_SECRET_FILE": str(tmp_path / "no-secret.py")}
    out = run(tmp_path, "config", **mine)
    assert out.returncode == 0, out.stderr


def test_an_unknown_key_in_any_environments_dict_of_config_py_is_refused(tmp_path):
    (tmp_path / "config.py").write_text("WORKERS = 1\nPROD = {'WORKRES': 2}\n")
    refused(run(tmp_path, "config", "dev", project=tmp_path), 2, "unknown key WORKRES in PROD: did you mean WORKERS?")
    (tmp_path / "config.py").write_text("COOKIE_NAMES = 'x'\n")
    refused(run(tmp_path, "config", project=tmp_path), 2, "unknown key COOKIE_NAMES: did you mean COOKIE_NAME?")


@pytest.mark.parametrize(("key", "value", "said"), [
    ("WORKERS", "-5", "WORKERS must be 0 or more (0: one per CPU), got -5"),
    ("PORT", "70000", "PORT must be 1-65535, got 70000"),
    ("FILES_PORT", "0", "FILES_PORT must be 1-65535, got 0"),
    ("REDIS_TIMEOUT", "0", "REDIS_TIMEOUT must be above 0, got 0.0"),
    ("FILE_LIMIT", "-1", "FILE_LIMIT must be 0 or more, got -1"),
    ("BEAT_CPU", "101", "BEAT_CPU must be 0-100, got 101.0"),
])
def test_an_out_of_range_number_is_refused_with_its_range(tmp_path, key, value, said):
    refused(run(tmp_path, "serve", **{f"LOREBASE_{key}": value}), 2, said)


def test_every_numeric_setting_has_a_range_its_defaults_hold():
    numeric = {k for k, v in DEFAULTS.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert set(RANGES) == numeric
    for values in (DEFAULTS, *PER_ENV.values()):
        assert [k for k in numeric & set(values) if not RANGES[k].holds(values[k])] == []


# -- the commands' own words --------------------------------------------------------------


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return out.getvalue()


def test_every_subcommand_help_has_its_usage_and_a_description():
    commands = cli.parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    paths = [[name] for name in commands]
    paths += [[name, sub] for name, sp in commands.items() if sp._subparsers
              for sub in sp._subparsers._group_actions[0].choices]  # type: ignore[attr-defined]
    for path in paths:
        text = _help(*path)
        usage, _, rest = text.partition("\n\n")
        assert usage.startswith(f"usage: lorebase {' '.join(path)} "), text
        first = rest.split("\n\n")[0]
        assert not first.startswith(("positional arguments:", "options:")), f"no description:\n{text}"


def test_backup_help_prints_a_plain_usage_line_and_the_main_help_says_how_to_become_an_admin(tmp_path):
    out = run(tmp_path, "backup", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: lorebase backup [-h] [list] [{dev,prod}]\n")
    out = run(tmp_path, "--help")
    assert out.returncode == 0 and "lorebase admin add YOURNAME" in " ".join(out.stdout.split())


def test_nginx_prod_needs_no_cookie_secret_nor_mail(tmp_path):
    out = run(tmp_path, "nginx", "prod", "--domain", "cli.example.com")
    assert out.returncode == 0, out.stderr
    assert "server_name cli.example.com;" in out.stdout
    assert not (tmp_path / "data").exists()  # no secret made up for it either
