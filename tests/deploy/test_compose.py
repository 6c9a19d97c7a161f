"""deploy/compose.yaml against the compose specification, and the files it mounts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, venv_tool
from tests.tooling import missing_tool

COMPOSE = DEPLOY / "compose.yaml"


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    tool = venv_tool("check-jsonschema")
    if tool is None:
        missing_tool("check-jsonschema not installed")
    # The compose-spec schema is vendored inside check-jsonschema: no network needed.
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True
    )


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_spec() -> None:
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["saver"]["helthcheck"] = broken["services"]["saver"].pop("healthcheck")
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode != 0


def test_every_bind_mount_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    build = compose()["services"]["saver"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_grafana_provisioning_matches_the_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/saver.yaml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == dashboards_path
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(dashboards_path)
    assert (DEPLOY / "grafana/dashboards/saver-overview.json").is_file()
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"].startswith("http://prometheus:")


def test_prometheus_config_is_valid_and_scrapes_the_service(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert ["saver:8000"] in [c["targets"] for job in config["scrape_configs"] for c in job["static_configs"]]
    # Point rule_files at the repository instead of the container path, then let promtool read all of it.
    config["rule_files"] = [str(DEPLOY / "prometheus/rules/*.yaml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
