"""The CPU image built from a clean clone and served for real (``make image-test``; marker ``image``).

Builds ``saver:cpu`` with deploy/scripts/build_image.py from a ``git clone`` of HEAD (cold or cached, then
once more to time a warm build), runs the compose ``saver`` service inside it with
``buildah run --isolation chroot --network host`` (the image's CMD, ENV and USER; compose's environment,
tmpfs and health check; see tests/deploy/imagerun.py), and checks it the way a user and Prometheus would.
Figures go to runs/image-test/report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.service_process import free_port, wait_ready
from tests.deploy import imagerun
from tests.deploy.conftest import DEPLOY, ROOT
from tests.service.imageserver import ImageServer, start_image_server
from tests.tooling import missing_tool

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

REPORT = ROOT / "runs" / "image-test" / "report.json"
TAG = "saver:cpu"
figures: dict[str, Any] = {}


def record(**values: Any) -> None:
    figures.update(values)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=2, default=str) + "\n")


def build(context: Path) -> float:
    started = time.monotonic()
    script = context / "deploy" / "scripts" / "build_image.py"
    command = [sys.executable, str(script), "--tag", TAG, "--context", str(context)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return time.monotonic() - started


def inspect() -> dict[str, Any]:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", TAG], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("buildah") is None:
        missing_tool("buildah not installed (deploy/scripts/ensure_image_tools.sh installs it as root)")
    clone = tmp_path_factory.mktemp("clone") / "saver"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    first = build(clone)
    warm = build(clone)  # every layer cached now: what a rebuild without changes costs
    details = inspect()
    size = subprocess.run(["buildah", "images", "--format", "{{.Size}}", TAG], capture_output=True, text=True)
    record(
        commit=head.stdout.strip(),
        build_s=round(first, 1),
        warm_build_s=round(warm, 1),
        image_size=size.stdout.strip(),
    )
    return details


@pytest.fixture(scope="module")
def run(image: dict[str, Any]) -> imagerun.ServiceRun:
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["saver"]
    config = imagerun.built_image_config(image)
    # Image URLs point at the local image server on 127.0.0.1, which the service refuses by default.
    added = {"SAVER_ALLOW_LOOPBACK": "true"}
    listens = int({**config.env, **service.get("environment", {})}.get("SAVER_PORT", "8000"))
    if not port_free(listens):  # host network: a busy 8000 (another service) would collide
        added["SAVER_PORT"] = str(free_port())
    return imagerun.service_run(service, config, added)


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of the image's filesystem; tmpfs and kernel mounts excluded."""
    found: dict[str, tuple[int, int]] = {}
    for directory, dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        if relative == ".":
            dirs[:] = [d for d in dirs if d not in ("tmp", "proc", "sys", "dev")]
        for name in files:
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


class Served:
    def __init__(
        self, run: imagerun.ServiceRun, container: str, proc: subprocess.Popen[bytes], log: Path
    ) -> None:
        self.run, self.container, self.proc, self.log = run, container, proc, log
        self.url = f"http://127.0.0.1:{run.port}"
        self.before: dict[str, tuple[int, int]] = {}
        self.rootfs = Path()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def served(run: imagerun.ServiceRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    container = subprocess.run(
        ["buildah", "from", TAG], capture_output=True, text=True, check=True
    ).stdout.strip()
    log = tmp_path_factory.mktemp("service") / "service.log"
    rootfs = Path(
        subprocess.run(
            ["buildah", "mount", container], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    before = snapshot(rootfs)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            run.serve(container), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = Served(run, container, proc, log)
    served.before, served.rootfs = before, rootfs
    try:
        started = time.monotonic()
        try:
            wait_ready(served.url, run.start_period_s, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{served.log_tail()}") from exc
        record(ready_s=round(time.monotonic() - started, 1), added_env=run.added_env)
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run(["buildah", "umount", container], capture_output=True)
        subprocess.run(["buildah", "rm", container], capture_output=True)


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


def test_the_image_keeps_the_dockerfile_command_user_and_healthcheck(image: dict[str, Any]) -> None:
    built = imagerun.built_image_config(image)
    declared = imagerun.dockerfile_image_config(DEPLOY / "Dockerfile")
    assert (built.command, built.user, built.healthcheck) == (
        declared.command,
        declared.user,
        declared.healthcheck,
    )


def test_the_compose_health_check_passes_inside_the_image(served: Served) -> None:
    done = subprocess.run(
        served.run.check_health(served.container), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    uids = listening_uids(served.proc.pid)
    record(healthcheck_exit=done.returncode, service_uids=sorted(uids))
    assert uids == {10001}, uids


def listening_uids(session: int) -> set[int]:
    """Real uids of the python processes in the service's session (buildah's own helpers run as root)."""
    uids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session or b"python" not in (entry / "cmdline").read_bytes():
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        uids.add(int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))))
    return uids


def test_v1_models_serves_the_trained_defaults(served: Served) -> None:
    models = httpx.get(f"{served.url}/v1/models", timeout=10).json()["models"]
    record(models=[{k: m[k] for k in ("task", "name", "version", "trained")} for m in models])
    assert {m["task"] for m in models} == {"mner", "mre"}
    assert all(m["trained"] for m in models)


def test_mner_with_a_real_jpeg_from_the_image_server(served: Served, images: ImageServer) -> None:
    url = images.url(images.image_paths[0])
    body = {
        "text": "Barack Obama visits Paris with Angela Merkel",
        "image_urls": [url],
        "options": {"vision": "always"},
    }
    r = httpx.post(f"{served.url}/mner", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    record(
        mner_photo="real photo" if images.uses_real_images else "generated JPEG",
        mner_entities=[(e["text"], e["type"]) for e in answer["entities"]],
        mner_vision={k: answer["vision"][k] for k in ("units_activated", "images_fetched", "fallback")},
        mner_timings_ms=answer["timings_ms"],
    )
    assert answer["entities"]
    assert answer["vision"]["images_fetched"] == 1 and answer["vision"]["fallback"] is None


def test_mre(served: Served) -> None:
    body = {
        "text": "Barack Obama lives in Washington",
        "head": {"text": "Barack Obama"},
        "tail": {"text": "Washington"},
    }
    r = httpx.post(f"{served.url}/mre", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    record(mre={k: answer[k] for k in ("relation", "score") if k in answer})
    assert "relation" in answer


def test_metrics_count_the_requests(served: Served) -> None:
    text = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'saver_requests_total{endpoint="mner",status="200"}' in text
    assert 'saver_requests_total{endpoint="mre",status="200"}' in text


def test_prometheus_scrapes_the_service_with_the_shipped_config(
    served: Served, prometheus_tools: dict[str, str], tmp_path: Path
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    port = free_port()
    targets = {"saver:8000": f"127.0.0.1:{served.run.port}", "localhost:9090": f"127.0.0.1:{port}"}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[t] for t in static["targets"]]
    # compose mounts ./prometheus/rules at /etc/prometheus/rules: the same files, from here
    config["rule_files"] = [str(DEPLOY / "prometheus/rules/*.yaml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    command = [
        prometheus_tools["prometheus"],
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"
    started = time.monotonic()
    try:
        values: dict[str, float] = {}
        while time.monotonic() - started < 60 and not ({"mner", "mre"} <= values.keys()):
            time.sleep(1)
            try:
                result = httpx.get(api, params={"query": "sum by (endpoint) (saver_requests_total)"}).json()
            except httpx.HTTPError:
                continue
            values = {r["metric"]["endpoint"]: float(r["value"][1]) for r in result["data"]["result"]}
        up = httpx.get(api, params={"query": 'up{job="saver"}'}).json()["data"]["result"]
        record(
            prometheus_first_scrape_s=round(time.monotonic() - started, 1),
            prometheus_requests=values,
            prometheus_up=[u["value"][1] for u in up],
        )
        assert [u["value"][1] for u in up] == ["1"], log.read_text()[-2000:]
        assert values.get("mner", 0) >= 1 and values.get("mre", 0) >= 1, (values, log.read_text()[-2000:])
    finally:
        proc.terminate()
        proc.wait(30)


def test_read_only_nothing_in_the_image_filesystem_changed(served: Served) -> None:
    """compose says read_only; chroot cannot enforce it, so check after the fact that it would hold."""
    assert served.proc.poll() is None, served.log_tail()
    after = snapshot(served.rootfs)
    changed = sorted(p for p in set(after) | set(served.before) if after.get(p) != served.before.get(p))
    record(files_changed=len(changed))
    assert not changed, changed[:20]
