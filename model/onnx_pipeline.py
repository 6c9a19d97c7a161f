"""``SaverPipeline`` on ONNX Runtime alone: no torch, no transformers, in the serving process.

Every model stage is a graph exported from the model's torch methods (model/onnx_export.py,
model/onnx_stages.py) and found in a bundle directory (model/graph_bundle.py): text (encoder, units,
gate, text scores), decide (γ), query (the selector's per-unit query), items (a screened image's vector),
the evidence-text encoder, the vision tiers, and fuse (evidence tokens, Set Transformer, energy head).
Between them runs the numpy glue both backends share: tokenisation into the graph's feeds
(model/text_feeds.py, with the ``tokenizers`` library on the exported tokenizer file), image
preprocessing (model/pixels.py), the greedy selector (model/selector.py) and the answers (model/answer.py).

``load_onnx_pipeline`` finds the bundle of an artifact directory by hashing its files; when there is none
and torch is installed it builds one first (``model/onnx_stages.py``), else it says which command does.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

from model.answer import ANSWERS, evidence_text, request_pairs, request_words, softmax, top_tags, used_images
from model.artifact_files import (
    ArtifactError,
    artifact_key,
    read_calibration,
    read_json,
    threshold_from_calibration,
)
from model.gather_tables import gather_feeds
from model.graph_bundle import DEFAULT_CACHE_DIR, EXPORT_COMMAND, Bundle, OnnxOptions, find_bundle
from model.heap import release_freed_heap
from model.pipeline import (
    DetailedImage,
    MnerResult,
    MreResult,
    Pair,
    ScreenedImage,
    Task,
    TextRequest,
    TextResult,
    VisionMode,
)
from model.pixels import images_to_array, transform_from_record
from model.selector import select_for_queries
from model.text_feeds import GraphUnits, graph_feeds, graph_units, word_pieces

if TYPE_CHECKING:
    from model.artifacts import ArtifactInfo
    from model.base import SaverBase
    from model.vision.backbone import VisionBackbone

log = logging.getLogger(__name__)

VISION_MODES: tuple[VisionMode, ...] = (
    "auto",
    "always",
    "never",
)  # the decide graph's ``mode`` indices (model.base.VISION_MODES)


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


def make_session(path: Path, threads: int | None = None, arena: bool = True) -> ort.InferenceSession:
    """One session per graph file and thread count in the process: the MNER and MRE pipelines share the
    vision and evidence-text graphs (``run`` is thread-safe), so their weights are held once. ``arena``
    False: activations are freed after each run instead of kept for the next (the rarely run, large
    vision tiers)."""
    key = (str(path.resolve()), threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = _new_session(path, threads, arena)
        return session


class GraphSession(ort.InferenceSession):
    """A session that feeds its graph's shared lookup tables itself (model/gather_tables.py): callers see
    and feed only the graph's other inputs."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[str]) -> None:
        super().__init__(str(path), options, providers=providers)
        tables: dict[str, Any] = gather_feeds(path, self.get_modelmeta().custom_metadata_map)
        if "CUDAExecutionProvider" in self.get_providers():  # upload once, not on every run
            tables = {
                k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", 0)
                for k, v in tables.items()
            }
        self._tables = tables

    def get_inputs(self) -> list[Any]:
        return [i for i in super().get_inputs() if i.name not in self._tables]

    def run(self, output_names: Any, input_feed: dict[str, Any], run_options: Any = None) -> Any:
        feeds = {**input_feed, **self._tables} if self._tables else input_feed
        return super().run(output_names, feeds, run_options)


def _new_session(path: Path, threads: int | None, arena: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1  # the graphs are one chain of ops; parallelism lives inside each op
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between ops or after a run: on a few cores the spinning pool steals the CPU from the
    # Python work around each run (tokenising, decoding, HTTP) and from the other sessions (measured in
    # README, issue 13: P50 and P90 both lower with spinning off)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return GraphSession(path, options, providers())


def _run(session: ort.InferenceSession, **feeds: np.ndarray | None) -> list[np.ndarray]:
    """Feed the inputs this graph declares (a graph's evidence inputs follow the model's channels)."""
    names = [i.name for i in session.get_inputs()]
    return [np.asarray(o) for o in session.run(None, {n: feeds[n] for n in names})]


class OnnxPipeline:
    def __init__(
        self,
        bundle: Bundle,
        *,
        threshold: float,
        name: str | None = None,
        version: str | None = None,
        trained: bool | None = None,
        threads: int | None = None,
        quantize: bool = False,
    ) -> None:
        record = bundle.record
        self.bundle = bundle
        self.task: Task = "mre" if bundle.task == "mre" else "mner"
        self.labels = list(record["labels"])
        self.name = name or str(record.get("name", f"saver-{self.task}"))
        self.version = version or str(record.get("version", "0.0.0"))
        self.trained = bool(record.get("trained", False)) if trained is None else trained
        self._threshold = float(threshold)
        self.cfg: dict[str, Any] = dict(record["config"])
        self.threads = threads
        self.text_graph = bundle.graph("text_int8" if quantize else "text")
        self.text_session = make_session(self.text_graph, threads)
        self.decide_session = make_session(bundle.graph("decide"), threads)
        self.query_session = make_session(bundle.graph("query"), threads)
        self.items_session = make_session(bundle.graph("items"), threads)
        self.fuse_session = make_session(bundle.graph("fuse"), threads)
        evidence = bundle.graph("evidence") if bundle.has("evidence") else None
        self.evidence_session = None if evidence is None else make_session(evidence, threads)
        tok = record["tokenizer"]
        self.word_tokenizer = _tokenizer(bundle.path / tok["file"], tok, int(self.cfg["max_subwords"]))
        self.evidence_tokenizer = _tokenizer(
            bundle.path / tok["file"], tok, int(tok["evidence_max_subwords"])
        )
        vision = record["vision"]
        self.vision = vision
        self.transform = transform_from_record(vision["transform"])
        self.tag_vocabulary: list[str] | None = vision["tags"]
        self._tiers: dict[str, ort.InferenceSession] = {}
        self._tiers_lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self._threshold

    # --- text stage -------------------------------------------------------------------------------
    def encode_text(
        self,
        text: str | None = None,
        tokens: list[str] | None = None,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> TextResult:
        return self.encode_text_batch([TextRequest(text, tokens, head, tail)])[0]

    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        """Several posts through one text graph run; each result equals that post's ``encode_text``."""
        posts = [request_words(r) for r in requests]
        pairs = request_pairs(requests, posts)
        todo = [i for i, (_, words) in enumerate(posts) if words]
        states = {i: self._empty_units() for i in range(len(posts))}
        if todo:
            strings = [[w.text for w in posts[i][1]] for i in todo]
            batch = self._text_units(strings, None if pairs is None else [pairs[i] for i in todo])
            for k, i in enumerate(todo):
                states[i] = batch[k]
        return [
            TextResult(
                text,
                words,
                [(int(s), int(e)) for s, e in states[i].spans.reshape(-1, 2).tolist()],
                states[i].gate.copy(),
                states[i],
            )
            for i, (text, words) in enumerate(posts)
        ]

    def text_feeds(
        self, words: list[list[str]], pairs: list[Pair] | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The text graph's inputs for a batch of non-empty posts, plus the spans and word mask that turn
        its outputs back into units (a benchmark times the graph alone on these)."""
        encodings = self.word_tokenizer.encode_batch([w if w else [""] for w in words], is_pretokenized=True)
        pieces = word_pieces(encodings, words)
        feeds, spans = graph_feeds(pieces, self.task, int(self.cfg["max_span_width"]), pairs)
        n = feeds["shapes"].shape[1]
        word_mask = np.pad(pieces.word_mask, ((0, 0), (0, n - pieces.word_mask.shape[1])))
        return feeds, spans, word_mask

    def _text_units(self, words: list[list[str]], pairs: list[Pair] | None) -> list[GraphUnits]:
        feeds, spans, word_mask = self.text_feeds(words, pairs)
        return graph_units(self.task, self.text_session.run(None, feeds), spans, word_mask)

    def _empty_units(self) -> GraphUnits:
        d, c = int(self.cfg["d_model"]), int(self.cfg["n_classes"])
        f = np.float32
        return GraphUnits(
            np.zeros((0, d), f), np.zeros(0, f), np.zeros((0, c), f), np.zeros((0, 2), np.int64)
        )

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        if mode not in VISION_MODES:
            raise ValueError(f"unknown vision mode {mode!r}")
        state: GraphUnits = result.state
        if len(state.gate) == 0:
            return np.zeros(0, dtype=bool)
        return _run(
            self.decide_session,
            gate=state.gate,
            text_logits=state.text_logits,
            threshold=np.array(self._threshold, dtype=np.float32),
            mode=np.array(VISION_MODES.index(mode), dtype=np.int64),
        )[0].astype(bool)

    # --- vision stages ----------------------------------------------------------------------------
    def _tier(self, tier: str) -> ort.InferenceSession:
        # built on first use: a text-only deployment never pays for the image model
        with self._tiers_lock:
            if tier not in self._tiers:
                self._tiers[tier] = make_session(self.bundle.vision_graph(tier), self.threads, arena=False)
            return self._tiers[tier]

    def _encode_images(self, tier: str, images: list[Image.Image]) -> list[np.ndarray]:
        size = int(self.vision["screen_size" if tier == "screen" else "detail_size"])
        pixels = images_to_array(images, size, self.transform)
        step = int(self.vision["max_batch"])
        parts = [
            self._tier(tier).run(None, {"pixels": pixels[i : i + step]}) for i in range(0, len(pixels), step)
        ]
        return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(parts[0]))]

    def _evidence_texts(
        self, tag_logits: np.ndarray | None, n: int
    ) -> tuple[list[list[str]], np.ndarray | None]:
        if tag_logits is None or "text" not in self.cfg["channels"] or self.tag_vocabulary is None:
            return [[] for _ in range(n)], None
        tags = top_tags(tag_logits, self.tag_vocabulary, int(self.cfg["evidence_tags_k"]))
        return tags, self._embed_evidence([evidence_text(t) for t in tags])

    def _embed_evidence(self, texts: list[str]) -> np.ndarray:
        assert self.evidence_session is not None
        enc = self.evidence_tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        }
        return np.asarray(self.evidence_session.run(None, feeds)[0])

    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        if not images:
            return []
        out = self._encode_images("screen", images)
        vectors, tag_logits = out[0], (out[1] if len(out) > 1 else None)
        tags, text = self._evidence_texts(tag_logits, len(images))
        items = _run(self.items_session, text=text, image=vectors)[0]
        return [
            ScreenedImage(
                items[i].copy(), tags[i], {"image": vectors[i], "text": None if text is None else text[i]}
            )
            for i in range(len(images))
        ]

    def select(
        self, result: TextResult, activated: np.ndarray, screened: list[ScreenedImage]
    ) -> list[list[int]]:
        # one entry per scored unit (the gate): an MRE result lists two entity spans but is one unit
        chosen: list[list[int]] = [[] for _ in range(len(result.gate))]
        rows = np.flatnonzero(activated)
        if rows.size == 0 or not screened:
            return chosen
        queries = _run(self.query_session, units=result.state.units[rows])[0]
        items = np.stack([s.vector for s in screened])
        cfg = self.cfg
        picks = select_for_queries(
            queries, items, int(cfg["select_k"]), str(cfg["selector"]),
            float(cfg["lambda_relevance"]), float(cfg["lambda_coverage"]),
        )  # fmt: skip
        for r, pick in zip(rows.tolist(), picks, strict=True):
            chosen[r] = pick
        return chosen

    def detail(self, images: list[Image.Image]) -> list[DetailedImage]:
        if not images:
            return []
        out = self._encode_images("detail", images)
        vectors, regions, tag_logits = out[0], out[1], (out[2] if len(out) > 2 else None)
        _, text = self._evidence_texts(tag_logits, len(images))
        return [
            DetailedImage(
                {"image": vectors[i], "regions": regions[i], "text": None if text is None else text[i]}
            )
            for i in range(len(images))
        ]

    # --- fusion -----------------------------------------------------------------------------------
    def fuse(
        self,
        result: TextResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, DetailedImage],
        screened: dict[int, ScreenedImage],
    ) -> MnerResult | MreResult:
        state: GraphUnits = result.state
        used = used_images(activated, selected, details)
        rows = [u for u, sel in enumerate(used) if sel]
        logits = state.text_logits.copy()
        if rows:
            images = sorted({i for sel in used for i in sel})
            position = {img: p for p, img in enumerate(images)}
            k = max(int(self.cfg["select_k"]), *(len(used[u]) for u in rows))
            chosen = np.zeros((len(rows), k), dtype=np.int64)
            valid = np.zeros((len(rows), k), dtype=bool)
            for a, u in enumerate(rows):
                chosen[a, : len(used[u])] = [position[i] for i in used[u]]
                valid[a, : len(used[u])] = True
            evidence = {
                key: np.stack([details[i].payload[key] for i in images])
                if all(details[i].payload.get(key) is not None for i in images)
                else None
                for key in ("text", "image", "regions")
            }
            forced = _run(
                self.fuse_session, units=state.units[rows], selected=chosen, valid=valid, **evidence
            )[0]
            logits[rows] = forced
        return ANSWERS[self.task](result, softmax(logits), activated, used, self.labels)


def _tokenizer(path: Path, record: dict[str, Any], max_length: int) -> Tokenizer:
    """The encoder's fast tokenizer as exported, padded and truncated as ``TextEncoder`` asks of it."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=int(record["pad_id"]), pad_token=str(record["pad_token"]))
    return tokenizer


def torch_available() -> bool:
    """Whether torch could be imported to build graphs (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or broken installation counts as absent
        return False


def load_onnx_pipeline(task: str, artifacts: Path, options: OnnxOptions | None = None) -> OnnxPipeline:
    """The torch-free pipeline of an artifact directory: its bundle from ``artifacts/onnx`` or the cache;
    without one, built first when torch is installed, else an ``ArtifactError`` naming the command."""
    options = options or OnnxOptions()
    started = time.perf_counter()
    config = read_json(artifacts / "config.json") if (artifacts / "config.json").is_file() else {}
    model_task = config.get("model", {}).get("task", task)
    if model_task != task:
        raise ValueError(f"{artifacts} holds a {model_task} model, expected {task}")
    key = artifact_key(artifacts)
    cache = options.cache_dir or DEFAULT_CACHE_DIR
    roots = [artifacts / "onnx", cache]
    bundle = find_bundle(task, key, roots)
    if bundle is not None and options.quantize and not bundle.has("text_int8"):
        bundle = None
    if bundle is None:
        if not torch_available():
            raise ArtifactError(
                f"no exported {task} graphs for {artifacts} (key {key}) under {', '.join(map(str, roots))}, and "
                f"torch is not installed to build them: run `{EXPORT_COMMAND} --artifacts {artifacts}` "
                "where torch is installed, then point SAVER_ONNX_CACHE_DIR at DIR"
            )
        from model.onnx_stages import build_artifact_bundle  # torch, only to build

        log.info(
            "no exported %s graphs for %s: building them into %s (first start with these weights)",
            task,
            artifacts,
            cache,
        )
        bundle = build_artifact_bundle(artifacts, cache, quantize=options.quantize)
    threshold = threshold_from_calibration(read_calibration(artifacts))
    pipeline = OnnxPipeline(
        bundle,
        threshold=threshold,
        name=str(config.get("name", artifacts.name)),
        version=str(config.get("version", "0.0.0")),
        trained=bool(config.get("trained", False)) and (artifacts / "weights.safetensors").is_file(),
        threads=options.threads,
        quantize=options.quantize,
    )
    _log_ready(pipeline, started)
    return pipeline


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
    backbone: VisionBackbone | None = None,
) -> OnnxPipeline:
    """The pipeline of a model built in memory (torch installed): its bundle, keyed by its weights, from
    ``artifacts/onnx`` or the cache, exported first if missing. The torch model is not kept
    (``release_encoder`` is accepted for compatibility; nothing of the model stays referenced)."""
    from model.onnx_stages import build_model_bundle

    started = time.perf_counter()
    roots = ([artifacts / "onnx"] if artifacts is not None else []) + [cache_dir or DEFAULT_CACHE_DIR]
    bundle = build_model_bundle(model, info, roots, quantize=quantize, backbone=backbone)
    pipeline = OnnxPipeline(
        bundle,
        threshold=threshold,
        name=info.name,
        version=info.version,
        trained=info.trained,
        threads=threads,
        quantize=quantize,
    )
    _log_ready(pipeline, started)
    return pipeline


def _log_ready(pipeline: OnnxPipeline, started: float) -> None:
    release_freed_heap()
    log.info(
        "ONNX Runtime %s pipeline ready in %.1f s from %s (providers %s)",
        pipeline.task,
        time.perf_counter() - started,
        pipeline.bundle.path,
        ",".join(pipeline.text_session.get_providers()),
    )


def describe_sessions(pipeline: OnnxPipeline) -> dict[str, Any]:
    """What ``/v1/models`` or a benchmark can report about the runtime."""
    return {
        "backend": "onnx",
        "text_graph": str(pipeline.text_graph),
        "providers": pipeline.text_session.get_providers(),
        "intra_op_threads": pipeline.text_session.get_session_options().intra_op_num_threads,
    }
