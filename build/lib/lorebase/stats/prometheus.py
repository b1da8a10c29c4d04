"""`GET /metrics`: the counters since the database began (`{stats}:total`), the day's uniques
and the levels now, in the Prometheus text format (version 0.0.4); and the check of the
scraper's Bearer token."""

from __future__ import annotations

import hmac

from .counters import BUCKETS_MS, FLOWS, UNIQUES


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(total: dict[str, str], stocks: dict[str, float], uniques: dict[str, int]) -> str:
    """The Prometheus text format (version 0.0.4) of the counters and levels."""
    requests: dict[tuple[str, str], dict[str, int]] = {}
    buckets: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], float] = {}
    flows: dict[str, int] = {}
    for field, value in total.items():
        kind, _, rest = field.partition("|")
        if kind == "requests":
            label, status = rest.rsplit("|", 1)
            method, route = label.split(" ", 1)
            requests.setdefault((route, method), {})[status] = int(value)
        elif kind == "latency":
            label, index = rest.rsplit("|", 1)
            method, route = label.split(" ", 1)
            counts = buckets.setdefault((route, method), [0] * (len(BUCKETS_MS) + 1))
            if index.isdigit() and int(index) < len(counts):
                counts[int(index)] += int(value)
        elif kind == "latency_sum":
            method, route = rest.split(" ", 1)
            sums[(route, method)] = float(value)
        elif not rest and kind in FLOWS:
            flows[kind] = int(value)
    out = ["# HELP lorebase_requests_total Requests answered, by route template, method and status.",
           "# TYPE lorebase_requests_total counter"]
    for (route, method), statuses in sorted(requests.items()):
        for status, count in sorted(statuses.items()):
            labels = f'route="{_label(route)}",method="{method}",status="{status}"'
            out.append(f"lorebase_requests_total{{{labels}}} {count}")
    out += ["# HELP lorebase_request_duration_seconds Time from a request's arrival to its reply, by route.",
            "# TYPE lorebase_request_duration_seconds histogram"]
    for (route, method), counts in sorted(buckets.items()):
        labels = f'route="{_label(route)}",method="{method}"'
        running = 0
        for bound, count in zip(BUCKETS_MS, counts, strict=False):
            running += count
            out.append(f'lorebase_request_duration_seconds_bucket{{{labels},le="{bound / 1000:g}"}} {running}')
        running += counts[-1]
        out.append(f'lorebase_request_duration_seconds_bucket{{{labels},le="+Inf"}} {running}')
        out.append(f"lorebase_request_duration_seconds_sum{{{labels}}} {_number(sums.get((route, method), 0) / 1000)}")
        out.append(f"lorebase_request_duration_seconds_count{{{labels}}} {running}")
    for name, text in FLOWS.items():
        out += [f"# HELP lorebase_{name}_total {text}", f"# TYPE lorebase_{name}_total counter",
                f"lorebase_{name}_total {flows.get(name, 0)}"]
    for name, text in UNIQUES.items():
        out += [f"# HELP lorebase_{name} {text} today (UTC), estimated (HyperLogLog).",
                f"# TYPE lorebase_{name} gauge", f"lorebase_{name} {uniques.get(name, 0)}"]
    out += ["# HELP lorebase_users Accounts.", "# TYPE lorebase_users gauge",
            f"lorebase_users {_number(stocks.get('users', 0))}",
            "# HELP lorebase_queue_jobs Jobs in each durable queue, by state.", "# TYPE lorebase_queue_jobs gauge"]
    for name, level in sorted(stocks.items()):
        if name.startswith("queue|"):
            _, queue, state = name.split("|")
            out.append(f'lorebase_queue_jobs{{queue="{queue}",state="{state}"}} {_number(level)}')
    return "\n".join(out) + "\n"


def equal_token(given: str, expected: str) -> bool:
    """A Bearer token against METRICS_TOKEN, in constant time; an empty one never matches."""
    return bool(expected) and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())
