"""Kubernetes manifests: strict schema validation offline (kubernetes-validate's bundled schemas), the
ServiceMonitor against its CRD schema, the kustomize renderings, and the wiring between objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.tooling import import_tool, missing_tool

kubernetes_validate = import_tool("kubernetes_validate")
jsonschema = import_tool("jsonschema")

# The newest Kubernetes release whose schemas kubernetes-validate 1.37.0 bundles (works offline).
K8S_VERSION = "1.37.0"
BASE = DEPLOY / "k8s/base"
GPU = DEPLOY / "k8s/overlays/gpu"
ADAPTER = DEPLOY / "k8s/prometheus-adapter/adapter-config.yaml"
SERVICEMONITOR_SCHEMA = DEPLOY / "schemas/servicemonitor.schema.json"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def base_resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in documents(BASE / name)]


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def validate(resource: dict[str, Any]) -> None:
    if resource["kind"] == "ServiceMonitor":
        schema = yaml.safe_load(SERVICEMONITOR_SCHEMA.read_text())
        jsonschema.validate(resource, schema)
    else:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl (with its built-in kustomize) not installed")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("resource", base_resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_base_manifest_is_valid_strictly(resource: dict[str, Any]) -> None:
    validate(resource)


def test_adapter_config_is_a_valid_configmap_with_the_hpa_metric() -> None:
    (configmap,) = documents(ADAPTER)
    validate(configmap)
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    hpa = by_kind(base_resources(), "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served


def test_strict_validation_rejects_unknown_fields() -> None:
    deployment = by_kind(base_resources(), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    monitor = yaml.safe_load(yaml.safe_dump(by_kind(base_resources(), "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.parametrize("overlay", [BASE, GPU], ids=["base", "gpu"])
def test_kustomize_renders_valid_manifests(overlay: Path) -> None:
    rendered = kustomize(overlay)
    kinds = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert {r["kind"] for r in rendered} >= kinds | {"ServiceMonitor"}
    for resource in rendered:
        validate(resource)


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes_with_the_gpu_image() -> None:
    rendered = kustomize(GPU)
    pod = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", "the patch must keep the base probes"
    assert by_kind(kustomize(BASE), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].endswith(":cpu")


def test_probes_follow_model_load_and_warm_up() -> None:
    container = by_kind(base_resources(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    startup, readiness, liveness = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["httpGet"]["path"] == readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    # Load + warm-up may take minutes; liveness only starts after the startup probe succeeded.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_pod_is_locked_down_and_rolls_without_losing_capacity() -> None:
    deployment = by_kind(base_resources(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_objects_point_at_each_other() -> None:
    resources = base_resources()
    deployment, service = by_kind(resources, "Deployment"), by_kind(resources, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = by_kind(resources, kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items(), kind
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = by_kind(resources, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert (
        by_kind(resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == deployment["metadata"]["name"]
    )
    configmap = by_kind(resources, "ConfigMap")
    assert configmap["metadata"]["name"] in [
        source["configMapRef"]["name"]
        for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    ]
    assert all(key.startswith("SAVER_") for key in configmap["data"])


def test_hpa_scales_on_inflight_with_cpu_fallback() -> None:
    hpa = by_kind(base_resources(), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "saver_inflight_requests"
    assert kinds["Resource"]["resource"]["name"] == "cpu"
