"""Tests that need an outside tool skip on a developer's machine without it, but fail under ``CI=true``:
there, a missing tool means the check did not run, which must not pass for a green build."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_tool(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it (.ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def import_tool(name: str, hint: str = "") -> ModuleType:
    """``pytest.importorskip`` that fails instead of skipping under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_tool(f"python module {name!r} not installed{': ' + hint if hint else ''}")
