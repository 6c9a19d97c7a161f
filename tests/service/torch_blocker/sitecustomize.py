"""Put this directory on PYTHONPATH to make torch and transformers unimportable in a process, as in the
lean runtime image: any attempt raises ImportError and is appended to ``$SAVER_BLOCKED_IMPORTS``."""

from __future__ import annotations

import os
import sys
from typing import Any

BLOCKED = {"torch", "transformers", "torchvision"}


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
