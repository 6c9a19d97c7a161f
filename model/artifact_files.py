"""What can be read from an artifact directory without building the model (and so without torch):
its JSON records, the calibrated threshold, and a hash of the files that define the model.

The torch-free ONNX worker (model/onnx_pipeline.py) finds its pre-exported graphs by that hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

WEIGHTS = "weights.safetensors"
# the files that decide what the graphs compute: the config (every hyper-parameter, the backbones'
# identities and hashes) and the stored weights; calibration and metrics do not change a graph
DEFINING_FILES = ("config.json", WEIGHTS)


class ArtifactError(RuntimeError):
    """Missing or corrupt artifacts: the service reports it and stays not-ready instead of crash-looping."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return data


def threshold_from_calibration(calibration: dict[str, Any]) -> float:
    """τ of a ``calibration.json`` record; +inf for "never activate". Without any calibration (an
    untrained or hand-built model) the gate's midpoint 0.5 is used, and such a model says it is not
    calibrated wherever it is described."""
    if not calibration:
        return 0.5
    if calibration.get("never_activate") or calibration.get("tau") is None:
        return math.inf
    return float(calibration["tau"])


def read_calibration(path: Path) -> dict[str, Any]:
    file = path / "calibration.json"
    return read_json(file) if file.is_file() else {}


def artifact_key(path: Path) -> str:
    """sha256 (20 hex digits) of the files that define the model; raises ``ArtifactError`` without config."""
    if not (path / "config.json").is_file():
        raise ArtifactError(f"no config.json in {path}")
    digest = hashlib.sha256()
    for name in DEFINING_FILES:
        file = path / name
        data = file.read_bytes() if file.is_file() else b""
        digest.update(name.encode() + len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:20]
