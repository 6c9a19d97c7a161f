"""Shared fixtures of the deployment tests: the deploy/ scripts as modules, and promtool/prometheus."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.tooling import missing_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENSURE_PROMETHEUS = DEPLOY / "scripts" / "ensure_prometheus.sh"


def load_script(relative: str) -> ModuleType:
    """Import a file under deploy/ (not a package) as a module."""
    path = DEPLOY / relative
    name = "deploy_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def venv_tool(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


@pytest.fixture(scope="session")
def dashboard_tools() -> ModuleType:
    return load_script("scripts/render_dashboard.py")


@pytest.fixture(scope="session")
def prometheus_tools() -> dict[str, str]:
    """Paths of ``promtool`` and ``prometheus``, installing the Debian package when we may (root)."""
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        done = subprocess.run(["bash", str(ENSURE_PROMETHEUS)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            missing_tool(f"prometheus/promtool unavailable: {done.stderr.strip() or done.returncode}")
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if not (promtool and prometheus):
        missing_tool("prometheus/promtool still not on PATH after deploy/scripts/ensure_prometheus.sh")
    return {"promtool": promtool, "prometheus": prometheus}


@pytest.fixture(scope="session")
def promtool(prometheus_tools: dict[str, str]) -> str:
    return prometheus_tools["promtool"]
