"""Recording and alerting rules: promtool's syntax check, its unit tests, and our conventions."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

RULES = sorted((DEPLOY / "prometheus/rules").glob("*.yaml"))
RULE_TESTS = sorted((DEPLOY / "prometheus/tests").glob("*.yaml"))


def all_rules() -> list[dict]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_promtool_check_rules(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", *map(str, RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(promtool: str, path) -> None:
    # Synthetic series with hand-computed answers: P90, error ratio, drift, fallbacks, and that each
    # alert fires for the unhealthy endpoint only, and only after its `for` duration.
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, cwd=path.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_issue_s_alerts_exist() -> None:
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    assert {"SaverLatencyP90AboveSLO", "SaverHighErrorRate", "SaverGateActivationDrift"} <= alerts


def test_alerts_are_documented_and_have_a_severity() -> None:
    for rule in all_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_recorded_names_follow_level_metric_operations() -> None:
    for rule in all_rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and metric.startswith("saver_") and operations, rule["record"]


def test_quantiles_are_taken_of_pooled_buckets() -> None:
    for rule in all_rules():
        for match in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*sum by \(([^)]*)\)", rule["expr"]):
            assert "le" in [label.strip() for label in match.group(1).split(",")]
        assert "histogram_quantile" not in rule["expr"] or "_bucket" in rule["expr"]
