"""deploy/scripts/build_image.py without building: what each engine is asked to do."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.conftest import DEPLOY, load_script


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return load_script("scripts/build_image.py")


LISTING = """\
global.cert='{root}/ca.crt'
global.extra-index-url='file://{root}/pypi/simple https://mirror.example/simple'
global.find-links='{root}/wheels'
install.constraint='{root}/missing.txt'
:env:.default-timeout='180'
:env:.cert='{root}/env-ca.crt'
"""


def machine(tmp_path: Path) -> str:
    for name in ("ca.crt", "env-ca.crt"):
        (tmp_path / name).write_text("cert")
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    return LISTING.format(root=tmp_path)


def test_pip_config_becomes_one_pip_conf_with_env_overriding_files(build: ModuleType, tmp_path: Path) -> None:
    settings = build.parse_pip_config(machine(tmp_path))
    conf = settings.pip_conf()
    assert f"cert = {tmp_path}/env-ca.crt" in conf  # PIP_CERT beats the file, as in pip
    assert "default-timeout = 180" in conf
    assert "[install]" in conf and "constraint" in conf


def test_local_paths_are_mounted_and_a_file_index_brings_its_parent(
    build: ModuleType, tmp_path: Path
) -> None:
    paths = build.parse_pip_config(machine(tmp_path)).local_paths()
    assert tmp_path / "pypi" in paths  # index pages link to files beside simple/
    assert tmp_path / "wheels" in paths and tmp_path / "env-ca.crt" in paths
    assert tmp_path / "missing.txt" not in paths  # nothing that does not exist
    assert not any("mirror.example" in str(p) for p in paths)


def test_docker_gets_the_plain_build_and_nothing_of_this_machine(build: ModuleType, tmp_path: Path) -> None:
    command = build.build_command("docker", "saver:cpu", DEPLOY / "Dockerfile", DEPLOY.parent)
    assert command == [
        "docker",
        "build",
        "-f",
        str(DEPLOY / "Dockerfile"),
        "-t",
        "saver:cpu",
        str(DEPLOY.parent),
    ]


def test_daemonless_builds_are_docker_format_with_read_only_mounts(build: ModuleType, tmp_path: Path) -> None:
    mounts = [(tmp_path / "pip.conf", "/etc/pip.conf")]
    command = build.build_command("buildah", "t", Path("f"), Path("."), {"PYTHON_IMAGE": "base"}, mounts)
    assert command[:4] == ["buildah", "bud", "--isolation", "chroot"]
    assert "--layers" in command  # buildah caches no layer without it
    assert command[command.index("--format") + 1] == "docker"  # OCI would drop HEALTHCHECK
    assert f"{tmp_path}/pip.conf:/etc/pip.conf:ro" in command
    assert "PYTHON_IMAGE=base" in command


def test_the_defaults_come_from_the_dockerfile(build: ModuleType) -> None:
    assert build.dockerfile_default("PYTHON_IMAGE") == "python:3.11-slim-bookworm"
    assert build.dockerfile_default("TORCH_INDEX_URL").startswith("https://")


def test_docker_without_a_daemon_is_passed_over(build: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"docker": "/usr/bin/docker", "buildah": "/usr/bin/buildah"}
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 1})())
    assert build.choose_engine(present.get) == "buildah"
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 0})())
    assert build.choose_engine(present.get) == "docker"
