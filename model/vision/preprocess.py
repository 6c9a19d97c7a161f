"""Image preprocessing for the vision backbones as torch tensors: ``model/pixels.py``'s numpy arrays
(torchvision is not a dependency, and the torch-free ONNX worker runs the same code)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from model.pixels import ImageTransform, image_to_array, images_to_array, to_rgb

__all__ = ["ImageTransform", "image_to_tensor", "images_to_batch", "to_rgb"]


def image_to_tensor(image: Image.Image, size: int, transform: ImageTransform) -> torch.Tensor:
    """One image as a normalised (3, size, size) float tensor."""
    return torch.from_numpy(image_to_array(image, size, transform))


def images_to_batch(images: Sequence[Image.Image], size: int, transform: ImageTransform) -> torch.Tensor:
    """A (N, 3, size, size) batch; N = 0 gives an empty batch of the right shape."""
    return torch.from_numpy(images_to_array(images, size, transform))
