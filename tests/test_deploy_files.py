"""The files deploy/ installs on a box, checked by the tools that will read them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .lore import ROOT

UNIT = ROOT / "deploy" / "lorebase.service"


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path):
    """`systemd-analyze verify` (it wants ExecStart to exist: this checkout's lorebase stands in
    for the release's)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    lorebase = Path(sys.executable).parent / "lorebase"
    unit = tmp_path / "lorebase.service"
    unit.write_text(UNIT.read_text().replace("/opt/lorebase/current/.venv/bin/lorebase", str(lorebase)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_file_server_unit_passes_systemd_analyze_verify_and_runs_the_files_role(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    text = (ROOT / "deploy" / "lorebase-files.service").read_text()
    assert "ExecStart=/opt/lorebase/current/.venv/bin/lorebase serve prod --role files" in text
    assert "ExecReload" not in text  # one process, no rolling restart: SIGHUP would end it
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/lorebase"):
        assert hardening in text, hardening
    unit = tmp_path / "lorebase-files.service"
    lorebase = Path(sys.executable).parent / "lorebase"
    unit.write_text(text.replace("/opt/lorebase/current/.venv/bin/lorebase", str(lorebase)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_unit_reloads_with_sighup_and_outwaits_the_shutdown_grace():
    text = UNIT.read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "ExecStart=/opt/lorebase/current/.venv/bin/lorebase serve prod" in text
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                      "ReadWritePaths=/var/lib/lorebase"):
        assert hardening in text, hardening
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    from lorebase import config

    prod = config.load("prod", {"LOREBASE_COOKIE_SECRET": "x" * 40, "LOREBASE_MAIL_URL": "smtp://127.0.0.1:25",
                                "LOREBASE_SECRET_FILE": "/nonexistent"})
    assert stop > float(prod.SHUTDOWN_GRACE) + 10
