"""CPU forward latency of one tweet: text-only versus always-on vision with two images.

    python -m bench.model_latency --runs 50 --out DIR [--artifacts DIR] [--threads N]

Both variants go through the staged ``SaverPipeline`` the service drives. Text-only is what a request
whose units all fall below τ costs (encode_text, activation, fuse with nothing activated); always-on is
the whole vision path (encode_text, activation "always", screen, select, detail, fuse). Image fetching
and JPEG decoding are left out: they are network and I/O, not model cost. The two variants alternate run
by run (and swap order every run) so that drifts in machine load hit both alike. Writes
``model_latency.json`` and ``model_latency.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.artifacts import stored_state
from model.inference import TorchPipeline
from model.loading import load_pipeline, untrained_pipeline
from model.pipeline import TextRequest
from model.runner import run_pipeline

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / ".." / "shared" / "data" / "images"
# about 30 words, with the usual tweet furniture (mention, hashtag, URL, emoji)
TWEET = (
    "RT @NBA: Kevin Durant and Stephen Curry lead the Golden State Warriors past the Cleveland Cavaliers "
    "in Game 3 at Oracle Arena tonight #NBAFinals 🏀🔥 https://t.co/aBcD123"
)
STAGES = ("encode_text", "activation", "screen", "select", "detail", "fuse")


def load_images(folder: Path, n: int, seed: int) -> tuple[list[Image.Image], str]:
    """``n`` real JPEGs from ``folder`` when there are enough, else generated 1024x768 photos-to-be."""
    files = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if len(files) >= n:
        images = []
        for path in files[:n]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return images, f"{n} JPEGs from {folder.resolve()}"
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        # smooth gradients plus noise: closer to a photo's statistics than pure noise, same pixel count
        y, x = np.mgrid[0:768, 0:1024]
        base = np.stack([x / 4, y / 3, (x + y) / 7], axis=-1) % 256
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images, f"{n} generated 1024x768 images ({folder} not found)"


class StageTimer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        self.ms[stage] = (time.perf_counter() - start) * 1000
        return out


def text_only(pipe: TorchPipeline, images: list[Image.Image]) -> dict[str, float]:
    t = StageTimer()
    run_pipeline(pipe, TextRequest(TWEET), images, "never", stage=t)
    return t.ms


def always_on(pipe: TorchPipeline, images: list[Image.Image]) -> dict[str, float]:
    t = StageTimer()
    run_pipeline(pipe, TextRequest(TWEET), images, "always", stage=t)
    return t.ms


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": float(np.percentile(samples, 90)),
        "mean_ms": statistics.fmean(samples),
        "min_ms": min(samples),
    }


def parameter_counts(pipe: TorchPipeline) -> dict[str, int]:
    model = pipe.model
    stored = stored_state(model)
    backbone = sum(p.numel() for p in pipe.backbone.parameters())
    return {
        "model_total": sum(p.numel() for p in model.parameters()),
        "text_encoder_frozen": sum(p.numel() for p in model.encoder.bert.parameters() if not p.requires_grad),
        "vision_backbone_frozen": backbone,
        "total_with_backbone": sum(p.numel() for p in model.parameters()) + backbone,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "stored_in_artifact": sum(t.numel() for t in stored.values()),
        "stored_bytes_fp16": sum(t.numel() * t.element_size() for t in stored.values()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = load_pipeline(args.artifacts, "mner") if args.artifacts else untrained_pipeline("mner")
    assert isinstance(pipe, TorchPipeline)  # the torch backend: this benchmark reads the model itself
    images, image_source = load_images(args.images, 2, seed=0)
    pipe.backbone  # noqa: B018  built lazily; build it before timing
    variants: dict[str, Callable[[TorchPipeline, list[Image.Image]], dict[str, float]]] = {
        "text_only": text_only,
        "always_on_2_images": always_on,
    }
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in variants.values():
                fn(pipe, images)
        totals: dict[str, list[float]] = {name: [] for name in variants}
        stages: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
        for i in range(args.runs):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in order:
                start = time.perf_counter()
                ms = variants[name](pipe, images)
                totals[name].append((time.perf_counter() - start) * 1000)
                for stage, value in ms.items():
                    stages[name].setdefault(stage, []).append(value)
    text = pipe.encode_text(TWEET)
    n_units = len(text.units)
    report: dict[str, Any] = {
        "tweet": TWEET,
        "words": len(text.words),
        "units": n_units,
        "images": image_source,
        "image_sizes": [list(im.size) for im in images],
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "model": {"name": pipe.name, "version": pipe.version, "trained": pipe.trained},
        "latency": {name: summarise(values) for name, values in totals.items()},
        "stage_median_ms": {
            name: {s: statistics.median(v) for s, v in by_stage.items()} for name, by_stage in stages.items()
        },
        "parameters": parameter_counts(pipe),
    }
    lat = report["latency"]
    report["ratio_median"] = lat["always_on_2_images"]["median_ms"] / lat["text_only"]["median_ms"]
    report["ratio_p90"] = lat["always_on_2_images"]["p90_ms"] / lat["text_only"]["p90_ms"]
    return report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(report: dict[str, Any]) -> str:
    lat, stages, params = report["latency"], report["stage_median_ms"], report["parameters"]
    lines = [
        f"Forward latency on CPU, one tweet ({report['words']} words, {report['units']} candidate spans), "
        f"{report['runs']} interleaved runs per variant after {report['warmup']} warm-up runs; "
        f"torch {report['torch']}, {report['threads']} thread(s), {report['cpu']}; images: {report['images']}; "
        f"model: {report['model']['name']} (trained: {report['model']['trained']}).",
        "",
        "| variant | median ms | P90 ms | mean ms | min ms | stage medians (ms) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in lat.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages[name].items())
        lines.append(
            f"| {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['mean_ms']:.1f} | {s['min_ms']:.1f} | {parts} |"
        )
    lines += [
        f"| ratio always-on / text-only | {report['ratio_median']:.2f}x | {report['ratio_p90']:.2f}x | | | |",
        "",
        "| parameters | count |",
        "|---|---:|",
        *(f"| {k} | {v:,} |" for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def default_threads() -> int:
    """One intra-op thread: a serving worker handles one request per thread and scales by workers. On a
    small shared box, two intra-op threads measured 4-5x slower medians (and 10x worse P90) than one,
    because OpenMP threads spin-wait for cores other processes hold. ``--threads`` overrides."""
    return 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per variant first")
    parser.add_argument("--out", type=Path, required=True, help="folder for model_latency.json / .md")
    parser.add_argument(
        "--artifacts", type=Path, default=None, help="artifact folder (default: untrained model)"
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder searched for JPEGs")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--runs and --threads must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_latency.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    table = markdown(report)
    (args.out / "model_latency.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
