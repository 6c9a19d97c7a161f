"""From per-request samples to the benchmark's numbers: per-mode summary, ratios, markdown table, CDF plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import BATCH_SUFFIX

# metric -> (column header, format) for the markdown table, in table order
COLUMNS: dict[str, tuple[str, str]] = {
    "n_requests": ("requests", "{:d}"),
    "p50_ms": ("P50 ms", "{:.1f}"),
    "p90_ms": ("P90 ms", "{:.1f}"),
    "p99_ms": ("P99 ms", "{:.1f}"),
    "mean_ms": ("mean ms", "{:.1f}"),
    "rps": ("posts/s", "{:.2f}"),  # a batch call answers several posts
    "activation_rate": ("activated", "{:.1%}"),
    "images_fetched_per_request": ("img fetched/req", "{:.2f}"),
    "images_selected_per_request": ("img encoded/req", "{:.2f}"),
    "gflops_per_request": ("GFLOPs/req", "{:.2f}"),
    "rss_mb": ("peak RSS MB", "{:.0f}"),
    "error_rate": ("errors", "{:.1%}"),
}
# the ratios reported: (numerator mode, denominator mode)
RATIO_PAIRS = (("saver", "always"), ("saver", "text"))
RATIO_METRICS = (
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "rps",
    "images_fetched_per_request",
    "images_selected_per_request",
    "gflops_per_request",
)


@dataclass
class Sample:
    """One request as the client saw it, with the counts the service reported."""

    mode: str
    latency_ms: float
    status: int  # HTTP status; 0 when no answer came (connection error, client timeout)
    text: str = ""
    units_total: int = 0
    units_activated: int = 0
    images_requested: int = 0
    images_fetched: int = 0
    images_selected: int = 0
    fallback: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    gflops: float | None = None  # filled in after the run from the FLOP table

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class ModeRun:
    """What the load generator knows of one mode besides its samples."""

    seconds: float = 0.0  # wall time of this mode's rounds (from first send to last answer)
    rss_mb: float | None = None  # service peak RSS (VmHWM) at the end of this mode's last round
    cdn_requests: int = 0  # images the CDN served during this mode's rounds


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default); None for no values."""
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarise(samples: Sequence[Sample], run: ModeRun) -> dict[str, Any]:
    """One mode's numbers. Latencies and per-request counts are over answered (200) requests only;
    ``rps`` counts answered requests per second of the mode's own rounds."""
    ok = [s for s in samples if s.ok]
    latencies = [s.latency_ms for s in ok]
    gflops = [s.gflops for s in ok if s.gflops is not None]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    return {
        "n_requests": len(samples),
        "n_ok": len(ok),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": _mean(latencies),
        "rps": len(ok) / run.seconds if run.seconds > 0 else None,
        "activation_rate": _mean([float(s.units_activated > 0) for s in ok]),
        "unit_activation_rate": (
            sum(s.units_activated for s in ok) / total if (total := sum(s.units_total for s in ok)) else None
        ),
        "images_requested_per_request": _mean([s.images_requested for s in ok]),
        "images_fetched_per_request": _mean([s.images_fetched for s in ok]),
        "images_selected_per_request": _mean([s.images_selected for s in ok]),
        "cdn_requests_per_request": run.cdn_requests / len(ok) if ok else None,
        "fallback_rate": _mean([float(s.fallback is not None) for s in ok]),
        "gflops_per_request": _mean(gflops) if gflops and len(gflops) == len(ok) else None,
        "rss_mb": run.rss_mb,
        "error_rate": (len(samples) - len(ok)) / len(samples) if samples else None,
        "errors": errors,
        "seconds": run.seconds,
        "stage_mean_ms": {
            stage: float(np.mean([s.timings_ms.get(stage, 0.0) for s in ok]))
            for stage in (ok[0].timings_ms if ok else {})
        },
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{"saver/always": {metric: ratio}, "saver/text": ...}`` for the modes that were run."""
    out: dict[str, dict[str, float | None]] = {}
    pairs = [*RATIO_PAIRS, *((f"{m}{BATCH_SUFFIX}", m) for m in summary if f"{m}{BATCH_SUFFIX}" in summary)]
    for num, den in pairs:
        if num in summary and den in summary:
            out[f"{num}/{den}"] = {m: ratio(summary[num].get(m), summary[den].get(m)) for m in RATIO_METRICS}
    return out


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def markdown(report: dict[str, Any], modes: Sequence[str]) -> str:
    """The table, the ratios, then how the run was set up."""
    cfg, machine = report["config"], report["machine"]
    lines = [
        "# SAVER service benchmark",
        "",
        f"{cfg['load']}; {cfg['rounds']} interleaved rounds of {cfg['round_s']:.1f} s "
        f"(after {cfg['warmup_s']:.0f} s warm-up); posts: {cfg['posts']} ({cfg['n_posts']} posts, "
        f"{cfg['images_per_post']:.2f} images each on average); CDN: {report['cdn']['images']}, "
        f"{report['cdn']['latency_ms']:.0f} ± {report['cdn']['jitter_ms']:.0f} ms.",
        "",
        "| mode | " + " | ".join(h for h, _ in COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for mode in modes:
        row = report[mode]
        lines.append(
            f"| {mode} | " + " | ".join(_cell(row.get(k), f) for k, (_, f) in COLUMNS.items()) + " |"
        )
    if report["ratios"]:
        lines += ["", "| ratio | " + " | ".join(RATIO_METRICS) + " |", "|---|" + "---:|" * len(RATIO_METRICS)]
        for name, values in report["ratios"].items():
            lines.append(
                f"| {name} | " + " | ".join(_cell(values[m], "{:.2f}x") for m in RATIO_METRICS) + " |"
            )
    lines += [
        "",
        "Latency is client-side wall time of answered requests; `activated` is the share of requests with at "
        "least one unit sent to vision; `img encoded` counts images detail-encoded (screening is implied by "
        "`img fetched`); peak RSS is the service process's high-water mark (VmHWM) at the end of the mode's "
        "last round, so it only grows from mode to mode within one run.",
        "",
        f"- service: {report['service'].get('model', '?')} ({report['service'].get('how', '?')})",
        f"- FLOPs: {report['flops'].get('method', 'not counted')}",
        f"- machine: {machine['cpu']}, {machine['cpu_count']} CPUs, load average "
        f"{machine['loadavg_before']} before, {machine['loadavg_after']} after",
        f"- command: `{cfg['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot_cdf(samples: dict[str, list[Sample]], path: Path, title: str = "") -> None:
    """Empirical latency CDF per mode (answered requests), log-scaled x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for mode, mode_samples in samples.items():
        latencies = np.sort([s.latency_ms for s in mode_samples if s.ok])
        if len(latencies) == 0:
            continue
        y = np.arange(1, len(latencies) + 1) / len(latencies)
        ax.step(latencies, y, where="post", label=f"{mode} (n={len(latencies)})")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of requests ≤ latency")
    ax.set_ylim(0, 1.01)
    ax.set_title(title or "SAVER service latency CDF")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
