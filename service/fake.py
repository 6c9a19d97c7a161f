"""A deterministic stand-in for the real model behind the same ``SaverPipeline`` interface.

It lets the whole app be exercised end to end without weights (infinity's dummy engine). Behaviour is
simple and predictable so tests can craft inputs: a span is a candidate entity, and asks for vision,
exactly when every word in it is capitalised; images are screened into a colour vector; scores rise a
little when vision is used.

It is a plain backend with no test hooks (tests that count or block stages subclass it), and it says
it is fake in every answer: its name is ``fake-<task>`` and it reports ``trained=False``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from model.pipeline import (
    DetailedImage,
    MnerEntity,
    MnerResult,
    MreResult,
    ScreenedImage,
    Task,
    TextRequest,
    TextResult,
    VisionMode,
)
from model.tokenize import Word, tokenize_words, words_from_tokens

MNER_LABELS = ["PER", "LOC", "ORG", "MISC"]
MRE_LABELS = [
    "None", "/per/per/peer", "/per/loc/place_of_residence", "/org/loc/locate_at", "/misc/misc/part_of",
]  # fmt: skip


def _capitalised(word: Word) -> bool:
    return word.text[:1].isupper() and word.text[:1].isalpha()


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class FakePipeline:
    """Deterministic ``SaverPipeline``: capitalised spans are entities and activate the gate.

    Not a trained model, so ``trained`` defaults to False; ``trained=True`` only stands in for a trained
    model where a test checks how the service presents one."""

    def __init__(
        self,
        task: Task = "mner",
        *,
        threshold: float = 0.5,
        trained: bool = False,
        max_span_width: int = 3,
        select_k: int = 2,
    ) -> None:
        self.task: Task = task
        self.labels = list(MNER_LABELS if task == "mner" else MRE_LABELS)
        self.threshold = threshold
        self.trained = trained
        self.warning = "fake model: a deterministic test stand-in, not a trained model"
        self.name = f"fake-{task}"
        self.version = "0.0-test"
        self.calibration = {"method": "fake", "threshold": threshold, "coverage": 0.25}
        self.max_span_width = max_span_width
        self.select_k = select_k

    # ---- text ---------------------------------------------------------------------------------------

    def encode_text(
        self,
        text: str | None = None,
        tokens: list[str] | None = None,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> TextResult:
        return self._encode(text, tokens, head, tail)

    def _encode(
        self,
        text: str | None,
        tokens: list[str] | None,
        head: tuple[int, int] | None,
        tail: tuple[int, int] | None,
    ) -> TextResult:
        if tokens is not None:
            text, words = words_from_tokens(tokens)
        elif text is not None:
            words = tokenize_words(text)
        else:
            raise ValueError("need text or tokens")
        if self.task == "mner":
            units = [
                (i, i + w)
                for i in range(len(words))
                for w in range(1, self.max_span_width + 1)
                if i + w <= len(words)
            ]
            gate = np.array([self._span_gate(words, u) for u in units], dtype=np.float32)
        else:
            if head is None or tail is None:
                raise ValueError("MRE needs head and tail spans")
            units = [head, tail]
            gate = np.array([max(self._span_gate(words, head), self._span_gate(words, tail))], np.float32)
        return TextResult(text=text, words=words, units=units, gate=gate)

    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        """The batched text stage (service micro-batching): one call, one result per request."""
        return [self._encode(r.text, r.tokens, r.head, r.tail) for r in requests]

    @staticmethod
    def _span_gate(words: list[Word], span: tuple[int, int]) -> float:
        return 0.9 if all(_capitalised(w) for w in words[span[0] : span[1]]) else 0.1

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        if mode == "always":
            return np.ones(len(result.gate), dtype=bool)
        if mode == "never":
            return np.zeros(len(result.gate), dtype=bool)
        return np.asarray(result.gate >= self.threshold)

    # ---- vision -------------------------------------------------------------------------------------

    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        out = []
        for image in images:
            rgb = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32).reshape(-1, 3).mean(0)
            vector = np.concatenate([rgb / 255.0, [1.0]]).astype(np.float32)
            tag = ("red", "green", "blue")[int(np.argmax(rgb))]
            out.append(ScreenedImage(vector=vector, tags=[tag]))
        return out

    def _query(self, result: TextResult, unit: int) -> np.ndarray:
        start, end = result.units[unit]
        seed = _stable(" ".join(w.text for w in result.words[start:end]))
        return np.random.default_rng(seed).random(4).astype(np.float32)

    def select(
        self, result: TextResult, activated: np.ndarray, screened: list[ScreenedImage]
    ) -> list[list[int]]:
        chosen: list[list[int]] = []
        for u in range(len(result.gate)):
            if not activated[u] or not screened:
                chosen.append([])
                continue
            q = self._query(result, u)
            sims = [float(q @ s.vector / (np.linalg.norm(q) * np.linalg.norm(s.vector))) for s in screened]
            order = sorted(range(len(screened)), key=lambda i: (-sims[i], i))
            chosen.append(sorted(order[: self.select_k]))
        return chosen

    def detail(self, images: list[Image.Image]) -> list[DetailedImage]:
        return [DetailedImage(payload=np.asarray(im.convert("RGB").resize((2, 2)))) for im in images]

    # ---- fusion -------------------------------------------------------------------------------------

    def fuse(
        self,
        result: TextResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, DetailedImage],
        screened: dict[int, ScreenedImage],
    ) -> MnerResult | MreResult:
        used = [
            [i for i in selected[u] if i in details] if activated[u] else [] for u in range(len(result.gate))
        ]
        if self.task == "mre":
            return self._fuse_pair(result, used[0])
        return self._fuse_spans(result, used)

    def _fuse_spans(self, result: TextResult, used: list[list[int]]) -> MnerResult:
        words = result.words
        candidates = [u for u, (s, e) in enumerate(result.units) if all(_capitalised(w) for w in words[s:e])]
        # Longest spans first, then leftmost: the best non-overlapping set for this toy scorer.
        candidates.sort(key=lambda u: (-(result.units[u][1] - result.units[u][0]), result.units[u][0]))
        taken: set[int] = set()
        entities: list[MnerEntity] = []
        for u in candidates:
            s, e = result.units[u]
            if taken & set(range(s, e)):
                continue
            taken.update(range(s, e))
            surface = result.text[words[s].start : words[e - 1].end]
            entities.append(
                MnerEntity(
                    text=surface,
                    type=self.labels[_stable(surface) % len(self.labels)],
                    score=0.8 if used[u] else 0.6,
                    start=words[s].start,
                    end=words[e - 1].end,
                    token_start=s,
                    token_end=e,
                    gate=float(result.gate[u]),
                    activated=bool(used[u]),
                    images=list(used[u]),
                )
            )
        entities.sort(key=lambda ent: ent.token_start)
        return MnerResult(entities=entities)

    def _fuse_pair(self, result: TextResult, used: list[int]) -> MreResult:
        (hs, he), (ts, te) = result.units
        head = " ".join(w.text for w in result.words[hs:he])
        tail = " ".join(w.text for w in result.words[ts:te])
        if result.gate[0] >= self.threshold:
            best = 1 + _stable(f"{head}|{tail}") % (len(self.labels) - 1)
        else:
            best = 0
        base = 0.8 if used else 0.6
        rest = (1.0 - base) / (len(self.labels) - 1)
        scores = {label: (base if i == best else rest) for i, label in enumerate(self.labels)}
        top = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return MreResult(
            relation=self.labels[best],
            score=base,
            top=top,
            gate=float(result.gate[0]),
            activated=bool(used),
            images=list(used),
        )
