"""deploy/compose.yaml against the compose specification, and the files it mounts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import imagerun
from tests.deploy.conftest import DEPLOY, load_script, venv_tool
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


# The image test runs the compose `saver` service through tests/deploy/imagerun.py: these keep the two
# from drifting apart without building anything.


def dockerfile_config() -> imagerun.ImageConfig:
    return imagerun.dockerfile_image_config(DEPLOY / "Dockerfile")


def test_every_key_of_the_saver_service_is_run_or_named_unenforceable() -> None:
    service = compose()["services"]["saver"]
    run = imagerun.service_run(service, dockerfile_config(), environ={})
    assert run.command == ["saver", "serve"]
    assert run.user == "10001:10001"
    assert run.environment["SAVER_TRACING"] == "false"  # ${SAVER_TRACING:-false} with nothing set
    assert run.read_only and run.tmpfs == ["/tmp"]
    assert run.start_period_s == 120.0


def test_a_compose_key_the_image_test_does_not_run_fails() -> None:
    service = {**compose()["services"]["saver"], "entrypoint": ["sh"]}
    with pytest.raises(ValueError, match="entrypoint"):
        imagerun.service_run(service, dockerfile_config(), environ={})


def test_compose_environment_and_command_are_what_the_image_test_runs() -> None:
    service = compose()["services"]["saver"]
    changed = {
        **service,
        "environment": {**service["environment"], "SAVER_WORKERS": "3"},
        "command": "saver serve --x",
    }
    run = imagerun.service_run(changed, dockerfile_config(), environ={})
    assert "SAVER_WORKERS=3" in run.serve("c")
    assert run.serve("c")[-3:] == ["saver", "serve", "--x"]


def test_published_port_must_be_the_port_the_service_listens_on() -> None:
    service = {**compose()["services"]["saver"], "ports": ["8000:9000"]}
    with pytest.raises(ValueError, match="9000"):
        imagerun.service_run(service, dockerfile_config(), environ={})


def test_compose_health_check_is_the_dockerfile_healthcheck() -> None:
    test = compose()["services"]["saver"]["healthcheck"]["test"]
    assert imagerun.healthcheck_command(test) == dockerfile_config().healthcheck


def test_compose_image_is_what_make_image_builds() -> None:
    build_image = load_script("scripts/build_image.py")
    service = compose()["services"]["saver"]
    assert service["image"] == build_image.TAG
    assert (
        DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]
    ).resolve() == build_image.DOCKERFILE


def test_tracing_profile_mounts_the_collector_config() -> None:
    collector = compose()["services"]["otel-collector"]
    assert collector["profiles"] == ["tracing"]
    config = yaml.safe_load((DEPLOY / "otel/collector.yaml").read_text())
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    endpoint = compose()["services"]["saver"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.endswith(
        ":" + config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rpartition(":")[2]
    )
