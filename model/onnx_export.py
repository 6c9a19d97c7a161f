"""ONNX graphs of the heavy stages: the text path (encoder, unit representations, gate, text scores), the
base encoder for evidence text, and the two tiers of the vision backbone. The per-request stages after
them (decide, query, items, fuse) are exported by ``model/onnx_stages.py``, which also writes the bundle
directory a torch-free worker serves from.

Graphs live in a directory with a ``manifest.json`` recording the key each graph was built for: a hash of
the model's config and stored weights (plus the encoder's and backbone's own hashes), so a graph built for
other weights is never used. ``saver export --onnx`` writes that directory into the artifacts; the service
otherwise builds it into a cache on first start.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.artifacts import stored_state
from model.base import SaverBase
from model.gather_tables import atomic_write, copy_table_metadata
from model.graph_bundle import DEFAULT_CACHE_DIR as DEFAULT_CACHE_DIR  # re-exported
from model.lora import merge_lora, strip_lora
from model.text_encoder import TextEncoder, file_sha256
from model.vision.backbone import Tier, VisionBackbone

log = logging.getLogger(__name__)

# Bump when the graphs' inputs, outputs or semantics change: old cached graphs then stop matching.
GRAPH_FORMAT = 3
OPSET = 17
MANIFEST = "manifest.json"
TEXT_GRAPH = "text.onnx"
TEXT_GRAPH_INT8 = "text.int8.onnx"
EVIDENCE_GRAPH = "evidence.onnx"
# TorchScript export names nodes by module path; TextGraph holds the model as ``model``, whose
# encoder.bert.encoder.layer.* are the transformer blocks
ENCODER_NODE_PREFIX = "/encoder/bert/encoder/layer"


class TextGraph(nn.Module):
    """The whole text path of a SAVER model as tensors in, tensors out.

    Inputs: input_ids, attention_mask (B, S); first_subword, shapes (B, N) with N >= max_span_width
    (callers pad words so the span max-pool table traces with a fixed shift); spans (B, U, 2) word spans,
    end exclusive (MNER: candidate spans; MRE: U = 2, head then tail).
    Outputs MNER: units (B, U, d), gate probabilities (B, U), text logits (B, U, C).
    Outputs MRE: pair vectors (B, d), pair gate probabilities (B,), text logits (B, C).
    """

    def __init__(self, model: SaverBase) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        merge_lora(self.model.encoder.bert)  # plain Linears: no adapter matmuls at serving time

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        first_subword: torch.Tensor,
        shapes: torch.Tensor,
        spans: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m: Any = self.model  # MnerModel or MreModel: each exports its own ``text_graph``
        words = m.encoder(input_ids, attention_mask, first_subword, shapes)  # (B, N, H + shape)
        return m.text_graph(words, shapes != 0, spans)  # shape 0 marks padded words


class EvidenceTextGraph(nn.Module):
    """``TextEncoder.embed_evidence``: the *base* encoder (adapters dropped, as in training) mean-pooled
    over the tokens of a text about an image. Inputs input_ids, attention_mask (T, S); output (T, H)."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.bert = copy.deepcopy(encoder.bert).eval()
        strip_lora(self.bert)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (T, S, H)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _atomic_export(write: Any, path: Path) -> None:
    """Write to a temporary file and rename: concurrent workers building one cache never see half a graph."""
    atomic_write(path, write)


def export_text_graph(model: SaverBase, path: Path) -> None:
    graph = TextGraph(model)
    enc = model.encoder.prepare([["Alice", "met", "Bob", "in", "Paris", "today", "with", "the", "team", "."]])
    n = enc.first_subword.size(1)
    spans, unit_axis = model.graph_example_spans(n)  # the task says what its spans input looks like
    span_axes = {0: "batch", 1: "units"} if unit_axis else {0: "batch"}
    out_axes = [dict(span_axes)] * 3
    args = (enc.input_ids, enc.attention_mask, enc.first_subword, enc.shapes, spans)
    names = ["input_ids", "attention_mask", "first_subword", "shapes", "spans"]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "subwords"},
        "attention_mask": {0: "batch", 1: "subwords"},
        "first_subword": {0: "batch", 1: "words"},
        "shapes": {0: "batch", 1: "words"},
        "spans": span_axes,
    }
    outputs = ["units", "gate", "text_logits"]
    axes.update(dict(zip(outputs, out_axes, strict=True)))
    started = time.perf_counter()
    with torch.no_grad():
        _atomic_export(
            lambda tmp: torch.onnx.export(
                graph,
                args,
                tmp,
                dynamo=False,  # the TorchScript exporter handles BERT's dynamic axes without guards
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
            ),
            path,
        )
    log.info(
        "exported the %s text graph to %s in %.1f s", model.cfg.task, path, time.perf_counter() - started
    )


def export_evidence_graph(encoder: TextEncoder, path: Path) -> None:
    enc = encoder.tokenizer(["a photo of dog, stadium", "a photo"], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "texts", 1: "subwords"}, "attention_mask": {0: "texts", 1: "subwords"}}
    with torch.no_grad():
        _atomic_export(
            lambda tmp: torch.onnx.export(
                EvidenceTextGraph(encoder),
                (enc["input_ids"], enc["attention_mask"]),
                tmp,
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["vectors"],
                dynamic_axes={**axes, "vectors": {0: "texts"}},
                opset_version=OPSET,
            ),
            path,
        )
    log.info("exported the evidence-text encoder to %s", path)


def export_tier_graph(backbone: VisionBackbone, tier: Tier, path: Path) -> None:
    size = backbone.screen_size if tier == "screen" else backbone.detail_size
    pixels = torch.zeros(2, 3, size, size)
    graph = backbone.tier_graph(tier).eval()
    with torch.no_grad():
        n_out = len(graph(pixels))
    outputs = [f"out{i}" for i in range(n_out)]
    axes = {"pixels": {0: "images"}, **{name: {0: "images"} for name in outputs}}
    _atomic_export(
        lambda tmp: torch.onnx.export(
            graph,
            (pixels,),
            tmp,
            dynamo=False,
            input_names=["pixels"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
        ),
        path,
    )
    log.info("exported the %s tier of %s to %s", tier, backbone.name, path)


def quantize_text_graph(src: Path, dst: Path) -> None:
    """int8 dynamic quantisation (QInt8 weights, activations quantised on the fly) of the encoder's
    transformer layers only: they hold nearly all the weights and FLOPs, while the small span, gate and
    scoring layers stay fp32 so the gate scores the calibration was done on move as little as possible."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False)
    encoder_nodes = [n.name for n in graph.graph.node if n.name.startswith(ENCODER_NODE_PREFIX)]
    if not encoder_nodes:
        raise RuntimeError(f"no encoder nodes named {ENCODER_NODE_PREFIX}* in {src}: was the graph renamed?")
    _atomic_export(
        lambda tmp: quantize_dynamic(
            str(src),
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,  # one scale per output column: about half the error of per-tensor scales here
            nodes_to_quantize=encoder_nodes,
        ),
        dst,
    )
    copy_table_metadata(src, dst)  # a text graph whose word table is an input (model/gather_tables.py)
    log.info("quantised the encoder of %s to int8 at %s", src.name, dst)


# --- keys and the graph directory ------------------------------------------------------------------
def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


@functools.cache
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def encoder_identity(encoder: TextEncoder) -> str:
    """``encoder.identity()`` with the weights' hash computed once per file version: every key needs it,
    and hashing the 90 MB MiniLM file four times (two tasks, text and evidence) slows startup."""
    weights = next(iter(sorted(encoder.path.glob("*.safetensors"))), None)
    identity = {"spec": encoder.cfg.encoder}  # not the path: graphs shipped in artifacts must match anywhere
    if weights is not None:
        stat = weights.stat()
        identity["sha256"] = _file_identity(str(weights), stat.st_size, stat.st_mtime_ns)
    return json.dumps(identity, sort_keys=True)


def text_graph_key(model: SaverBase) -> str:
    """Config, every stored tensor (heads, gate, LoRA deltas) and the encoder's own weights hash."""
    parts = [f"format={GRAPH_FORMAT} torch={torch.__version__}".encode()]
    parts.append(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    parts.append(encoder_identity(model.encoder).encode())
    for name, tensor in sorted(stored_state(model).items()):
        parts.append(name.encode())
        parts.append(tensor.contiguous().numpy().tobytes())
    return _digest(parts)


def evidence_graph_key(encoder: TextEncoder) -> str:
    """The evidence encoder is the base encoder alone: one graph serves every model on that encoder."""
    return _digest(
        [
            f"format={GRAPH_FORMAT} torch={torch.__version__}".encode(),
            encoder_identity(encoder).encode(),
        ]
    )


def vision_graph_key(backbone: VisionBackbone) -> str:
    return _digest(
        [
            f"format={GRAPH_FORMAT} torch={torch.__version__}".encode(),
            json.dumps(backbone.identity(), sort_keys=True, default=str).encode(),
        ]
    )


@dataclass
class GraphDir:
    """A directory of graphs plus the manifest saying which key each was built for."""

    path: Path

    def manifest(self) -> dict[str, str]:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def graph(self, name: str, key: str) -> Path | None:
        """The graph file if it exists and was built for ``key``; None otherwise."""
        path = self.path / name
        return path if path.is_file() and self.manifest().get(name) == key else None

    def record(self, name: str, key: str) -> None:
        entries = self.manifest()
        entries[name] = key
        tmp = self.path / f".{MANIFEST}.{os.getpid()}"
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path / MANIFEST)


def ensure_text_graph(
    model: SaverBase, directory: Path, quantize: bool = False, key: str | None = None
) -> Path:
    """The (optionally int8) text graph for ``model`` in ``directory``, exported first if missing or stale."""
    graphs = GraphDir(directory)
    key = key or text_graph_key(model)
    name = TEXT_GRAPH_INT8 if quantize else TEXT_GRAPH
    found = graphs.graph(name, key)
    if found is not None:
        return found
    full = graphs.graph(TEXT_GRAPH, key)
    if full is None:
        log.info(
            "building the %s text graph into %s (first start with these weights)", model.cfg.task, directory
        )
        export_text_graph(model, directory / TEXT_GRAPH)
        graphs.record(TEXT_GRAPH, key)
        full = directory / TEXT_GRAPH
    if quantize:
        quantize_text_graph(full, directory / TEXT_GRAPH_INT8)
        graphs.record(TEXT_GRAPH_INT8, key)
    return directory / name


def ensure_tier_graphs(backbone: VisionBackbone, directory: Path, key: str | None = None) -> dict[Tier, Path]:
    graphs = GraphDir(directory)
    key = key or vision_graph_key(backbone)
    paths: dict[Tier, Path] = {}
    tiers: tuple[Tier, ...] = ("screen", "detail")
    for tier in tiers:
        name = f"{tier}.onnx"
        found = graphs.graph(name, key)
        if found is None:
            log.info("building the %s graph of %s into %s", tier, backbone.name, directory)
            export_tier_graph(backbone, tier, directory / name)
            graphs.record(name, key)
            found = directory / name
        paths[tier] = found
    return paths


def ensure_evidence_graph(encoder: TextEncoder, directory: Path, key: str | None = None) -> Path:
    graphs = GraphDir(directory)
    key = key or evidence_graph_key(encoder)
    found = graphs.graph(EVIDENCE_GRAPH, key)
    if found is None:
        log.info("building the evidence-text graph into %s", directory)
        export_evidence_graph(encoder, directory / EVIDENCE_GRAPH)
        graphs.record(EVIDENCE_GRAPH, key)
        found = directory / EVIDENCE_GRAPH
    return found
