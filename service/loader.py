"""Finding the pipelines to serve, and describing them for ``/v1/models``.

``model.loading`` (torch) is imported only when the torch backend or an untrained model is wanted: the ONNX
backend serves trained artifacts from exported graphs without importing torch at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.pipeline import SaverPipeline, Task
from service.settings import Settings

if TYPE_CHECKING:
    from model.graph_bundle import OnnxOptions

log = logging.getLogger(__name__)

TASKS: tuple[Task, ...] = ("mner", "mre")


def artifacts_dir(settings: Settings, task: str) -> Path:
    return settings.mner_artifacts if task == "mner" else settings.mre_artifacts


def has_artifacts(directory: Path) -> bool:
    """Either file counts: a half-written or corrupt export must fail loudly, never pass as "untrained"."""
    return (directory / "config.json").is_file() or (directory / "weights.safetensors").is_file()


def load_pipelines(settings: Settings) -> dict[str, SaverPipeline]:
    """One pipeline per task: trained artifacts when present, else an untrained model, said loudly."""
    if settings.fake_model:
        from service.fake import FakePipeline

        log.warning("fake_model is set: serving the deterministic TEST-ONLY fake model, not a real one")
        return {task: FakePipeline(task) for task in TASKS}

    onnx = onnx_options(settings) if settings.backend == "onnx" else None
    log.info("inference backend: %s", settings.backend)
    pipelines: dict[str, SaverPipeline] = {}
    for task in TASKS:
        directory = artifacts_dir(settings, task)
        if has_artifacts(directory) and onnx is not None:
            # exported graphs only: torch is imported only if they must be built first
            from model.onnx_pipeline import load_onnx_pipeline

            pipelines[task] = load_onnx_pipeline(task, directory, onnx)
            continue
        from model import loading  # heavy (torch); the torch backend, or an untrained model to build

        if has_artifacts(directory):
            pipelines[task] = loading.load_pipeline(directory, task, backend=settings.backend, onnx=onnx)
        else:
            log.warning(
                "no trained %s artifacts in %s: serving an UNTRAINED model (random weights); "
                "its answers are meaningless",
                task,
                directory,
                extra={"task": task, "trained": False},
            )
            pipelines[task] = loading.untrained_pipeline(task, backend=settings.backend, onnx=onnx)
    return pipelines


def onnx_options(settings: Settings) -> OnnxOptions:
    """Graphs cached per weights; each of the node's workers gets its share of the usable CPUs."""
    from model.graph_bundle import OnnxOptions
    from model.onnx_pipeline import available_cpus

    threads = settings.onnx_threads or max(1, available_cpus() // settings.workers)
    return OnnxOptions(cache_dir=settings.onnx_cache_dir, quantize=settings.onnx_quantize, threads=threads)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def calibration_of(pipeline: SaverPipeline, directory: Path | None) -> dict[str, Any] | None:
    """The gate calibration record: the pipeline's own if it has one, else ``calibration.json``."""
    own = getattr(pipeline, "calibration", None)
    if isinstance(own, dict):
        return own
    return _read_json(directory / "calibration.json") if directory else None


def calibrated_coverage(calibration: dict[str, Any] | None) -> float | None:
    """The per-unit activation rate calibration predicts over *all* units (what the service counts);
    ``coverage`` itself is over the gate-eligible units only and is the fallback for older records."""
    record = calibration or {}
    value = record.get("unit_activation_rate", record.get("coverage"))
    return float(value) if isinstance(value, int | float) else None


def backbones_of(pipeline: SaverPipeline, directory: Path | None) -> dict[str, Any] | None:
    own = getattr(pipeline, "backbones", None)
    if isinstance(own, dict):
        return own
    config = _read_json(directory / "config.json") if directory else None
    if config is None:
        return None
    keys = ("encoder", "vision_backbone", "backbones", "hashes")
    return {k: config[k] for k in keys if k in config} or None
