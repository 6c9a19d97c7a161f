"""Per-mode numbers, ratios, the markdown table and the CDF plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import ModeRun, Sample, markdown, percentile, plot_cdf, ratio, ratios, summarise


def ok(
    latency: float, activated: int = 0, fetched: int = 0, selected: int = 0, gflops: float | None = 1.0
) -> Sample:
    return Sample(
        "saver", latency, 200, "t", units_total=4, units_activated=activated, images_requested=2,
        images_fetched=fetched, images_selected=selected, gflops=gflops,
    )  # fmt: skip


def test_percentiles_interpolate_linearly() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_summary_counts_answered_requests_and_reports_errors_apart() -> None:
    samples = [
        ok(10, activated=0),
        ok(20, activated=2, fetched=2, selected=1, gflops=3.0),
        ok(30, activated=1, fetched=1, selected=1, gflops=2.0),
        ok(40, activated=0),
        Sample("saver", 5000.0, 429),
        Sample("saver", 9000.0, 0),
    ]
    s = summarise(samples, ModeRun(seconds=2.0, rss_mb=321.0, cdn_requests=3))
    assert s["n_requests"] == 6 and s["n_ok"] == 4
    assert s["p50_ms"] == pytest.approx(25.0)  # the failed requests' times are not latencies
    assert s["mean_ms"] == pytest.approx(25.0)
    assert s["rps"] == pytest.approx(2.0)
    assert s["activation_rate"] == pytest.approx(0.5)
    assert s["unit_activation_rate"] == pytest.approx(3 / 16)
    assert s["images_fetched_per_request"] == pytest.approx(0.75)
    assert s["images_selected_per_request"] == pytest.approx(0.5)
    assert s["cdn_requests_per_request"] == pytest.approx(0.75)
    assert s["gflops_per_request"] == pytest.approx((1 + 3 + 2 + 1) / 4)
    assert s["rss_mb"] == 321.0
    assert s["error_rate"] == pytest.approx(2 / 6)
    assert s["errors"] == {"429": 1, "0": 1}


def test_summary_of_nothing_answered_has_no_numbers() -> None:
    s = summarise([Sample("text", 1.0, 503)], ModeRun(seconds=1.0))
    assert s["p50_ms"] is None and s["activation_rate"] is None and s["rps"] == 0.0
    assert s["gflops_per_request"] is None


def test_gflops_are_reported_only_when_every_answer_has_them() -> None:
    s = summarise([ok(1.0, gflops=1.0), ok(2.0, gflops=None)], ModeRun(seconds=1.0))
    assert s["gflops_per_request"] is None


def test_ratios_divide_saver_by_always_and_by_text() -> None:
    summary = {
        "text": {"p50_ms": 10.0, "rps": 40.0, "gflops_per_request": 0.5, "images_fetched_per_request": 0.0},
        "always": {"p50_ms": 200.0, "rps": 5.0, "gflops_per_request": 8.0, "images_fetched_per_request": 2.5},
        "saver": {"p50_ms": 50.0, "rps": 20.0, "gflops_per_request": 2.0, "images_fetched_per_request": 0.5},
    }
    r = ratios(summary)
    assert set(r) == {"saver/always", "saver/text"}
    assert r["saver/always"]["p50_ms"] == pytest.approx(0.25)
    assert r["saver/always"]["rps"] == pytest.approx(4.0)
    assert r["saver/text"]["gflops_per_request"] == pytest.approx(4.0)
    assert r["saver/text"]["images_fetched_per_request"] is None  # 0 in the denominator
    assert r["saver/always"]["p99_ms"] is None  # missing metric
    assert ratios({"saver": summary["saver"], "text": summary["text"]}).keys() == {"saver/text"}
    assert ratio(1.0, None) is None


def test_markdown_and_plot(tmp_path: Path) -> None:
    samples = {"text": [ok(5.0), ok(7.0)], "saver": [ok(50.0, 1, 2, 1), ok(80.0)]}
    summary = {m: summarise(v, ModeRun(seconds=1.0, rss_mb=100.0)) for m, v in samples.items()}
    report = {
        **summary,
        "ratios": ratios(summary),
        "config": {
            "load": "closed loop, 2 concurrent clients", "rounds": 4, "round_s": 2.5, "warmup_s": 5,
            "posts": "p.txt", "n_posts": 3, "images_per_post": 2.5, "command": "saver bench --out x",
        },
        "cdn": {"images": "2 generated photos", "latency_ms": 80, "jitter_ms": 20},
        "service": {"model": "fake-mner", "how": "started by the bench"},
        "flops": {"method": "toy"},
        "machine": {"cpu": "cpu", "cpu_count": 2, "loadavg_before": [1, 1, 1], "loadavg_after": [2, 2, 2]},
    }  # fmt: skip
    text = markdown(report, ["text", "saver"])
    assert "| text | 2 | 6.0 |" in text
    assert "| saver/text | 10.83x |" in text  # P50 65.0 / 6.0
    plot_cdf(samples, tmp_path / "cdf.png")
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
