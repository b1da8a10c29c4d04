"""Stats (seed: Future directions, "stats"): what the server does, counted per minute and
summed over every worker and node in Redis, and `GET /metrics` in the Prometheus format.

The kinds the seed's reference keeps:
- flows: counters (requests by route template, method and status; signups, logins, failed
  logins, bytes uploaded, bytes served), and a latency histogram per route;
- max and min: the slowest and fastest request of each route in the minute;
- uniques: HyperLogLogs (users active in a day, client addresses in a day);
- stocks: levels (users, jobs in each queue), recorded each minute by the `stats` task.

One module a job: counters.py counts in a worker and flushes to Redis (and builds the keys),
prometheus.py renders `/metrics`, minutes.py records the levels and reads the minutes back
as the admin's chart series. Every name is imported from here (`from lorebase import stats`).
The reading side loads at its first use (a scrape, a chart, the `stats` task): a worker is a
new interpreter, and its start imports the counting alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .counters import (
    BUCKETS_MS,
    BUCKETS_S,
    FLOWS,
    METHODS,
    PENDING_MAX,
    TOTAL,
    UNIQUE_TTL,
    UNIQUES,
    Stats,
    Tally,
    fields,
    minute_key,
    unique_key,
)

if TYPE_CHECKING:
    from .minutes import (
        CHART_FLOWS,
        QUEUE_STATES,
        READ_BATCH,
        chart,
        percentile,
        queues,
        read_minutes,
        read_stocks,
        record_stocks,
        series,
    )
    from .prometheus import equal_token, render

_LATER = {
    **dict.fromkeys(("CHART_FLOWS", "QUEUE_STATES", "READ_BATCH", "chart", "percentile", "queues", "read_minutes",
                     "read_stocks", "record_stocks", "series"), "minutes"),
    **dict.fromkeys(("equal_token", "render"), "prometheus"),
}

__all__ = [
    "BUCKETS_MS", "BUCKETS_S", "CHART_FLOWS", "FLOWS", "METHODS", "PENDING_MAX", "QUEUE_STATES", "READ_BATCH",
    "TOTAL", "UNIQUES", "UNIQUE_TTL", "Stats", "Tally", "chart", "equal_token", "fields", "minute_key",
    "percentile", "queues", "read_minutes", "read_stocks", "record_stocks", "render", "series", "unique_key",
]


def __getattr__(name: str) -> Any:
    """A name of the reading side, its module imported at the first ask (then a plain global)."""
    module = _LATER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return value
