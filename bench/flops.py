"""GFLOPs per request, from the service's own counts and a FLOP table measured by torch's FLOP counter.

The service does not count FLOPs, and counting them inside it would slow the very requests being timed.
Instead the benchmark loads the same architecture (the artifacts the service serves, or the untrained
model when there are none) in its own process, after the timed run, and measures each stage under
``torch.utils.flop_counter.FlopCounterMode``:

- text: ``encode_text`` of each distinct post text, exactly, for the first ``max_texts`` texts; the rest
  get a least-squares line in word count over the measured ones (at tweet lengths the encoder's cost
  is nearly linear in length, and a line extrapolates safely to longer posts).
- screen and detail: per image, averaged over batches of 1..4 of the benchmark's own JPEGs (the
  backbone is linear in images; the tags' evidence text adds a little that depends on the photo).
- select + fuse of activated units: per activated unit (beyond the text-only fuse), for 1..4 screened
  images (the selector picks min(K, n) of them, and the set transformer's cost follows that count).

A request's FLOPs are then text(text) + screen × images_fetched + detail × images_selected +
units_activated × per_unit(images_fetched) (the last only when some image was detail-encoded).
``images_fetched`` equals the images screened because the benchmark's URLs never hit the service's
cache (see bench/workload.py). The gate, decoding and image decoding/resizing are not FLOP-counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class FlopTable:
    model: str  # name and version of the measured model
    screen_per_image: float  # screen tier FLOPs per image
    detail_per_image: float  # detail tier FLOPs per image
    vision_per_unit: dict[int, float]  # images screened -> select + fuse FLOPs per activated unit
    text: dict[str, float] = field(default_factory=dict)  # post text -> encode_text FLOPs (measured)
    text_fit: list[float] = field(default_factory=list)  # [slope, intercept] in word count

    def text_flops(self, text: str) -> tuple[float, bool]:
        """(FLOPs, measured exactly?) of encoding ``text``."""
        if text in self.text:
            return self.text[text], True
        if not self.text_fit:
            raise KeyError("no measured texts to extrapolate from")
        return max(0.0, float(np.polyval(self.text_fit, len(text.split())))), False

    def per_unit(self, n_images: int) -> float:
        if n_images <= 0 or not self.vision_per_unit:
            return 0.0
        return self.vision_per_unit[min(n_images, max(self.vision_per_unit))]

    def request_flops(
        self, text: str, units_activated: int, images_fetched: int, images_selected: int
    ) -> tuple[float, bool]:
        """(FLOPs, text measured exactly?) of one answered request, from the counts in its response."""
        flops, exact = self.text_flops(text)
        flops += self.screen_per_image * images_fetched + self.detail_per_image * images_selected
        if images_selected > 0:  # activated units fuse evidence only when some image was encoded
            flops += units_activated * self.per_unit(images_fetched)
        return flops, exact

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["texts_measured"] = len(self.text)
        del out["text"]
        return out


def count_flops(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """(FLOPs, result) of one call, by torch's dispatch-level FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args)
    return int(counter.get_total_flops()), result


def freeze(pipeline: Any) -> None:
    """Turn off grads of every module the pipeline holds.

    FlopCounterMode's module tracker hooks tensors that require grad, which fails on parameters expanded
    under inference mode; the benchmark's private copy of the model never trains, so nothing is lost.
    """
    import torch

    holders = [*vars(pipeline).values(), getattr(pipeline, "backbone", None)]
    for module in holders:
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)


PROBE_TEXT = "Kevin Durant and Stephen Curry lead the Golden State Warriors past Cleveland at Oracle Arena"


def measure_table(pipeline: Any, images: list[Image.Image], model: str, units: int = 8) -> FlopTable:
    """Stage FLOPs per image (over batches of 1..len(images) probe images) and per activated unit."""
    if not images:
        raise ValueError("need probe images")
    freeze(pipeline)
    counts = range(1, len(images) + 1)
    # The evidence-text channel pads a batch's tag texts to the longest, so a batch costs a little more
    # than its images alone: average the per-image cost over the batch sizes a request can have.
    screen = float(np.mean([count_flops(pipeline.screen, images[:n])[0] / n for n in counts]))
    detail = float(np.mean([count_flops(pipeline.detail, images[:n])[0] / n for n in counts]))
    result = pipeline.encode_text(PROBE_TEXT)
    wanted = np.asarray(pipeline.activation(result, "always"), dtype=bool)
    # Units are scored independently, so a few stand for any number (and keep the counting quick).
    activated = wanted & (np.cumsum(wanted) <= units)
    n_units = int(activated.sum())
    details_all = dict(enumerate(pipeline.detail(images)))
    per_unit: dict[int, float] = {}
    for n in counts:
        screened = pipeline.screen(images[:n])
        select_flops, selected = count_flops(pipeline.select, result, activated, screened)
        details = {i: d for i, d in details_all.items() if i < n}
        fuse_flops, _ = count_flops(
            pipeline.fuse, result, activated, selected, details, dict(enumerate(screened))
        )
        text_only, _ = count_flops(pipeline.fuse, result, np.zeros_like(activated), selected, {}, {})
        per_unit[n] = (select_flops + fuse_flops - text_only) / max(n_units, 1)
    return FlopTable(model, screen, detail, per_unit)


def measure_texts(pipeline: Any, table: FlopTable, texts: Iterable[str], max_texts: int) -> None:
    """Count ``encode_text`` exactly for up to ``max_texts`` distinct texts (in the given order), then
    fit the word-count line used for the others."""
    freeze(pipeline)
    for text in dict.fromkeys(texts):
        if len(table.text) >= max_texts:
            break
        if text not in table.text:
            table.text[text] = float(count_flops(pipeline.encode_text, text)[0])
            if len(table.text) % 50 == 0:
                log.info("FLOP-counted %d texts", len(table.text))
    words = [len(t.split()) for t in table.text]
    if words:
        degree = min(1, len(set(words)) - 1)
        table.text_fit = [float(c) for c in np.polyfit(words, list(table.text.values()), degree)]


def load_reference_pipeline(artifacts: Path | None) -> tuple[Any, str]:
    """The torch MNER pipeline whose FLOPs stand for the service's: trained artifacts when present."""
    from model.loading import load_pipeline, untrained_pipeline

    if artifacts is not None and (artifacts / "config.json").is_file():
        pipeline = load_pipeline(artifacts, "mner")
    else:
        log.info("no MNER artifacts at %s: counting FLOPs of the untrained model (same shapes)", artifacts)
        pipeline = untrained_pipeline("mner")
    return pipeline, f"{pipeline.name} {pipeline.version}"
