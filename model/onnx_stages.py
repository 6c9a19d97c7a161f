"""The per-request stages after the text graph, exported from the model's own methods, and the bundle
directory (model/graph_bundle.py) that lets a worker serve a task with ONNX Runtime and without torch.

- ``decide``: ``SaverBase.decide_tensors`` (gate, text logits, τ, mode -> γ);
- ``query``: the head's selection query per unit (the selector itself is numpy, model/selector.py);
- ``items``: ``EvidenceEncoder.items``, a screened image's selector-space vector;
- ``fuse``: ``SaverBase.fuse_units``, evidence tokens, Set Transformer and energy head for the activated
  units of a post on padded selections (up to ``select_k`` images each) -> forced-vision logits.

Each is parity-tested against the torch pipeline (tests/model/test_onnx_pipeline.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from model.artifact_files import artifact_key
from model.base import VISION_MODES, SaverBase
from model.evidence import PostEvidence
from model.gather_tables import share_gather_tables
from model.graph_bundle import (
    BUNDLE_FORMAT,
    TABLES_DIR,
    Bundle,
    bundle_dir,
    find_bundle,
    read_bundle,
    write_record,
)
from model.onnx_export import (
    OPSET,
    TEXT_GRAPH,
    TEXT_GRAPH_INT8,
    _atomic_export,
    ensure_evidence_graph,
    ensure_text_graph,
    ensure_tier_graphs,
    evidence_graph_key,
    text_graph_key,
    vision_graph_key,
)
from model.pixels import transform_record
from model.vision.backbone import VisionBackbone

if TYPE_CHECKING:
    from model.artifacts import ArtifactInfo

log = logging.getLogger(__name__)

EVIDENCE_MAX_SUBWORDS = 64  # TextEncoder.embed_evidence's truncation


class DecideGraph(nn.Module):
    def __init__(self, model: SaverBase) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, gate: torch.Tensor, text_logits: torch.Tensor, threshold: torch.Tensor, mode: torch.Tensor
    ) -> torch.Tensor:
        return self.model.decide_tensors(gate, text_logits, threshold, mode)


class QueryGraph(nn.Module):
    def __init__(self, model: SaverBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        return self.model.head.query(units)


class ItemsGraph(nn.Module):
    """Inputs: the evidence channels the model reads and the backbone gives (``text``, ``image``)."""

    def __init__(self, model: SaverBase, inputs: list[str]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.inputs, tensors, strict=True))
        return self.model.evidence.items(PostEvidence(text=given.get("text"), image=given.get("image")))


class FuseGraph(nn.Module):
    """Inputs: units, selected, valid, then the evidence channels (``text``; ``image``, ``regions``)."""

    def __init__(self, model: SaverBase, inputs: list[str]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(
        self, units: torch.Tensor, selected: torch.Tensor, valid: torch.Tensor, *tensors: torch.Tensor
    ) -> torch.Tensor:
        given = dict(zip(self.inputs, tensors, strict=True))
        return self.model.fuse_units(
            units, selected, valid, given.get("text"), given.get("image"), given.get("regions")
        )


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: dict[str, dict[int, str]],
    output: str,
    axes: dict[int, str],
) -> None:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference kernel has no ONNX form: trace the plain attention ops
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            _atomic_export(
                lambda tmp: torch.onnx.export(
                    module.eval(),
                    args,
                    tmp,
                    dynamo=False,
                    input_names=list(inputs),
                    output_names=[output],
                    dynamic_axes={**inputs, output: axes},
                    opset_version=OPSET,
                ),
                path,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def channels(model: SaverBase, backbone: VisionBackbone) -> list[str]:
    """The evidence inputs of the items and fuse graphs: what the model reads and the backbone gives."""
    read = model.cfg.evidence_channels
    out = ["text"] if "text" in read and backbone.tag_vocabulary is not None else []
    return [*out, "image"] if "image" in read else out


def export_stage_graphs(model: SaverBase, backbone: VisionBackbone, directory: Path) -> None:
    """decide.onnx, query.onnx, items.onnx and fuse.onnx of ``model`` into ``directory``."""
    cfg, d = model.cfg, model.cfg.d_model
    hidden = model.encoder.bert.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    a, m, k, r = 3, 3, max(1, cfg.select_k), backbone.num_regions
    gate = torch.rand(a, generator=gen)
    logits = torch.randn(a, cfg.n_classes, generator=gen)
    _export(
        DecideGraph(model),
        (gate, logits, torch.tensor(0.5), torch.tensor(VISION_MODES.index("auto"))),
        directory / "decide.onnx",
        {"gate": {0: "units"}, "text_logits": {0: "units"}, "threshold": {}, "mode": {}},
        "gamma",
        {0: "units"},
    )
    units = torch.randn(a, d, generator=gen)
    _export(
        QueryGraph(model),
        (units,),
        directory / "query.onnx",
        {"units": {0: "units"}},
        "queries",
        {0: "units"},
    )
    names = channels(model, backbone)
    example = {
        "text": torch.randn(m, hidden, generator=gen),
        "image": torch.randn(m, backbone.dim, generator=gen),
        "regions": torch.randn(m, r, backbone.dim, generator=gen),
    }
    _export(
        ItemsGraph(model, names),
        tuple(example[n] for n in names),
        directory / "items.onnx",
        {n: {0: "images"} for n in names},
        "items",
        {0: "images"},
    )
    fuse_names = [*names, "regions"] if "image" in names else names
    selected = torch.arange(a * k).view(a, k) % m
    valid = torch.ones(a, k, dtype=torch.bool)
    valid[2, 1:] = False  # a unit with fewer images than select_k: the padding path is traced too
    fuse_inputs: dict[str, dict[int, str]] = {
        "units": {0: "units"},
        "selected": {0: "units", 1: "k"},
        "valid": {0: "units", 1: "k"},
        **{n: {0: "images"} for n in fuse_names},
    }
    _export(
        FuseGraph(model, fuse_names),
        (units, selected, valid, *(example[n] for n in fuse_names)),
        directory / "fuse.onnx",
        fuse_inputs,
        "logits",
        {0: "units"},
    )


def export_bundle(
    model: SaverBase,
    backbone: VisionBackbone,
    root: Path,
    key: str,
    identity: dict[str, Any],
    quantize: bool = False,
) -> Bundle:
    """Every graph a torch-free worker needs for ``model``'s task into ``root/<task>-<key>`` (plus the
    shared ``evidence-*`` and ``vision-*`` siblings), the tokenizer, and ``bundle.json`` last. Reuses what
    is there already. ``identity``: name, version, trained (and threshold when there is no calibration)."""
    if backbone.transform is None:
        raise ValueError(
            f"backbone {backbone.name} has no ImageTransform: its preprocessing cannot be exported"
        )
    cfg = model.cfg
    directory = bundle_dir(root, cfg.task, key)
    found = read_bundle(directory, cfg.task, key)
    if found is not None and (found.has("text_int8") or not quantize):
        return found
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    text_key = text_graph_key(model)
    ensure_text_graph(model, directory, quantize=False, key=text_key)
    if quantize:
        ensure_text_graph(model, directory, quantize=True, key=text_key)
    export_stage_graphs(model, backbone, directory)
    vision_dir = root / f"vision-{vision_graph_key(backbone)}"
    tiers = ensure_tier_graphs(backbone, vision_dir)
    evidence = None
    names = channels(model, backbone)
    if "text" in names:
        ev_dir = root / f"evidence-{evidence_graph_key(model.encoder)}"
        evidence = ensure_evidence_graph(model.encoder, ev_dir)
    # the word-embedding table, held by the text and evidence graphs alike, is stored once under ``root``
    tables = sorted(
        {
            table
            for graph in [directory / TEXT_GRAPH, *([directory / TEXT_GRAPH_INT8] if quantize else [])]
            + ([] if evidence is None else [evidence])
            for table in share_gather_tables(graph, root / TABLES_DIR)
        }
    )
    tokenizer = model.encoder.tokenizer
    (directory / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str())
    vocabulary = backbone.tag_vocabulary

    def rel(path: Path) -> str:
        return str(Path("..") / path.parent.name / path.name) if path.parent != directory else path.name

    record = {
        "format": BUNDLE_FORMAT,
        "task": cfg.task,
        "key": key,
        **identity,
        "exported_with": {"torch": torch.__version__, "text_graph_key": text_key},
        "labels": list(cfg.labels),
        "config": {
            "max_subwords": cfg.max_subwords,
            "max_span_width": cfg.max_span_width,
            "evidence_tags_k": cfg.evidence_tags_k,
            "select_k": cfg.select_k,
            "selector": cfg.selector,
            "lambda_relevance": cfg.lambda_relevance,
            "lambda_coverage": cfg.lambda_coverage,
            "channels": names,
            "d_model": cfg.d_model,
            "n_classes": cfg.n_classes,
        },
        "tokenizer": {
            "file": "tokenizer.json",
            "pad_id": int(tokenizer.pad_token_id),
            "pad_token": str(tokenizer.pad_token),
            "evidence_max_subwords": EVIDENCE_MAX_SUBWORDS,
        },
        "graphs": {
            "text": TEXT_GRAPH,
            "text_int8": TEXT_GRAPH_INT8 if quantize else None,
            "decide": "decide.onnx",
            "query": "query.onnx",
            "items": "items.onnx",
            "fuse": "fuse.onnx",
            "evidence": None if evidence is None else rel(evidence),
        },
        "tables": [rel(table) for table in tables],
        "vision": {
            "name": backbone.name,
            "dim": backbone.dim,
            "screen_size": backbone.screen_size,
            "detail_size": backbone.detail_size,
            "num_regions": backbone.num_regions,
            "max_batch": backbone.max_batch,
            "transform": transform_record(backbone.transform),
            "tags": None if vocabulary is None else list(vocabulary),
            "graphs": {tier: rel(path) for tier, path in tiers.items()},
        },
    }
    write_record(directory, record)
    log.info(
        "exported the %s graph bundle to %s in %.1f s", cfg.task, directory, time.perf_counter() - started
    )
    bundle = read_bundle(directory, cfg.task, key)
    assert bundle is not None
    return bundle


def build_artifact_bundle(artifacts: Path, root: Path, quantize: bool = False) -> Bundle:
    """Load the artifacts in torch and export their bundle under ``root``, keyed by ``artifact_key``."""
    from model.artifacts import load_artifacts
    from model.vision import build_backbone

    model, info = load_artifacts(artifacts)
    identity = {"name": info.name, "version": info.version, "trained": info.trained}
    backbone = build_backbone(model.cfg.vision_backbone)
    return export_bundle(model, backbone, root, artifact_key(artifacts), identity, quantize=quantize)


def model_key(model: SaverBase, backbone: VisionBackbone) -> str:
    """A model built in memory has no files to hash: its weights (and its backbone's) are the key."""
    return hashlib.sha256(f"{text_graph_key(model)}:{vision_graph_key(backbone)}".encode()).hexdigest()[:20]


def build_model_bundle(
    model: SaverBase,
    info: ArtifactInfo,
    roots: list[Path],
    quantize: bool = False,
    backbone: VisionBackbone | None = None,
) -> Bundle:
    """The bundle of ``model`` from the first root that has it, else exported into the last root."""
    from model.vision import build_backbone

    backbone = backbone or build_backbone(model.cfg.vision_backbone)
    key = model_key(model, backbone)
    found = find_bundle(model.cfg.task, key, roots)
    if found is not None and (found.has("text_int8") or not quantize):
        return found
    identity = {"name": info.name, "version": info.version, "trained": info.trained}
    return export_bundle(model, backbone, roots[-1], key, identity, quantize=quantize)
