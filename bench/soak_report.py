"""The soak run's bookkeeping: answers tallied by kind, the summary and its markdown (``bench/soak.py``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # fallback reasons and error codes
    unexpected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # a few unexpected answers, for the report


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def summarise(tallies: dict[str, Tally], meta: dict[str, Any]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        kind: {
            "requests": sum(t.statuses.values()),
            "statuses": dict(t.statuses),
            "outcomes": dict(t.outcomes),
            "unexpected": t.unexpected,
            "p50_ms": _percentile(t.latencies_ms, 0.5),
            "p99_ms": _percentile(t.latencies_ms, 0.99),
            "examples": t.examples,
        }
        for kind, t in sorted(tallies.items())
    }
    total = sum(k["requests"] for k in kinds.values())
    errors_5xx = sum(n for t in tallies.values() for s, n in t.statuses.items() if s.startswith("5"))
    transport = sum(n for t in tallies.values() for s, n in t.statuses.items() if s.startswith("transport"))
    return {**meta, "requests": total, "http_5xx": errors_5xx, "transport_errors": transport,
            "unexpected": sum(t.unexpected for t in tallies.values()), "kinds": kinds}  # fmt: skip


def cache_entries(metrics_text: str) -> dict[str, float]:
    """``saver_screencache_entries`` per endpoint from the exposition text."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("saver_screencache_entries{"):
            labels, _, value = line.rpartition(" ")
            endpoint = labels.split('endpoint="', 1)[1].split('"', 1)[0]
            out[endpoint] = float(value)
    return out


def markdown(summary: dict[str, Any]) -> str:
    start, end = summary["resources"]["start"], summary["resources"]["end"]
    mib = 1024 * 1024
    lines = [
        f"# Soak run: {summary['duration_s']:g} s, {summary['model']} model, concurrency {summary['concurrency']}",
        "",
        f"- requests: {summary['requests']} ({summary['requests'] / summary['duration_s']:.1f}/s); "
        f"5xx: {summary['http_5xx']}; transport errors: {summary['transport_errors']}; "
        f"unexpected answers: {summary['unexpected']}",
        f"- server RSS: {start['rss_bytes'] / mib:.1f} MiB at start, {end['rss_bytes'] / mib:.1f} MiB at end "
        f"(peak sampled {summary['resources']['peak_rss_bytes'] / mib:.1f} MiB)",
        f"- open file descriptors: {start['open_fds']} at start, {end['open_fds']} at end",
        "- RSS samples (MiB, every 10 s): "
        + " ".join(f"{s['rss_bytes'] / mib:.0f}" for s in summary["resources"]["samples"]),
        f"- canary hits (private-address requests that reached the listener): {summary['canary_hits']}",
        f"- RSS growth after warm-up: {summary['rss_growth']:+.1%}; screen cache entries at the end: "
        f"{summary['screen_cache']['entries']} (cap {summary['screen_cache']['cap']}); CDN images served: "
        f"{summary['cdn']['requests']}",
        "- checks: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in summary["checks"].items()),
        f"- ready after the load: {summary['ready_after']}; exit on SIGTERM: {summary['exit_code']}",
        "",
        "| kind | requests | statuses | outcomes | unexpected | p50 ms | p99 ms |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for kind, k in summary["kinds"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(k["statuses"].items()))
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(k["outcomes"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {kind} | {k['requests']} | {statuses} | {outcomes} | {k['unexpected']} | "
                     f"{k['p50_ms']} | {k['p99_ms']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
