"""The dependency list the images install: onnxruntime and onnxruntime-gpu never together."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, load_script

script = load_script("scripts/requirements_from_pyproject.py")

PYPROJECT = ROOT / "pyproject.toml"


def names(requirements: list[str]) -> set[str]:
    return {script.distribution_name(r) for r in requirements}


def test_cpu_list_is_the_project_dependencies_with_cpu_onnxruntime() -> None:
    cpu = script.runtime_requirements(PYPROJECT)
    assert "onnxruntime" in names(cpu)
    assert "onnxruntime-gpu" not in names(cpu)
    assert any(r.replace(" ", "").startswith("torch==") for r in cpu), "torch must stay pinned"


def test_gpu_list_swaps_onnxruntime_for_the_gpu_extra() -> None:
    cpu, gpu = script.runtime_requirements(PYPROJECT), script.runtime_requirements(PYPROJECT, gpu=True)
    assert "onnxruntime-gpu" in names(gpu)
    assert "onnxruntime" not in names(gpu)
    assert names(gpu) - {"onnxruntime-gpu"} == names(cpu) - {"onnxruntime"}


def test_gpu_without_gpu_extra_is_an_error(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["onnxruntime==1"]\n')
    with pytest.raises(ValueError, match="gpu"):
        script.runtime_requirements(pyproject, gpu=True)


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("onnxruntime==1.31.1", "onnxruntime"),
        ("onnxruntime_gpu>=1", "onnxruntime-gpu"),
        ("Foo.Bar", "foo-bar"),
    ],
)
def test_distribution_names_are_normalised(requirement: str, name: str) -> None:
    assert script.distribution_name(requirement) == name
