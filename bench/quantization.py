"""Does int8 quantisation of the encoder keep dev F1? torch vs ONNX fp32 vs ONNX int8 on one dev file.

    python -m bench.quantization --artifacts artifacts/mner \
        --data ../shared/data/mner/twitter2017/valid.txt --out DIR [--limit N] [--batch 32]

All three decode the text-only answer (vision ``never``) through the staged pipeline the service runs,
so the figure isolates what the text graph's numerics do; it also counts how many units' gate decisions
at the calibrated τ flip between fp32 and int8 (what would change which posts fetch images). The switch
``SAVER_ONNX_QUANTIZE`` should only be turned on when |F1(int8) - F1(fp32)| <= 0.3 points.
Writes ``quantization.json`` to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.loading import Backend, OnnxOptions, load_pipeline
from model.pipeline import MnerResult, TextRequest
from training.data.readers import read_umt
from training.datasets import UNIFIED_TYPES
from training.metrics import entity_prf

log = logging.getLogger(__name__)
MAX_F1_DROP = 0.3  # points


def decode(
    pipe: Any, requests: list[TextRequest], batch: int
) -> tuple[list[list[tuple[int, int, str]]], list[Any]]:
    entities: list[list[tuple[int, int, str]]] = []
    decisions: list[Any] = []
    for start in range(0, len(requests), batch):
        for result in pipe.encode_text_batch(requests[start : start + batch]):
            nothing = np.zeros(len(result.gate), dtype=bool)
            answer = pipe.fuse(result, nothing, [[] for _ in result.gate], {}, {})
            assert isinstance(answer, MnerResult)
            entities.append([(e.token_start, e.token_end, e.type) for e in answer.entities])
            decisions.append(pipe.activation(result, "auto"))
    return entities, decisions


def run(args: argparse.Namespace) -> dict[str, Any]:
    examples = read_umt(args.data, UNIFIED_TYPES)[: args.limit or None]
    requests = [TextRequest(tokens=list(ex.tokens)) for ex in examples]
    gold = [list(ex.spans) for ex in examples]
    cache = args.cache or Path(tempfile.mkdtemp(prefix="onnx-cache-"))
    variants: dict[str, OnnxOptions | None] = {
        "torch": None,
        "onnx_fp32": OnnxOptions(cache_dir=cache),
        "onnx_int8": OnnxOptions(cache_dir=cache, quantize=True),
    }
    report: dict[str, Any] = {"data": str(args.data), "n_examples": len(examples), "vision": "never"}
    decisions: dict[str, list[Any]] = {}
    for name, onnx in variants.items():
        backend: Backend = "torch" if onnx is None else "onnx"
        pipe = load_pipeline(args.artifacts, "mner", backend=backend, onnx=onnx)
        started = time.perf_counter()
        pred, decisions[name] = decode(pipe, requests, args.batch)
        scores = entity_prf(gold, pred)
        report[name] = {k: scores[k] for k in ("precision", "recall", "f1")}
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
        log.info("%s: F1 %.2f", name, scores["f1"])
    flips = sum(
        int((a != b).sum()) for a, b in zip(decisions["onnx_fp32"], decisions["onnx_int8"], strict=True)
    )
    units = sum(len(d) for d in decisions["onnx_fp32"])
    drop = report["onnx_fp32"]["f1"] - report["onnx_int8"]["f1"]
    report["int8_f1_drop_points"] = drop
    report["int8_gate_decision_flips"] = {"units": flips, "of": units}
    report["int8_allowed"] = abs(drop) <= MAX_F1_DROP
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quantization", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/mner"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/mner/twitter2017/valid.txt"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, help="ONNX graph cache (default: a fresh temporary directory)")
    p.add_argument("--limit", type=int, default=0, help="first N posts only (0: all)")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
