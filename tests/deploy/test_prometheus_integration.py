"""End to end: a real Prometheus scrapes a real running service that has served traffic (text-only,
activated with images from a local image server, cache hits, failed images, fallbacks, 4xx), then every
dashboard query and every rule is evaluated through Prometheus's HTTP API and must return data.

Set SAVER_DEPLOY_TRAFFIC_S to send traffic for longer, and SAVER_RENDER_DASHBOARD=PATH.png to draw
the dashboard from this run (deploy/scripts/render_dashboard.py); docs/img/dashboard.png comes from
    SAVER_DEPLOY_TRAFFIC_S=90 SAVER_RENDER_DASHBOARD=docs/img/dashboard.png \
        pytest tests/deploy/test_prometheus_integration.py
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT
from tests.tooling import import_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

JOB = "saver"
TRAFFIC_S = float(os.environ.get("SAVER_DEPLOY_TRAFFIC_S", "6"))
SERVICE_FACTORY = "service.app:app_from_env"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "SAVER_FAKE_MODEL": "1",
        "SAVER_ALLOW_LOOPBACK": "true",
        "SAVER_LOG_JSON": "false",
        "SAVER_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path_factory.mktemp("service") / "service.log").open("wb")
    command = [sys.executable, "-m", "uvicorn", "--factory", SERVICE_FACTORY, "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "the service to be ready")
        yield url
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def prometheus_url(
    prometheus_tools: dict[str, str], service_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted((DEPLOY / "prometheus/rules").glob("*.yaml"))],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [service_url.removeprefix("http://")]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_tools["prometheus"],
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 30, "Prometheus to be ready")
        yield url
    finally:
        stop(process)
        log.close()


def send_traffic(service_url: str, seconds: float) -> None:
    """Waves of requests that exercise every labelled outcome, spread over several 1 s scrapes."""
    from tests.service.imageserver import start_image_server

    with start_image_server() as images, httpx.Client(base_url=service_url, timeout=20) as client:
        shared = [images.url("/gen/rgb.jpg"), images.url("/gen/palette.png")]
        start, wave = time.monotonic(), 0
        while wave < 4 or time.monotonic() - start < seconds:
            fresh = images.url(f"/gen/rgb.jpg?wave={wave}")
            mner = [
                {
                    "text": "Barack Obama visits Paris",
                    "image_urls": shared,
                },  # activated; cache hits after wave 0
                {"text": "Angela Merkel meets Emmanuel Macron", "image_urls": [fresh]},  # fetched each wave
                {
                    "text": "New York at night",
                    "image_urls": [images.url("/status/404"), fresh],
                },  # one failure
                {"text": "Lionel Messi scores again"},  # activated but no images: fallback no_images
                {"text": "what a lovely day it was today"},  # no capitalised span: skipped
                {"text": "the end of the road", "image_urls": shared},  # skipped: images never fetched
            ]
            for body in mner:
                assert client.post("/mner", json=body).status_code == 200, body
            mre = {"text": "Barack Obama lives in Washington", "head": {"text": "Barack Obama"},
                   "tail": {"text": "Washington"}, "image_urls": shared}  # fmt: skip
            assert client.post("/mre", json=mre).status_code == 200
            plain = {"text": "my friend lives in town", "head": {"text": "friend"}, "tail": {"text": "town"}}
            assert client.post("/mre", json=plain).status_code == 200
            assert client.post("/mner", json={"image_urls": []}).status_code == 422  # a client error
            wave += 1
            time.sleep(0.4)


@pytest.fixture(scope="module")
def prometheus(service_url: str, prometheus_url: str, dashboard_tools: ModuleType) -> Iterator[Any]:
    client = dashboard_tools.Prometheus(prometheus_url)
    wait_until(lambda: any(t["health"] == "up" for t in client.targets()), 15, "the first scrape")
    send_traffic(service_url, TRAFFIC_S)
    time.sleep(2.5)  # two more scrapes and rule evaluations after the last request
    yield client
    client.close()


def exported_names(service_url: str) -> set[str]:
    text = httpx.get(f"{service_url}/metrics").text
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def referenced_metrics(expr: str) -> set[str]:
    return {name for name in re.findall(r"\b(saver_[a-z_]+)\b(?!:)", expr)}


def has_data(prometheus: Any, expr: str) -> bool:
    result = prometheus.query(expr)
    return any(math.isfinite(v) for v in (float(s["value"][1]) for s in result))


def test_scrape_target_is_up(prometheus: Any) -> None:
    targets = prometheus.targets()
    assert [t["health"] for t in targets if t["labels"]["job"] == JOB] == ["up"]


def test_every_metric_the_dashboard_and_rules_use_is_exported(
    prometheus: Any, service_url: str, dashboard_tools: ModuleType
) -> None:
    exported = exported_names(service_url)
    queries = [q.expr for q in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard())]
    queries += [r.expr for r in dashboard_tools.rule_expressions()]
    used = set().union(*(referenced_metrics(q) for q in queries))
    assert used, "no metric found in the queries"
    assert used <= exported, f"used but not exported by the service: {sorted(used - exported)}"


def test_every_dashboard_query_returns_data(prometheus: Any, dashboard_tools: ModuleType) -> None:
    empty = []
    for query in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()):
        expr = dashboard_tools.substitute(query.expr, {**dashboard_tools.DEFAULT_VARIABLES, "job": JOB})
        if not has_data(prometheus, expr):
            empty.append(f"{query.panel} [{query.ref_id}]: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_rule_evaluates_with_data(prometheus: Any, dashboard_tools: ModuleType) -> None:
    rules = dashboard_tools.rule_expressions()
    wait_until(
        lambda: all(has_data(prometheus, r.name) for r in rules if r.kind == "record"), 10, "recording rules"
    )
    states = prometheus.rules()
    assert len(states) == len(rules)
    assert all(s["health"] == "ok" and not s.get("lastError") for s in states), states
    for rule in rules:
        expr = rule.name if rule.kind == "record" else rule.signal
        assert has_data(prometheus, expr), f"{rule.kind} {rule.name}: no data for {expr}"
        assert rule.kind == "record" or rule.signal != rule.expr, f"{rule.name} has no threshold"


def test_drift_signal_compares_live_activation_with_calibration(prometheus: Any) -> None:
    # All four as of 2 s ago: recorded by one finished evaluation of the group, at one timestamp.
    at = time.time() - 2
    names = ["calibrated_coverage:max", "unit_activation:ratio_rate1h", "activation_drift:ratio_rate1h"]
    names.append("activation_drift:fold_rate1h")
    results = [prometheus.query(f'job_endpoint:saver_gate_{name}{{endpoint="mner"}}', at) for name in names]
    coverage, activation, ratio, fold = (float(r[0]["value"][1]) for r in results)
    assert 0 < coverage < 1 and 0 < activation < 1
    assert ratio == pytest.approx(activation / coverage, rel=1e-9)
    assert fold == pytest.approx(max(ratio, 1 / ratio), rel=1e-9)


def test_hpa_metric_of_the_adapter_rule_has_data(prometheus: Any) -> None:
    (configmap,) = yaml.safe_load_all((DEPLOY / "k8s/prometheus-adapter/adapter-config.yaml").read_text())
    for rule in yaml.safe_load(configmap["data"]["config.yaml"])["rules"]:
        series = rule["seriesQuery"].split("{")[0].strip("'\"")
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'job="{JOB}"')
            .replace("<<.GroupBy>>", "instance")
        )
        assert has_data(prometheus, expr), expr


def test_render_dashboard_png(prometheus: Any, dashboard_tools: ModuleType, tmp_path: Path) -> None:
    target = os.environ.get("SAVER_RENDER_DASHBOARD")
    if not target:
        import_tool("matplotlib")
    out = Path(target) if target else tmp_path / "dashboard.png"
    variables = {
        **dashboard_tools.DEFAULT_VARIABLES,
        "job": JOB,
        "__rate_interval": "20s" if TRAFFIC_S > 30 else "1m",
    }
    dashboard_tools.render(prometheus, out, variables, window_s=max(TRAFFIC_S + 20, 30), step_s=1.0)
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
