"""``saver bench feature-cache`` on two generated JPEGs: the cached arm encodes once, then reads back."""

from __future__ import annotations

import json
from pathlib import Path

from bench.feature_cache import main


def test_warm_epochs_read_back_what_the_first_encoded(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--images", str(tmp_path / "none"), "--synthetic", "2", "--epochs", "2"])
    result = json.loads((tmp_path / "feature_cache.json").read_text())
    assert result["images"] == 2 and result["real_images"] == 0
    assert [r["epoch"] for r in result["epochs"]] == [1, 2]
    cold, warm = result["epochs"]
    assert (cold["no_cache_encoded"], cold["cache_encoded"]) == (2, 2)
    assert (warm["no_cache_encoded"], warm["cache_encoded"]) == (2, 0)  # the warm epoch only reads back
    assert result["cache_kib_per_image"] > 0
    assert "warm-epoch speed-up" in (tmp_path / "feature_cache.md").read_text()
