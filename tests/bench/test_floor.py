"""The floor of ``saver bench floor`` is the model's own encoder: same weights (LoRA merged), same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.floor import ensure_floor_graph, floor_feeds, markdown
from model.artifacts import load_artifacts

REPO = Path(__file__).resolve().parents[2]


def test_floor_graph_equals_the_models_encoder(tmp_path: Path) -> None:
    model, _ = load_artifacts(REPO / "artifacts" / "mner")
    path = ensure_floor_graph(model, tmp_path)
    assert ensure_floor_graph(model, tmp_path) == path  # found in the cache the second time
    posts = [
        ["Kevin", "Durant", "joins", "the", "Warriors"],
        ["RT", "@nba", ":", "what", "a", "game", "#NBAFinals", "!"],
    ]
    feeds = floor_feeds(model, posts)
    (hidden,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():  # the encoder as trained: LoRA adapters live, not merged
        want = model.encoder.bert(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
        ).last_hidden_state.numpy()
    mask = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[mask], want[mask], atol=1e-4)
    # and it is the fine-tuned encoder, not the base one: the adapters move the states
    with torch.no_grad():
        from model.lora import adapters_disabled

        with adapters_disabled(model.encoder.bert):
            base = model.encoder.bert(
                input_ids=torch.from_numpy(feeds["input_ids"])
            ).last_hidden_state.numpy()
    assert np.abs(base[mask] - want[mask]).max() > 1e-3


def test_report_states_the_ratios_to_the_floor() -> None:
    arm = {"n": 3, "p50_ms": 4.0, "p90_ms": 5.0}
    report = {
        "arms": {"floor": arm, "text_graph": {**arm, "p50_ms": 5.0}, "text_stage": {**arm, "p50_ms": 7.0},
                 "service_c1": {**arm, "p50_ms": 10.0}},
        "ratios": {"span_part_of_graph": 0.25, "service_c1_p90": 2.0, "service_c8_vs_floor_best_batched": 0.4},
        "server_side_total_p50_ms": 8.0, "floor_batched_posts_per_s": {"1": 200.0, "8": 250.0},
        "floor_best_batch_size": 8, "service_c8": {"posts_per_s": 100.0}, "service_peak_rss_mb": 900.0,
        "config": {"n_posts": 3, "mean_subwords": 20.0, "intra_op_threads": 2, "rounds": 1, "concurrency": 8,
                   "loadavg": [0.1], "command": "saver bench floor --out x"},
    }  # fmt: skip
    text = markdown(report)
    assert "| service_c1 | 10.00 | 5.00 | 2.50x |" in text
    assert "25.0% of the encoder" in text and "0.40x the floor's best batched" in text
