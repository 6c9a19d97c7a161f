"""The provisioned Grafana dashboard: generated, templated, documented, and every query parses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType

import yaml

from tests.deploy.conftest import load_script

builder = load_script("grafana/build_dashboard.py")

# SPEC §6 plus the calibrated-coverage gauge; the live test checks them against a running service.
SPEC_METRICS = {
    "saver_requests_total",
    "saver_request_duration_seconds",
    "saver_stage_duration_seconds",
    "saver_gate_requests_total",
    "saver_gate_units_total",
    "saver_images_total",
    "saver_vision_fallbacks_total",
    "saver_inflight_requests",
    "saver_model_info",
    "saver_gate_calibrated_coverage",
}


def test_committed_dashboard_is_the_generated_one() -> None:
    assert builder.OUTPUT.read_text(encoding="utf-8") == builder.render(), (
        "run `python deploy/grafana/build_dashboard.py`"
    )


def test_every_panel_has_unit_description_and_templated_datasource(dashboard_tools: ModuleType) -> None:
    panels = dashboard_tools.data_panels(dashboard_tools.load_dashboard())
    assert len(panels) >= 10
    for panel in panels:
        assert panel["description"].strip(), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_datasource_and_job_are_template_variables(dashboard_tools: ModuleType) -> None:
    variables = {v["name"]: v for v in dashboard_tools.load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    for query in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()):
        assert '$job"' in query.expr, f"{query.panel}: not filtered by $job"


def test_the_issue_s_panels_are_there(dashboard_tools: ModuleType) -> None:
    exprs = " ".join(q.expr for q in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()))
    for needle in (
        'saver_gate_units_total{job=~"$job", endpoint=~"$endpoint", mode="auto", decision="activated"}',
        'saver_gate_requests_total{job=~"$job", endpoint=~"$endpoint", mode="auto", decision="activated"}',
        "saver_gate_calibrated_coverage",
        "histogram_quantile(0.5, sum by (le, endpoint) (rate(saver_request_duration_seconds_bucket",
        "histogram_quantile(0.9, sum by (le, endpoint) (rate(saver_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(saver_request_duration_seconds_bucket",
        "histogram_quantile(0.9, sum by (le, endpoint, stage) (rate(saver_stage_duration_seconds_bucket",
        'status=~"5.."',
        'outcome=~"fetched|selected|cache_hit"',
        "sum by (endpoint, reason) (rate(saver_vision_fallbacks_total",
        "saver_inflight_requests",
    ):
        assert needle in exprs, needle


def test_drift_panel_draws_the_alert_s_factor_either_way(dashboard_tools: ModuleType) -> None:
    # The alert's final `> N` on the folded ratio max(r, 1/r) is the one place the factor is set; the
    # panel plots r = live / calibrated itself, so it must draw both N and 1/N.
    (alert,) = [r for r in dashboard_tools.rule_expressions() if r.name == "SaverGateActivationDrift"]
    threshold = re.fullmatch(r"(?s).*>\s*([0-9.]+)\s*", alert.expr)
    assert threshold, alert.expr
    factor = float(threshold.group(1))
    assert factor == builder.DRIFT_FACTOR
    panels = dashboard_tools.data_panels(dashboard_tools.load_dashboard())
    (panel,) = [p for p in panels if "drift" in p["title"]]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert sorted(s["value"] for s in steps if s["value"] is not None) == [1 / factor, factor]
    assert panel["fieldConfig"]["defaults"]["unit"] == "none"
    assert "/ on (endpoint) max by (endpoint) (saver_gate_calibrated_coverage" in panel["targets"][0]["expr"]


def test_quantiles_are_never_summed_or_averaged(dashboard_tools: ModuleType) -> None:
    for query in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()):
        assert not re.search(r"(sum|avg|max|min)(\s+by\s*\([^)]*\))?\s*\(\s*histogram_quantile", query.expr)
        for match in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*(\w+)", query.expr):
            assert match.group(1) == "sum", query.expr
        for match in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*sum by \(([^)]*)\)", query.expr):
            assert "le" in [label.strip() for label in match.group(1).split(",")], query.expr


def test_rates_use_the_rate_interval(dashboard_tools: ModuleType) -> None:
    for query in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()):
        for window in re.findall(r"\[([^\]]+)\]", query.expr):
            assert window == "$__rate_interval", query.expr


def test_only_spec_metrics_are_used(dashboard_tools: ModuleType) -> None:
    for query in dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard()):
        for name in re.findall(r"\bsaver_[a-z_]+", query.expr):
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            assert family in SPEC_METRICS, f"{query.panel}: {name}"


def test_every_query_parses(dashboard_tools: ModuleType, promtool: str, tmp_path: Path) -> None:
    # promtool parses each expression of a rules file: wrap every dashboard query in one.
    queries = dashboard_tools.dashboard_queries(dashboard_tools.load_dashboard())
    rules = [
        {"record": f"dashboard:query_{i}:{q.ref_id}", "expr": dashboard_tools.substitute(q.expr)}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_a_broken_query_is_caught(dashboard_tools: ModuleType, promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    rules = [{"record": "dashboard:broken:a", "expr": "sum by (endpoint (rate(saver_requests_total[1m]))"}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True).returncode != 0


def test_the_sdk_defaults_are_overridden_legends_shown_and_ids_unique(dashboard_tools: ModuleType) -> None:
    # grafana-foundation-sdk hides legends and gives every row id 0 unless told otherwise.
    dashboard = dashboard_tools.load_dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids) and 0 not in ids
    for panel in dashboard_tools.data_panels(dashboard):
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"] is True, panel["title"]
    assert dashboard["schemaVersion"] == 41  # Grafana 12.1's, as in deploy/compose.yaml
