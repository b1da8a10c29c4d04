"""Two lorebase checkouts side by side on one core: the ratio of their throughput.

    .venv/bin/python bench/pair.py --base ../base W2 W3 W4      # this checkout against ../base
    .venv/bin/python bench/pair.py --base . W2                   # A/A: the method's own noise
    .venv/bin/python bench/pair.py --base . --base-env STATS=0   # one setting's cost: on ÷ off

Each checkout runs `lorebase serve` with one worker, pinned to CPU 1 (both workers share it);
their Redis, masters and the two wrk clients (`-t1 -c16`, 6 s) run on CPU 0. Both are driven
at once, so whatever else slows the box slows both alike, and the ratio of their req/s is
the ratio of what a request costs their worker. On this 2-core box an A/A run gives 1.00
within 0.01 (run.py's best-of-rounds moves ±10 % between runs). What this does not see: the
Redis time of a request (it runs on the other core) and the spread over workers.

Needs `wrk` and `taskset` (util-linux), and the seed's wrk scripts in ../shared/bench/wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
WRK = HERE.parent.parent / "shared" / "bench" / "wrk"
SCRIPTS = {"W2": ("csrf.lua", "/auth/csrf"), "W3": ("post_note.lua", "/notes"), "W4": ("get_notes.lua", "/notes")}
PASSWORD = "Correct-Horse-7-Battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: Any, cookie: str | None = None) -> tuple[Any, list[str]]:
    headers = {"content-type": "application/json", **({"cookie": cookie} if cookie else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()), r.headers.get_all("set-cookie") or []


class Server:
    def __init__(self, tree: Path, settings: list[str]):
        self.tree = tree
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LOREBASE_PORT": str(self.port), "LOREBASE_WORKERS": "1",
               "LOREBASE_DATA_DIR": tempfile.mkdtemp(prefix="lorebase-pair-")}
        for setting in settings:  # KEY=VALUE, as LOREBASE_KEY
            key, _, value = setting.partition("=")
            env[f"LOREBASE_{key}"] = value
        self.proc = subprocess.Popen([sys.executable, "-m", "lorebase", "serve", "dev"], cwd=tree, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/ping", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"lorebase from {tree} did not start") from None
                time.sleep(0.1)
        user = f"pair{random.randrange(10**6)}"
        post(self.base + "/auth/signup", {"username": user, "email": f"{user}@example.com", "password": PASSWORD})
        body, cookies = post(self.base + "/auth/login", {"username": user, "password": PASSWORD})
        self.cookie, self.csrf = cookies[0].split(";")[0].split("=", 1)[1], body["csrf"]
        for i in range(20):  # W4 lists 20 notes
            post(self.base + "/notes", {"csrf": self.csrf, "text": f"note {i}"}, f"lorebase={self.cookie}")
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            cpu = "1" if "worker" in " ".join(child.cmdline()) else "0"
            subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(child.pid)], capture_output=True, check=True)

    def wrk(self, workload: str, seconds: int) -> subprocess.Popen[str]:
        script, path = SCRIPTS[workload]
        env = {**os.environ, "COOKIE": self.cookie, "CSRF": self.csrf, "COOKIE_NAME": "lorebase",
               "PEER": str(self.tree), "WORKLOAD": workload}
        return subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c16", f"-d{seconds}s", "-s", script,
                                 self.base + path], cwd=WRK, env=env, stdout=subprocess.PIPE, text=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the other checkout (the code before a change)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a setting of this server")
    p.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE", help="a setting of the base server")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("workloads", nargs="*", default=["W2", "W3", "W4"], choices=sorted(SCRIPTS))
    args = p.parse_args()
    this, base = Server(HERE.parent, args.env), Server(args.base.resolve(), args.base_env)
    ratios: dict[str, list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for workload in args.workloads:
                runs = [this.wrk(workload, args.seconds), base.wrk(workload, args.seconds)]
                rps = [float(re.search(r"Requests/sec:\s+([\d.]+)", run.communicate()[0]).group(1))  # type: ignore[union-attr]
                       for run in runs]
                ratios.setdefault(workload, []).append(rps[0] / rps[1])
                print(f"round {round_ + 1} {workload}: this {rps[0]:,.0f} req/s, base {rps[1]:,.0f} req/s, "
                      f"ratio {rps[0] / rps[1]:.3f}", flush=True)
    finally:
        this.stop()
        base.stop()
    for workload, values in ratios.items():
        print(f"{workload}: this / base = {statistics.median(values):.3f} (median of {[round(v, 3) for v in values]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
