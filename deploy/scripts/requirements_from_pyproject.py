"""Print the runtime requirements of pyproject.toml, one per line, for the image's dependency layer.

The Dockerfiles install dependencies from this list *before* copying the code, so that the (large, slow)
dependency layer is rebuilt only when pyproject.toml or constraints.txt change. With ``--gpu`` the
``onnxruntime`` pin is replaced by the ``gpu`` extra (``onnxruntime-gpu``): the two wheels ship the same
``onnxruntime`` module and must never share an environment. With ``--lean`` the distributions listed in
``[tool.saver] lean-excludes`` are left out: torch and what only building the graphs needs, for the CPU
image's torch-free runtime stage (every other pin is the same line of ``[project].dependencies``).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def distribution_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string (``Foo_Bar>=1`` -> ``foo-bar``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(pyproject: Path, gpu: bool = False, lean: bool = False) -> list[str]:
    """The ``[project].dependencies`` of ``pyproject``; for the GPU image with onnxruntime swapped out;
    ``lean``: without ``[tool.saver] lean-excludes`` (the torch-free serving set)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    requirements: list[str] = list(project["dependencies"])
    if lean:
        if gpu:
            raise ValueError("--lean is the CPU image's runtime set; the GPU image keeps torch")
        excludes = {
            distribution_name(n) for n in data.get("tool", {}).get("saver", {}).get("lean-excludes", [])
        }
        if not excludes:
            raise ValueError(f"{pyproject} has no [tool.saver] lean-excludes")
        unknown = excludes - {distribution_name(r) for r in requirements}
        if unknown:
            raise ValueError(f"lean-excludes names no dependency: {sorted(unknown)}")
        return [r for r in requirements if distribution_name(r) not in excludes]
    if not gpu:
        return requirements
    gpu_extra: list[str] = list(project.get("optional-dependencies", {}).get("gpu", []))
    if not gpu_extra:
        raise ValueError(f"{pyproject} has no 'gpu' extra")
    return [r for r in requirements if distribution_name(r) != "onnxruntime"] + gpu_extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--gpu", action="store_true", help="replace onnxruntime by the 'gpu' extra")
    parser.add_argument("--lean", action="store_true", help="leave out [tool.saver] lean-excludes (no torch)")
    args = parser.parse_args(argv)
    wanted = runtime_requirements(args.pyproject, gpu=args.gpu, lean=args.lean)
    sys.stdout.write("".join(f"{r}\n" for r in wanted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
