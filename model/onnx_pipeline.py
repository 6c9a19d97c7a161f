"""``SaverPipeline`` with its heavy stages in ONNX Runtime: the text path (encoder with shape features, unit
representations, gate, text scores), the base encoder that embeds evidence text (backbone tags), and the
vision backbone's screen and detail tiers.

Everything per-request and cheap is inherited from ``TorchPipeline`` unchanged: activation, selection,
fusion of the few activated units through the small torch heads, and decoding. Tokenisation stays in
Python (the fast tokenizer), exactly as in the torch path, so both backends see identical inputs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from model.artifacts import ArtifactInfo
from model.base import SaverBase, TextUnits
from model.inference import TorchPipeline
from model.onnx_export import (
    DEFAULT_CACHE_DIR,
    EVIDENCE_GRAPH,
    TEXT_GRAPH,
    TEXT_GRAPH_INT8,
    ensure_evidence_graph,
    ensure_text_graph,
    ensure_tier_graphs,
    evidence_graph_key,
    find_graph_dir,
    text_graph_key,
    vision_graph_key,
)
from model.pipeline import Pair
from model.vision import build_backbone
from model.vision.backbone import Tier, VisionBackbone

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


# weak: a session lives as long as some pipeline holds it (tests build many)
_SESSIONS: weakref.WeakValueDictionary[tuple[str, int | None], ort.InferenceSession] = (
    weakref.WeakValueDictionary()
)
_SESSIONS_LOCK = threading.Lock()


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """One session per graph file and thread count in the process: the MNER and MRE pipelines share the
    vision and evidence-text graphs (``run`` is thread-safe), so their weights are held once."""
    key = (str(path.resolve()), threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = _new_session(path, threads)
        return session


def _new_session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1  # the graphs are one chain of ops; parallelism lives inside each op
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between ops or after a run: on a few cores the spinning pool steals the CPU from the
    # Python work around each run (tokenising, decoding, HTTP) and from the other sessions (measured in
    # README, issue 13: P50 and P90 both lower with spinning off)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers())


class OnnxBackbone(VisionBackbone):
    """A torch backbone's preprocessing and tag vocabulary, with the screen and detail tiers run by ONNX
    Runtime. The inherited ``screen``/``detail`` (chunking, tags) therefore behave exactly as in torch."""

    def __init__(
        self, backbone: VisionBackbone, graphs: dict[Tier, Path], threads: int | None = None
    ) -> None:
        super().__init__()
        self.inner = backbone  # kept for preprocessing, tags and identity; its forward is never run
        self.name, self.dim = backbone.name, backbone.dim
        self.screen_size, self.detail_size = backbone.screen_size, backbone.detail_size
        self.num_regions, self.max_batch = backbone.num_regions, backbone.max_batch
        self.sessions = {tier: make_session(path, threads) for tier, path in graphs.items()}
        self.has_tags = backbone.tag_vocabulary is not None

    def preprocess(self, images: Sequence[Image.Image], size: int) -> torch.Tensor:
        return self.inner.preprocess(images, size)

    def _run(self, tier: Tier, pixels: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.sessions[tier].run(None, {"pixels": pixels.float().numpy()})
        return [torch.from_numpy(np.asarray(o)) for o in outputs]

    def screen_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self._run("screen", pixels)
        return out[0], out[1] if self.has_tags else None

    def detail_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self._run("detail", pixels)
        return out[0], out[1], out[2] if self.has_tags else None

    def weight_files(self) -> list[Path]:
        return self.inner.weight_files()

    @property
    def tag_vocabulary(self) -> list[str] | None:
        return self.inner.tag_vocabulary

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # ORT takes and returns host arrays, whatever provider runs the graph


def onnx_backbone(
    spec: str, candidates: list[Path], cache_dir: Path, threads: int | None = None
) -> OnnxBackbone:
    """Build the torch backbone, then find its tier graphs in ``candidates`` or export them to the cache."""
    backbone = build_backbone(spec)
    key = vision_graph_key(backbone)
    found = find_graph_dir(key, "detail.onnx", candidates)
    directory = found if found is not None else cache_dir / f"vision-{key}"
    onnx = OnnxBackbone(backbone, ensure_tier_graphs(backbone, directory, key), threads)
    backbone.to(torch.device("meta"))  # only its preprocessing and tag names are used from now on
    return onnx


class OnnxPipeline(TorchPipeline):
    def __init__(
        self,
        model: SaverBase,
        text_graph: Path,
        backbone_factory: Callable[[], VisionBackbone],
        *,
        name: str,
        version: str,
        trained: bool,
        threshold: float,
        threads: int | None = None,
        evidence_graph: Path | None = None,
        release_encoder: bool = False,
    ) -> None:
        """``evidence_graph``: the base encoder for evidence text (else torch embeds it). ``release_encoder``
        frees the torch encoder's weights (to the meta device), which then must not be needed: the
        model must not be shared with a torch pipeline, and text evidence needs ``evidence_graph``."""
        super().__init__(
            model, backbone_factory, name=name, version=version, trained=trained, threshold=threshold
        )
        self.text_session = make_session(text_graph, threads)
        self.text_graph = text_graph
        self.evidence_graph = evidence_graph
        self.evidence_session = None if evidence_graph is None else make_session(evidence_graph, threads)
        if release_encoder:
            if evidence_graph is None and "text" in model.cfg.evidence_channels:
                raise ValueError("releasing the torch encoder needs an evidence-text graph")
            model.encoder.bert.to(torch.device("meta"))

    def _embed_evidence(self, texts: list[str]) -> torch.Tensor:
        if self.evidence_session is None:
            return super()._embed_evidence(texts)
        if not texts:
            return torch.zeros(0, self.model.encoder.bert.config.hidden_size)
        # the tokenizer call of TextEncoder.embed_evidence, so both backends see the same pieces
        enc = self.model.encoder.tokenizer(
            texts, truncation=True, max_length=64, padding=True, return_tensors="np"
        )
        feeds = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        return torch.from_numpy(np.asarray(self.evidence_session.run(None, feeds)[0]))

    def _text_units(self, words: list[list[str]], pairs: list[Pair] | None) -> TextUnits:
        feeds, spans, word_mask = self.text_feeds(words, pairs)
        units, gate, logits = (torch.from_numpy(np.asarray(o)) for o in self.text_session.run(None, feeds))
        return self.model.from_graph(units, gate, logits, spans, word_mask)

    def text_feeds(
        self, words: list[list[str]], pairs: list[Pair] | None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
        """The text graph's inputs for a batch of non-empty posts, plus the spans and word mask that
        turn its outputs back into ``TextUnits`` (a benchmark times the graph alone on these)."""
        model = self.model
        enc = model.encoder.prepare(words)
        n = max(enc.first_subword.size(1), model.cfg.max_span_width)  # the graph's span max-pool needs N >= W
        first = _pad_words(enc.first_subword, n)
        shapes = _pad_words(enc.shapes, n)
        word_mask = _pad_words(enc.word_mask, n)
        spans = model.graph_spans(word_mask, n, pairs)
        feeds = {
            "input_ids": enc.input_ids.numpy(),
            "attention_mask": enc.attention_mask.numpy(),
            "first_subword": first.numpy(),
            "shapes": shapes.numpy(),
            "spans": spans.contiguous().numpy(),
        }
        return feeds, spans, word_mask


def _pad_words(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the word axis (index 0 = [CLS], shape 0 = padding); padded words are in no valid span."""
    return t if t.size(1) >= n else torch.nn.functional.pad(t, (0, n - t.size(1)))


def onnx_pipeline(
    model: SaverBase,
    info: ArtifactInfo,
    *,
    threshold: float,
    artifacts: Path | None = None,
    cache_dir: Path | None = None,
    quantize: bool = False,
    threads: int | None = None,
    release_encoder: bool = True,
) -> OnnxPipeline:
    """Graphs from ``artifacts/onnx`` when they match these weights, else from (or built into) the cache."""
    cache = cache_dir or DEFAULT_CACHE_DIR
    candidates = [artifacts / "onnx"] if artifacts is not None else []
    started = time.perf_counter()
    key = text_graph_key(model)
    name = TEXT_GRAPH_INT8 if quantize else TEXT_GRAPH
    found = find_graph_dir(key, name, candidates)
    directory = found if found is not None else cache / f"{model.cfg.task}-{key}"
    text_graph = ensure_text_graph(model, directory, quantize=quantize, key=key)
    evidence_graph = None
    if "text" in model.cfg.evidence_channels:
        ev_key = evidence_graph_key(model.encoder)
        found = find_graph_dir(ev_key, EVIDENCE_GRAPH, candidates)
        ev_dir = found if found is not None else cache / f"evidence-{ev_key}"
        evidence_graph = ensure_evidence_graph(model.encoder, ev_dir, ev_key)
    spec = model.cfg.vision_backbone
    pipeline = OnnxPipeline(
        model,
        text_graph,
        lambda: onnx_backbone(spec, candidates, cache, threads),
        name=info.name,
        version=info.version,
        trained=info.trained,
        threshold=threshold,
        threads=threads,
        evidence_graph=evidence_graph,
        release_encoder=release_encoder,  # the graphs hold the encoder now
    )
    log.info(
        "ONNX Runtime %s text graph ready in %.1f s: %s (providers %s)",
        model.cfg.task,
        time.perf_counter() - started,
        text_graph,
        ",".join(pipeline.text_session.get_providers()),
    )
    return pipeline


def describe_sessions(pipeline: OnnxPipeline) -> dict[str, Any]:
    """What ``/v1/models`` or a benchmark can report about the runtime."""
    return {
        "backend": "onnx",
        "text_graph": str(pipeline.text_graph),
        "providers": pipeline.text_session.get_providers(),
        "intra_op_threads": pipeline.text_session.get_session_options().intra_op_num_threads,
    }
