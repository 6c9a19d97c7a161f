"""``saver bench feature-cache``: what the training feature cache saves per epoch, in one run.

    saver bench feature-cache --out runs/feature-cache [--images DIR] [--synthetic 64] [--epochs 3]

Training builds each post's image evidence from the frozen vision backbone's screen and detail tiers
(``training/feature_cache.py``). Two arms, over the same image files, interleaved epoch by epoch:

- **no cache**: every epoch encodes every image again (a fresh, empty cache folder each epoch), which is
  what a run pays without the cache;
- **cache**: one cache folder for the whole run: epoch 1 encodes and writes, later epochs read back.

The images are the real photos under ``--images`` plus ``--synthetic`` generated 1024×768 JPEGs of
100–300 kB (the CDN stand-in's, ``bench/cdn.py``). The backbone is the artifact's (EfficientNet-Lite0
for the default model), on the CPU with the service's decoder. ``feature_cache.json`` / ``.md`` give
seconds per epoch per arm and the warm-epoch speed-up (no-cache seconds / cache seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.cdn import encode_in_range, synthetic_photo
from model.artifacts import read_json
from model.vision import build_backbone
from training.feature_cache import FeatureCache

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / ".." / "shared" / "data" / "images"


def image_files(images: Path | None, synthetic: int, scratch: Path) -> list[Path]:
    files = (
        sorted(p for p in images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if images
        else []
    )
    for i in range(synthetic):
        path = scratch / f"synthetic-{i:04d}.jpg"
        path.write_bytes(encode_in_range(synthetic_photo(10_000 + i), 100_000, 300_000))
        files.append(path)
    return files


def epoch_seconds(cache: FeatureCache, files: list[Path]) -> float:
    start = time.perf_counter()
    features = cache.features(files)
    seconds = time.perf_counter() - start
    if any(f is None for f in features):
        raise SystemExit("an image could not be decoded: the bench needs readable images")
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    spec = str(
        read_json(args.artifacts / "config.json")["model"].get("vision_backbone", "efficientnet-lite0")
    )
    backbone = build_backbone(spec)
    with tempfile.TemporaryDirectory(prefix="saver-fc-") as tmp:
        scratch = Path(tmp)
        files = image_files(
            args.images if args.images and args.images.is_dir() else None, args.synthetic, scratch
        )
        if not files:
            raise SystemExit("no images: pass --images DIR or --synthetic N")
        cached = FeatureCache(backbone, scratch / "cache-kept")
        rows = []
        for epoch in range(1, args.epochs + 1):
            fresh = FeatureCache(backbone, scratch / f"cache-fresh-{epoch}")
            before = cached.encoded
            row = {
                "epoch": epoch,
                "no_cache_s": epoch_seconds(fresh, files),
                "cache_s": epoch_seconds(cached, files),
            }
            rows.append({**row, "no_cache_encoded": fresh.encoded, "cache_encoded": cached.encoded - before})
        cache_bytes = sum(p.stat().st_size for p in (scratch / "cache-kept").rglob("*.safetensors"))
    warm = rows[1:]
    speedup = statistics.median(r["no_cache_s"] / r["cache_s"] for r in warm) if warm else None
    return {
        "backbone": spec,
        "images": len(files),
        "real_images": len(files) - args.synthetic,
        "synthetic_images": args.synthetic,
        "threads": torch.get_num_threads(),
        "epochs": rows,
        "encode_ms_per_image": 1000 * statistics.median(r["no_cache_s"] for r in rows) / len(files),
        "read_ms_per_image": 1000 * statistics.median(r["cache_s"] for r in warm) / len(files)
        if warm
        else None,
        "warm_epoch_speedup": speedup,
        "cache_kib_per_image": cache_bytes / 1024 / len(files),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Feature cache, {result['backbone']}, {result['images']} images "
        f"({result['real_images']} real, {result['synthetic_images']} generated 1024x768), "
        f"{result['threads']} threads",
        "",
        "| epoch | no cache s | cache s | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["epochs"]:
        lines.append(
            f"| {r['epoch']} | {r['no_cache_s']:.2f} | {r['cache_s']:.2f} | {r['no_cache_s'] / r['cache_s']:.1f}x |"
        )
    lines += [
        "",
        f"encode {result['encode_ms_per_image']:.1f} ms/image, read back {result['read_ms_per_image']:.2f} ms/image, "
        f"warm-epoch speed-up {result['warm_epoch_speedup']:.0f}x, {result['cache_kib_per_image']:.0f} KiB/image on disk",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="saver bench feature-cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="real photos (searched recursively)")
    p.add_argument("--synthetic", type=int, default=64, help="generated 1024x768 JPEGs added to them")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--artifacts", type=Path, default=REPO / "artifacts" / "mner", help="whose vision backbone"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the speed-up is measured on warm epochs")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feature_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "feature_cache.md").write_text(markdown(result))
    print(markdown(result))
