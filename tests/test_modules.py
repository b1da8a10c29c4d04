"""How the split packages hold together: every name of the stats package imports from its face
(`from lorebase import stats`), and a worker, a new interpreter, starts with the counting of
stats alone and none of the master's code (its import time is paid by every worker start)."""

from __future__ import annotations

import json
import subprocess
import sys

from lorebase import stats
from lorebase.stats import counters, minutes, prometheus


def test_a_worker_starts_with_the_stats_counting_alone_and_no_master_module():
    code = ("import json, sys, lorebase.worker; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('lorebase.stats', 'lorebase.master')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["lorebase.stats", "lorebase.stats.counters"]


def test_every_name_of_stats_is_its_module_s_own_object():
    for name in stats.__all__:
        value = getattr(stats, name)
        assert any(vars(module).get(name) is value for module in (counters, minutes, prometheus)), name
    assert stats.render is prometheus.render
    assert stats.series is minutes.series
    assert stats.Stats is counters.Stats
