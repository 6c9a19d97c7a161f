"""``saver bench`` end to end: a real ``saver serve`` child on the fake model, a few seconds of load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main, parse_args
from tests.bench.toy import ToyPipeline

MODE_KEYS = {
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "rps", "activation_rate", "images_fetched_per_request",
    "gflops_per_request", "rss_mb",
}  # fmt: skip
POSTS = (
    "IMGID:1\nKevin\tB-PER\nDurant\tI-PER\njoins\tO\nthe\tO\nWarriors\tB-ORG\n\n"
    "IMGID:2\nwhat\tO\na\tO\nquiet\tO\nday\tO\n\n"
    "IMGID:3\nsunset\tO\nover\tO\nLondon\tB-LOC\ntonight\tO\n\n"
)


def test_bench_against_the_fake_model_writes_every_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FLOPs of a tiny known pipeline instead of loading the real model: this test is about the harness.
    monkeypatch.setattr("bench.flops.load_reference_pipeline", lambda artifacts: (ToyPipeline(), "toy 1"))
    posts = tmp_path / "posts.txt"
    posts.write_text(POSTS, encoding="utf-8")
    out = tmp_path / "out"
    main([
        "--posts", str(posts), "--duration", "3", "--warmup", "0.5", "--round", "0.5", "--concurrency", "2",
        "--out", str(out), "--service-env", "SAVER_FAKE_MODEL=1", "--service-env", "SAVER_LOG_LEVEL=WARNING",
        "--images", str(tmp_path / "none"), "--cdn-images", "2", "--cdn-latency-ms", "20", "--cdn-jitter-ms", "5",
        "--ready-timeout", "120",
    ])  # fmt: skip
    report: dict[str, Any] = json.loads((out / "bench.json").read_text())
    for mode in ("text", "always", "saver"):
        assert report[mode].keys() >= MODE_KEYS
        assert report[mode]["n_ok"] > 0 and report[mode]["error_rate"] == 0.0
        assert report[mode]["rss_mb"] > 0
    text, always, saver = report["text"], report["always"], report["saver"]
    assert text["activation_rate"] == 0.0 and text["images_fetched_per_request"] == 0.0
    assert always["activation_rate"] == 1.0 and always["images_fetched_per_request"] >= 1.0
    # the fake model activates capitalised spans: posts 1 and 3 fetch, post 2 does not
    assert 0.0 < saver["activation_rate"] < 1.0
    # what the service says it fetched is what left the CDN
    assert always["cdn_requests_per_request"] == pytest.approx(always["images_fetched_per_request"])
    assert text["gflops_per_request"] < saver["gflops_per_request"] < always["gflops_per_request"]
    assert set(report["ratios"]) == {"saver/always", "saver/text"}
    assert report["ratios"]["saver/always"]["gflops_per_request"] < 1.0
    assert report["service"]["model"].startswith("fake-mner")
    assert report["config"]["service_env"]["SAVER_FAKE_MODEL"] == "1"
    assert "| saver |" in (out / "bench.md").read_text()
    assert (out / "latency_cdf.png").stat().st_size > 1000
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == sum(report[m]["n_requests"] for m in ("text", "always", "saver"))


@pytest.mark.parametrize(
    "bad",
    [
        ["--modes", "text,vision"],
        ["--service-env", "BACKEND=onnx"],
        ["--duration", "0"],
        ["--rate", "-1"],
        ["--target", "http://x", "--service-env", "SAVER_A=1"],
    ],
)
def test_bad_arguments_are_refused(bad: list[str], tmp_path: Path) -> None:
    posts = tmp_path / "p.txt"
    posts.write_text(POSTS)
    with pytest.raises(SystemExit):
        parse_args(["--posts", str(posts), "--out", str(tmp_path), *bad])


def test_arguments_parse_modes_and_env(tmp_path: Path) -> None:
    args = parse_args([
        "--posts", "p.txt", "--out", str(tmp_path), "--modes", "saver, always",
        "--service-env", "SAVER_BACKEND=onnx", "--service-env", "SAVER_MICROBATCH=true",
    ])  # fmt: skip
    assert args.mode_list == ["saver", "always"]
    assert args.env == {"SAVER_BACKEND": "onnx", "SAVER_MICROBATCH": "true"}
